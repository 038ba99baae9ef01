"""A policy's SLA, run by the server: remind the approvers, escalate, then expire (docs/approvals.md).

A gate that opens under a policy gets its ``remind_at``, ``escalate_at`` and ``expire_at`` then
(``policies.policy_fields``); the reconciler calls ``sla_tick`` on every beat and each step that
has come due happens once. A step is a compare-and-set on its ``*_at`` column (``reminded_at IS
NULL AND status = 'pending'``), in a short transaction with its event, channel deliveries,
emails/Slack messages and audit entry, so two beats, or two reconcilers in different processes,
never remind, escalate or expire a gate twice: the second UPDATE waits for the first one's row
lock and then matches nothing. The same row lock orders an expiry against a human decision
(``approvals.gate_decide`` locks the gate first too): whichever comes second finds the gate
decided, and ``gate.resolved`` is emitted once.

Due steps of one gate run in order (remind, escalate, expire), each once, even when a reconciler
that was down finds them all due at once. The policy as it is now says who is told and what the
expiry does (as it says who may decide); the times are the ones the gate opened with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from tidebase_core import wire
from tidebase_core.db import fetch_rows
from tidebase_core.models import ExpiryAction, Gate, GateStatus
from tidebase_core.services import approvals, audit, gates, notifications
from tidebase_core.services.events import event_append, notify_channels

logger = logging.getLogger(__name__)

ACTOR = "sla"
"""The actor of SLA entries on the audit trail and of gates an expiry decides."""
DECIDED_BY = "reconciler"
REASON = "sla_expired"


@dataclass(frozen=True)
class SlaStep:
    name: str
    due: str
    """The gate column holding when the step is due (set when the gate opened)."""
    done: str
    """The gate column the step sets, NULL until it has happened."""
    event: str
    audit_kind: str


REMIND = SlaStep("reminded", "remind_at", "reminded_at", "gate.reminded", audit.REMINDER)
ESCALATE = SlaStep("escalated", "escalate_at", "escalated_at", "gate.escalated", audit.ESCALATION)
EXPIRE = SlaStep("expired", "expire_at", "expired_at", "gate.expired", audit.EXPIRY)
STEPS = (REMIND, ESCALATE, EXPIRE)

# Pending policy gates with a step due, oldest first (tb_gate_sla_idx), with which steps are due.
_DUE_SQL = """
SELECT id,
       (remind_at <= now() AND reminded_at IS NULL) AS reminded,
       (escalate_at <= now() AND escalated_at IS NULL) AS escalated,
       (expire_at <= now() AND expired_at IS NULL) AS expired
FROM tb_gate
WHERE status = 'pending' AND policy_id IS NOT NULL
  AND ((remind_at <= now() AND reminded_at IS NULL)
       OR (escalate_at <= now() AND escalated_at IS NULL)
       OR (expire_at <= now() AND expired_at IS NULL))
ORDER BY created_at
LIMIT %s
"""


def sla_tick(*, limit: int = 100) -> dict[str, int]:
    """Take every due SLA step of up to ``limit`` gates (the reconciler's ``gate_sla`` duty).
    Returns how many gates were reminded, escalated and expired by this call; a step another
    reconciler or a decision got to first is not counted. A gate whose step fails is logged and
    left for the next tick; the other gates go on."""
    counts = {step.name: 0 for step in STEPS}
    for row in fetch_rows(_DUE_SQL, [limit]):
        for step in STEPS:
            if not getattr(row, step.name):
                continue
            try:
                if sla_step(gate_id=row.id, step=step) is not None:
                    counts[step.name] += 1
            except Exception:
                logger.exception("gate.sla.failed", extra={"gate_id": row.id, "step": step.name})
                break  # its later steps wait for this one
    return counts


@transaction.atomic(durable=True)
def sla_step(*, gate_id: str, step: SlaStep) -> Gate | None:
    """Take ``step`` on the gate if it is still pending under a policy, due, and not yet taken;
    returns the gate, or None when there was nothing to do (not due, taken already, decided).
    Everything the step says (event, channel deliveries, notifications, audit entry and, for an
    expiry that decides, the resolution) commits with the compare-and-set or not at all."""
    taken = Gate.objects.filter(
        id=gate_id,
        status=GateStatus.PENDING,
        policy__isnull=False,
        **{f"{step.done}__isnull": True, f"{step.due}__lte": Now()},
    ).update(**{step.done: Now(), "updated_at": Now()})
    if taken != 1:
        return None
    gate = Gate.objects.get(id=gate_id)  # its row is locked by the UPDATE
    assert gate.policy_id is not None  # matched by the UPDATE; unsetting it would wait for our lock
    # Share-locked like a decision's: a policy save waits for this step, or this step for the save.
    policy = approvals.policy_shared(gate.policy_id)
    if policy is None:  # deleted by a concurrent transaction; the gate has no policy to follow
        transaction.set_rollback(True)
        return None
    quorum = approvals.tally(gate.id, policy.quorum)
    body: dict[str, Any] = {
        "gate": wire.public_gate(gate, show_token=False),
        "quorum": quorum.as_json(),
        "sla": sla_json(gate),
    }
    if step is EXPIRE:
        body["expiryAction"] = policy.expiry_action
    event_append(run_id=gate.run_id, type=step.event, payload=body)
    notify_channels(
        run_id=gate.run_id, event_type=step.event, payload=body, gate_id=gate.id, inline_channels=gate.channels
    )
    entry: dict[str, Any] = {
        "gate": gate.name,
        "event": step.event,
        "quorum": quorum.as_json(),
        "due": wire.ts(getattr(gate, step.due)),
    }
    if step is EXPIRE and policy.expiry_action != ExpiryAction.NONE:
        # The expiry decides: gate.resolved (and its Slack message, which tells the outcome) and
        # one audit entry of kind ``expiry`` for the decision, as for an agent's timeout.
        decision = GateStatus.APPROVED if policy.expiry_action == ExpiryAction.APPROVE else GateStatus.REJECTED
        return gates.resolve_pending(
            run_id=gate.run_id,
            gate_id=gate.id,
            decision=decision,
            token=None,
            actor=ACTOR,
            payload={"reason": REASON},
            decided_by=DECIDED_BY,
            require_token=False,
            channel=audit.SYSTEM,
            policy_version=policy.version,
            audit_kind=audit.EXPIRY,
            audit_data={**entry, "expiryAction": policy.expiry_action},
        )
    notifications.notify_gate(gate, step.event, policy=policy)
    if step is EXPIRE:
        entry["expiryAction"] = policy.expiry_action
    audit.audit_append(
        kind=step.audit_kind,
        actor=ACTOR,
        channel=audit.SYSTEM,
        run_id=gate.run_id,
        gate_id=gate.id,
        policy_version=policy.version,
        data=entry,
    )
    return gate


def sla_json(gate: Gate) -> dict[str, str | None]:
    """A gate's SLA times, as events and the API show them."""
    return {
        "remindAt": wire.ts(gate.remind_at),
        "escalateAt": wire.ts(gate.escalate_at),
        "expireAt": wire.ts(gate.expire_at),
        "remindedAt": wire.ts(gate.reminded_at),
        "escalatedAt": wire.ts(gate.escalated_at),
        "expiredAt": wire.ts(gate.expired_at),
    }
