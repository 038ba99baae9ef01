"""Deciding a gate as a person or a key: every path (dashboard, API keys, resolve tokens, email
links, Slack) comes through ``gate_decide``, which applies the gate's approval policy.

The gate row is locked (``FOR UPDATE``) for the whole decision, so votes on one gate serialize:
the policy checks, the vote, the tally and, when the quorum is reached (or a rejection decides),
the resolution all see the same state. Two approvers who reach a quorum at once: the first vote
is counted, the second completes the quorum, and a third finds the gate decided. Exactly one
``gate.resolved`` is emitted, and every loser gets an error that says why. The gate's policy is
share-locked too, so a policy saved meanwhile is applied either wholly before or wholly after
the decision (``policy_shared``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction

from tidebase_core import wire
from tidebase_core.exceptions import AlreadyVoted, GateAlreadyResolved, InvalidToken, LinkUsed, NotFound, Replayed
from tidebase_core.models import ApprovalPolicy, Gate, GateStatus, GateVote, RejectMode, UsedNonce
from tidebase_core.services import audit, gates, policies
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.policies import Voter

SLACK_NONCE_PREFIX = "slack:"
"""``UsedNonce`` keys of Slack callbacks (``slack:<sha256 of the signature>``); email links use
``link:<nonce>``."""


@dataclass(frozen=True)
class Tally:
    needed: int
    approvals: int
    rejections: int
    voters: tuple[str, ...]

    def text(self) -> str:
        return f"{self.approvals} of {self.needed}"

    def as_json(self) -> dict[str, Any]:
        return {"needed": self.needed, "approvals": self.approvals, "rejections": self.rejections}


@dataclass(frozen=True)
class Decision:
    gate: Gate
    final: bool
    """Whether this vote decided the gate (else it was counted towards the quorum)."""
    tally: Tally | None
    """The votes so far under the gate's policy (None for a gate without a policy)."""


def already_decided(gate: Gate) -> GateAlreadyResolved:
    who = gate.actor or gate.decided_by or "someone"
    return GateAlreadyResolved(
        f"gate already {gate.status} by {who}",
        gate={"id": gate.id, "status": gate.status, "decision": gate.decision, "actor": gate.actor},
    )


def tally(gate_id: str, needed: int) -> Tally:
    votes = list(GateVote.objects.filter(gate_id=gate_id).order_by("id").values_list("voter", "decision"))
    approvals = sum(1 for _, d in votes if d == GateStatus.APPROVED)
    return Tally(needed, approvals, len(votes) - approvals, tuple(v for v, _ in votes))


