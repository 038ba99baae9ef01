"""The approvals inbox: pending gates as cards (policy, quorum, SLA, whether the signed-in user
may decide) and the latest decisions.

A card is read in a fixed number of queries whatever the number of gates: the gates with their
run and policy in one, their votes in one (prefetched), and the signed-in user's groups once
(``voter_for_user``). Whether the user may decide is asked of ``services.policies.refusal``, the
rules ``gate_decide`` applies, so the inbox never offers a button the server would refuse.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import F, Prefetch, Q, QuerySet
from django.db.models.functions import Now

from tidebase_core.models import ApprovalPolicy, Gate, GateStatus, GateVote
from tidebase_core.services import policies
from tidebase_core.services.policies import Voter

INBOX_LIMIT = 200
HISTORY_LIMIT = 50

REASON_CHECK_COMMENT = "x"
"""The comment a card's check is asked with: a policy that requires a comment still lets the user
decide (the card asks for one), so it must not hide the buttons."""


@dataclass(frozen=True)
class Milestone:
    """One of a gate's SLA times: the reminder, the escalation or the expiry."""

    label: str
    at: dt.datetime
    remaining: dt.timedelta
    """``at`` minus the database clock when the card was read: ≤ 0 once it is due."""
    done: bool
    """Whether the SLA tick has applied it (``reminded_at``, ``escalated_at``, ``expired_at``)."""

    @property
    def due(self) -> bool:
        return not self.done and self.remaining <= dt.timedelta(0)


@dataclass(frozen=True)
class Viewer:
    """Who reads the inbox: their voter (None without the ``resolve_gate`` permission, since
    they may decide nothing)."""

    voter: Voter | None

    @property
    def can_resolve(self) -> bool:
        return self.voter is not None


@dataclass(frozen=True)
class GateCard:
    """A pending (or just decided) gate as the inbox shows it to one user."""

    gate: Gate
    policy: ApprovalPolicy | None
    votes: tuple[GateVote, ...]
    my_vote: GateVote | None
    may_approve: bool
    may_reject: bool
    reason: str
    """Why the user may not approve (or decide at all), or ""."""
    milestones: tuple[Milestone, ...]

    @property
    def may_decide(self) -> bool:
        """What the "May decide" filter keeps: gates whose approval the user may add."""
        return self.may_approve

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.votes if v.decision == GateStatus.APPROVED)

    @property
    def needed(self) -> int:
        return self.policy.quorum if self.policy else 1

    @property
    def escalated(self) -> bool:
        return self.gate.escalated_at is not None

    @property
    def reminded(self) -> bool:
        return self.gate.reminded_at is not None

    @property
    def overdue(self) -> bool:
        """Expired with the policy's "leave pending" action: still waiting, past its SLA."""
        return self.gate.expired_at is not None and self.gate.status == GateStatus.PENDING

    @property
    def next_milestone(self) -> Milestone | None:
        return next((m for m in self.milestones if not m.done), None)


def viewer_for(user: object, *, can_resolve: bool, channel: str) -> Viewer:
    """The inbox's viewer: one query for the user's groups, none without ``resolve_gate``."""
    return Viewer(voter=policies.voter_for_user(user, channel=channel) if can_resolve else None)


def _cards_queryset() -> QuerySet[Gate]:
    votes = GateVote.objects.order_by("id")
    return (
        Gate.objects.select_related("run", "policy")
        .prefetch_related(Prefetch("votes", queryset=votes, to_attr="vote_list"))
        .annotate(db_now=Now())
    )


def _decidable_by(voter: Voter) -> Q:
    """A SQL superset of the gates ``voter`` may approve: not voted on yet, and with no policy,
    a policy open to anyone, or one that lists one of the voter's groups. ``refusal`` then
    decides (self-approval), so this only keeps the filter from missing gates past the limit."""
    groups = sorted(voter.groups)
    open_policy = Q(policy__approver_groups=[], policy__approver_keys=[])
    in_group = Q(policy__approver_groups__has_any_keys=groups) if groups else Q(pk__in=[])
    listed = Q(policy__isnull=True) | open_policy | in_group
    return listed & ~Q(votes__voter=voter.identity)


def pending_cards(*, viewer: Viewer, mine: bool = False, limit: int = INBOX_LIMIT) -> list[GateCard]:
    """Pending gates, oldest first (tb_gate_pending_idx), as cards for ``viewer``; with ``mine``
    only those ``viewer`` may approve. Three queries: gates (with run, policy and the database
    clock), votes, and none per card."""
    if mine and viewer.voter is None:
        return []
    gates = _cards_queryset().filter(status=GateStatus.PENDING)
    if mine and viewer.voter is not None:
        gates = gates.filter(_decidable_by(viewer.voter))
    cards = [card_for(gate, viewer=viewer) for gate in gates.order_by("created_at", "id")[:limit]]
    return [c for c in cards if c.may_decide] if mine else cards


def gate_card(*, gate_id: str, viewer: Viewer) -> GateCard | None:
    gate = _cards_queryset().filter(id=gate_id).first()
    return None if gate is None else card_for(gate, viewer=viewer)


def card_for(gate: Gate, *, viewer: Viewer) -> GateCard:
    """The card of a gate read by ``_cards_queryset`` (its votes and ``db_now`` loaded)."""
    policy = gate.policy
    votes: tuple[GateVote, ...] = tuple(getattr(gate, "vote_list", ()))
    voter = viewer.voter
    mine = next((v for v in votes if voter is not None and v.voter == voter.identity), None)
    may_approve = may_reject = voter is not None and mine is None and gate.status == GateStatus.PENDING
    reason = ""
    if voter is not None and mine is None and policy is not None:
        # Ask as gate_decide will: the policy's current rules, this run's starter.
        refused = {
            decision: policies.refusal(
                voter=voter,
                policy=policy,
                started_by=gate.run.started_by,
                decision=decision,
                comment=REASON_CHECK_COMMENT,
            )
            for decision in (GateStatus.APPROVED, GateStatus.REJECTED)
        }
        may_approve = may_approve and refused[GateStatus.APPROVED] is None
        may_reject = may_reject and refused[GateStatus.REJECTED] is None
        first = refused[GateStatus.APPROVED] or refused[GateStatus.REJECTED]
        if first is not None:
            reason = first.message[:1].upper() + first.message[1:] + "."
    return GateCard(
        gate=gate,
        policy=policy,
        votes=votes,
        my_vote=mine,
        may_approve=may_approve,
        may_reject=may_reject,
        reason=reason,
        milestones=_milestones(gate),
    )


def _milestones(gate: Gate) -> tuple[Milestone, ...]:
    now: dt.datetime | None = getattr(gate, "db_now", None)
    if now is None:
        return ()
    times = [
        ("Reminder", gate.remind_at, gate.reminded_at),
        ("Escalation", gate.escalate_at, gate.escalated_at),
        ("Expiry", gate.expire_at, gate.expired_at),
    ]
    return tuple(
        Milestone(label=label, at=at, remaining=at - now, done=done is not None)
        for label, at, done in times
        if at is not None
    )


def pending_gate_count() -> int:
    return Gate.objects.filter(status=GateStatus.PENDING).count()


def decided_gates(*, limit: int = HISTORY_LIMIT) -> list[Gate]:
    """The latest decisions, newest first, with their run, in one query."""
    return list(
        Gate.objects.exclude(status=GateStatus.PENDING)
        .select_related("run")
        .order_by(F("resolved_at").desc(nulls_last=True), "-id")[:limit]
    )
