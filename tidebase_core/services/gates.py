"""Durable approval gates: begin (idempotent by name), resolve (exactly once), timeouts."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from tidebase_core import metrics, wire
from tidebase_core.exceptions import GateAlreadyResolved, InvalidToken, NotFound, RunCancelled, RunNotFound
from tidebase_core.models import Gate, GateStatus, Run, RunStatus
from tidebase_core.services import audit, notifications, policies
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.time import db_now


def gate_begin(
    *,
    run_id: str,
    name: str,
    prompt: str,
    data: Any = None,
    channels: list[dict[str, Any]] | None = None,
    capability: Any = None,
    timeout_ms: int | None = None,
) -> tuple[Gate, bool]:
    """Open gate ``name`` on a run, or return the existing one unchanged (§7.4). Returns
    ``(gate, created)``. Raises RunNotFound or RunCancelled. ``timeoutMs`` is stored and
    enforced: the reconciler cancels the gate at ``timeout_at`` (our fix of §18.7)."""
    run = Run.objects.filter(id=run_id).values_list("status", flat=True).first()
    if run is None:
        raise RunNotFound()
    if run == RunStatus.CANCELLED:
        raise RunCancelled("run is cancelled")
    existing = Gate.objects.filter(run_id=run_id, name=name).first()
    if existing is not None:
        return existing, False
    try:
        return _gate_create(
            run_id=run_id,
            name=name,
            prompt=prompt,
            data=data,
            channels=channels,
            capability=capability,
            timeout_ms=timeout_ms,
        ), True
    except IntegrityError:  # a concurrent begin of the same name won; return its gate
        return Gate.objects.get(run_id=run_id, name=name), False


@transaction.atomic(durable=True)
def _gate_create(**fields: Any) -> Gate:
    return gate_insert(**fields)


def gate_insert(
    *,
    run_id: str,
    name: str,
    prompt: str,
    data: Any,
    channels: list[dict[str, Any]] | None,
    capability: Any,
    timeout_ms: int | None,
) -> Gate:
    """Insert the gate with its ``gate.created`` event and channel deliveries, inside the
    caller's transaction (``gate_begin`` opens its own; a budget park holds the run's lock)."""
    now = db_now()
    policy = policies.policy_for(run_id=run_id, gate_name=name)
    gate = Gate.objects.create(
        run_id=run_id,
        name=name,
        prompt=prompt,
        data={} if data is None else data,
        channels=channels or [],
        capability=capability,
        timeout_ms=timeout_ms,
        timeout_at=now + dt.timedelta(milliseconds=timeout_ms) if timeout_ms else None,
        **policies.policy_fields(policy, now),
    )
    public = {"gate": wire.public_gate(gate, show_token=False)}
    event_append(run_id=run_id, type="gate.created", payload=public)
    notify_channels(
        run_id=run_id,
        event_type="gate.created",
        payload=public,  # resolveToken null, decideUrl: where a human decides
        resolver_payload={"gate": wire.public_gate(gate, show_token=True)},
        gate_id=gate.id,
        inline_channels=channels,
    )
    if policy is not None:
        notifications.notify_gate(gate, "gate.created", policy=policy)
    return gate


def gate_expire_if_due(*, gate: Gate, now: dt.datetime) -> bool:
    """Cancel ``gate`` (decision ``canceled``, actor ``timeout``) if it is pending and its
    ``timeout_at`` is at or before ``now``, so a waiting client sees the timeout even between
    reconciler ticks. Returns whether it was due: the stored gate has changed (by this call or a
    concurrent decision) and should be read again. Raises NotFound if the gate is gone."""
    if gate.status != GateStatus.PENDING or gate.timeout_at is None or gate.timeout_at > now:
        return False
    with contextlib.suppress(GateAlreadyResolved, InvalidToken):
        gate_resolve(**_timeout_resolution(gate.run_id, gate.id))
    return True


def _timeout_resolution(run_id: str, gate_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "gate_id": gate_id,
        "decision": GateStatus.CANCELED,
        "token": None,
        "actor": "timeout",
        "payload": {"reason": "timeout"},
        "decided_by": "reconciler",
        "require_token": False,
    }


@transaction.atomic(durable=True)
def gate_resolve(**fields: Any) -> Gate:
    """``resolve_pending`` in its own transaction, without consulting an approval policy: for the
    server's own decisions (timeouts, budget limits raised). People and keys decide through
    ``services.approvals.gate_decide``, which applies the gate's policy."""
    return resolve_pending(**fields)