@transaction.atomic(durable=True)
def gate_decide(
    *,
    run_id: str,
    gate_id: str,
    decision: str,
    voter: Voter,
    payload: Any = None,
    token: str | None = None,
    nonce: tuple[str, dt.datetime] | None = None,
    comment: str | None = None,
) -> Decision:
    """Record ``voter``'s ``decision`` on a pending gate under its policy, resolving the gate when
    it decides it. A gate without a policy is decided by the first voter (the open rules).
    ``comment``: the decider's comment (the API's top-level ``comment``, the dashboard's comment
    box); without one, ``payload["comment"]``. It is kept on the vote and in the audit entry; a
    policy may require one.

    Raises NotFound; GateAlreadyResolved (409) when the gate is no longer pending; InvalidToken
    (409) for a wrong resolve token; TokenNotAllowed, NotAnApprover, SelfApproval (403),
    CommentRequired (422) and AlreadyVoted (409) from the policy. A refusal changes nothing.

    ``nonce`` (key, expires_at): a single-use credential (an email link, a Slack callback) spent
    in this transaction, so it is spent exactly when the decision commits: a refused decision
    leaves it usable, and a second use finds it (LinkUsed, or Replayed for ``slack:`` keys, 409),
    even when both arrive at once."""
    gate = Gate.objects.select_for_update(of=("self",)).select_related("run").filter(id=gate_id, run_id=run_id).first()
    if gate is None:
        raise NotFound("gate not found")
    if nonce is not None:
        _spend(*nonce)
    if gate.status != GateStatus.PENDING:
        raise already_decided(gate)
    if (voter.via_token or token) and token != gate.resolve_token:
        raise InvalidToken("invalid resolve token")
    policy = policy_shared(gate.policy_id) if gate.policy_id else None
    if not comment and isinstance(payload, dict):
        comment = str(payload.get("comment") or "")
    comment = comment or ""
    resolve = {
        "run_id": run_id,
        "gate_id": gate_id,
        "token": None,
        "payload": payload,
        "decided_by": voter.identity,
        "require_token": False,
        "channel": voter.channel,
    }
    if policy is None:
        resolved = gates.resolve_pending(decision=decision, actor=voter.actor, **resolve)
        return Decision(gate=resolved, final=True, tally=None)
    refused = policies.refusal(
        voter=voter, policy=policy, started_by=gate.run.started_by, decision=decision, comment=comment
    )
    if refused is not None:
        raise refused
    if GateVote.objects.filter(gate_id=gate_id, voter=voter.identity).exists():
        raise AlreadyVoted(f"{voter.who} has already voted on this gate; the policy needs distinct approvers")
    GateVote.objects.create(
        gate_id=gate_id,
        voter=voter.identity,
        decision=decision,
        comment=comment[:2000],
        channel=voter.channel,
        policy_version=policy.version,
    )
    now = tally(gate_id, policy.quorum)
    final = (decision == GateStatus.APPROVED and now.approvals >= policy.quorum) or (
        decision != GateStatus.APPROVED and (policy.reject_mode == RejectMode.ANY or now.rejections >= policy.quorum)
    )
    vote: dict[str, Any] = {"vote": decision, "voter": voter.identity, "quorum": now.as_json(), "final": final}
    if comment:
        vote["comment"] = comment[:2000]
    if final:
        names = _actors(gate_id, decision, voter) if decision == GateStatus.APPROVED else voter.actor
        resolved = gates.resolve_pending(
            decision=decision, actor=names, policy_version=policy.version, audit_data=vote, **resolve
        )
        return Decision(gate=resolved, final=True, tally=now)
    # Counted towards the quorum: the gate stays pending; watchers learn of the vote.
    public = wire.public_gate(gate, show_token=False)
    body = {"gate": public, "vote": {"voter": voter.identity, "decision": decision}, "quorum": now.as_json()}
    event_append(run_id=run_id, type="gate.voted", payload=body)
    notify_channels(
        run_id=run_id, event_type="gate.voted", payload=body, gate_id=gate_id, inline_channels=gate.channels
    )
    audit.audit_append(
        kind=audit.DECISION,
        actor=voter.actor,
        channel=voter.channel,
        run_id=run_id,
        gate_id=gate_id,
        policy_version=policy.version,
        data={"gate": gate.name, "decision": decision, "decidedBy": voter.identity, **vote},
    )
    return Decision(gate=gate, final=False, tally=now)


def _spend(key: str, expires_at: dt.datetime) -> None:
    """Insert the nonce (inside ``gate_decide``'s transaction, after the gate lock). Checked before
    the gate's status, so a used link says "used" rather than "the gate is decided"."""
    try:
        with transaction.atomic():
            UsedNonce.objects.create(key=key, expires_at=expires_at)
    except IntegrityError as exc:
        if key.startswith(SLACK_NONCE_PREFIX):
            raise Replayed("this Slack request was already accepted") from exc
        raise LinkUsed("this link has already been used; links decide once") from exc


def nonces_prune(*, limit: int = 1000) -> int:
    """Forget spent links and Slack requests past their expiry (the reconciler calls this): by
    then the signature itself refuses them, so the row proves nothing more."""
    with connection.cursor() as cur:
        cur.execute(
            """DELETE FROM tb_used_nonce WHERE key IN (
                 SELECT key FROM tb_used_nonce WHERE expires_at < now() LIMIT %s FOR UPDATE SKIP LOCKED)""",
            [limit],
        )
        return int(cur.rowcount)


def policy_shared(policy_id: int) -> ApprovalPolicy | None:
    """The gate's policy as it is now, share-locked until the decision commits. ``policy_save``
    locks the policy ``FOR UPDATE``, so a save and a decision serialize: the decision either
    commits before the new version does, or waits for it and applies it. Once a save has
    returned, no decision under an older version can still commit, and the audit trail lists
    decisions and policy changes in an order their versions agree with. (Shares do not conflict:
    decisions on different gates of one policy do not wait for each other here.)"""
    found = ApprovalPolicy.objects.raw("SELECT * FROM tb_approval_policy WHERE id = %s FOR SHARE", [policy_id])
    return next(iter(found), None)


def _actors(gate_id: str, decision: str, voter: Voter) -> str:
    """Who made the decision, as the gate's ``actor``: the approvers, in the order they voted
    (users by name, keys by label; the deciding voter by the name they gave, as without a policy)."""
    names = GateVote.objects.filter(gate_id=gate_id, decision=decision).order_by("id").values_list("voter", flat=True)
    return ", ".join(voter.actor if n == voter.identity else n.removeprefix("user:") for n in names)