def resolve_pending(
    *,
    run_id: str,
    gate_id: str,
    decision: str,
    token: str | None,
    actor: str | None,
    payload: Any,
    decided_by: str,
    require_token: bool,
    channel: str | None = None,
    policy_version: int | None = None,
    audit_data: dict[str, Any] | None = None,
    audit_kind: str | None = None,
) -> Gate:
    """Resolve a pending gate exactly once, inside the caller's transaction: a conditional UPDATE
    on ``status='pending'`` (and the token, when the caller is authorized by the token alone).
    Whatever mix of dashboard clicks, API calls and token links races, one wins; the others get
    GateAlreadyResolved or InvalidToken (409) and change nothing. Emits ``gate.resolved`` and its
    channel event, and appends the decision to the audit trail (``channel``: how it arrived; by
    default read from ``decided_by``; ``audit_kind``: by default ``expiry`` for a timeout, else
    ``decision``), last, in the same transaction."""
    match = Q(id=gate_id, run_id=run_id, status=GateStatus.PENDING)
    if require_token or token:
        match &= Q(resolve_token=token or "")
    changes: dict[str, Any] = {}
    if policy_version is not None:
        changes["policy_version"] = policy_version
    updated = Gate.objects.filter(match).update(
        status=decision,
        decision=decision,
        actor=actor or decided_by,
        decided_by=decided_by,
        decision_payload={} if payload is None else payload,
        resolved_at=Now(),
        updated_at=Now(),
        **changes,
    )
    gate = Gate.objects.filter(id=gate_id, run_id=run_id).first()
    if gate is None:
        raise NotFound("gate not found")
    if updated != 1:
        if gate.status != GateStatus.PENDING:
            raise GateAlreadyResolved(
                f"gate already {gate.status} by {gate.actor or gate.decided_by or 'someone'}",
                gate={"id": gate.id, "status": gate.status, "decision": gate.decision, "actor": gate.actor},
            )
        raise InvalidToken("invalid resolve token")
    public = wire.public_gate(gate, show_token=False)
    event_append(run_id=run_id, type="gate.resolved", payload={"gate": public})
    notify_channels(
        run_id=run_id,
        event_type="gate.resolved",
        payload={"gate": public},
        gate_id=gate.id,
        inline_channels=gate.channels,
    )
    transaction.on_commit(lambda: metrics.gate_resolved(gate))  # its wait, once the decision holds
    if gate.name.startswith("budget:"):
        from tidebase_core.services.budgets import on_gate_resolved  # budgets opens gates: imported late

        on_gate_resolved(gate)  # approve: raise the run's budget or allow it more; reject: fail the run
    if gate.policy_id is not None:
        notifications.notify_gate(gate, "gate.resolved")
    audit.audit_append(
        kind=audit_kind or (audit.EXPIRY if actor == "timeout" and decided_by == "reconciler" else audit.DECISION),
        actor=gate.actor or decided_by,
        channel=channel or audit.channel_of(decided_by),
        run_id=run_id,
        gate_id=gate.id,
        policy_version=gate.policy_version if gate.policy_id is not None else None,
        data={
            "gate": gate.name,
            "decision": decision,
            "decidedBy": decided_by,
            "payload": gate.decision_payload,
            **(audit_data or {}),
        },
    )
    return gate


def gate_expire_due(*, limit: int = 100) -> int:
    """Cancel pending gates whose timeout has passed (the reconciler calls this). Each gate
    resolves through the same exactly-once update as a human decision."""
    due = list(
        Gate.objects.filter(status=GateStatus.PENDING, timeout_at__lte=Now())
        .order_by("timeout_at")
        .values_list("id", "run_id")[:limit]
    )
    count = 0
    for gid, rid in due:
        try:
            gate_resolve(**_timeout_resolution(rid, gid))
            count += 1
        except (GateAlreadyResolved, InvalidToken, NotFound):
            continue
    return count
