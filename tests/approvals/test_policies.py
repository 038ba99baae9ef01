"""Approval policies enforced by ``services.approvals.gate_decide``, against real Postgres: each
rule (approver groups and keys, the env key, self-approval, comments, resolve tokens, quorum N of
M, the two rejection modes), the open rules of a gate no policy matches, refusals that change
nothing, and the races between approvers (threads with their own connections): a quorum reached
by several at once, a double click, an approval and a rejection at once, a policy saved while a
gate is being decided. Every vote is one audit entry, and the chain verifies after the races.

The races are made deterministic where it matters: a separate connection holds the audit chain
head (the last lock a decision takes before it commits) or a conflicting row, so every racer has
done all it does before the lock it waits for; the test waits for the racers to be waiting
(``pg_stat_activity``), never for a fixed time, then lets them go."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import Group, User
from django.db import connection

from dashboard.roles import ensure_roles
from tests.core.test_probes import in_threads
from tidebase_core.auth import ENV, Principal
from tidebase_core.exceptions import (
    AlreadyVoted,
    CommentRequired,
    DomainError,
    GateAlreadyResolved,
    InvalidToken,
    NotAnApprover,
    SelfApproval,
    TokenNotAllowed,
)
from tidebase_core.models import ApprovalPolicy, AuditEntry, Event, Gate, GateVote
from tidebase_core.services import approvals, audit, gates, policies, runs
from tidebase_core.services.policies import Voter

pytestmark = pytest.mark.django_db(transaction=True)

APPROVED, REJECTED = "approved", "rejected"


# ---- helpers ------------------------------------------------------------------------------------


def policy(name: str = "payments", **body: Any) -> ApprovalPolicy:
    return policies.policy_save(policy_id=None, body={"name": name, **body}, actor="user:admin")


def person(name: str, *groups: str) -> Voter:
    user = User.objects.create(username=name, email=f"{name}@example.test")  # no password: no hashing
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    user.groups.add(ensure_roles()["approver"])  # a policy narrows who decides among those with the role
    return policies.voter_for_user(user, channel=audit.DASHBOARD)


def key(name: str, *, actor: str | None = None) -> Voter:
    return policies.voter_for_principal(Principal(name, "operator", "key"), actor=actor)


def token_holder(actor: str | None = None) -> Voter:
    return policies.voter_for_principal(Principal("resolve-token", "agent", "token"), actor=actor)


def open_gate(workflow: str = "payout", name: str = "send", started_by: str | None = None) -> Gate:
    run = runs.run_create(workflow_name=workflow, started_by=started_by)
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gates.gate_begin(run_id=run.id, name=name, prompt="send it?")
    return gate


def decide(gate: Gate, voter: Voter, decision: str = APPROVED, **kw: Any) -> approvals.Decision:
    return approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision=decision, voter=voter, **kw)


def state(gate: Gate) -> tuple[Any, ...]:
    """Everything a decision may change: the gate row, its votes, the run's events, the audit trail."""
    row = Gate.objects.filter(id=gate.id).values_list(
        "status", "decision", "actor", "decided_by", "decision_payload", "policy_version", "resolved_at", "updated_at"
    )
    votes = list(GateVote.objects.filter(gate_id=gate.id).values_list("voter", "decision"))
    seqs = list(Event.objects.filter(run_id=gate.run_id).values_list("seq", "type"))
    return (list(row), votes, seqs, AuditEntry.objects.count())


def refused(gate: Gate, voter: Voter, error: type[DomainError], decision: str = APPROVED, **kw: Any) -> DomainError:
    """``voter``'s decision is refused with ``error``, and nothing changes."""
    before = state(gate)
    with pytest.raises(error) as caught:
        decide(gate, voter, decision, **kw)
    assert state(gate) == before
    return caught.value


def votes(gate: Gate) -> list[tuple[str, str]]:
    return list(GateVote.objects.filter(gate_id=gate.id).order_by("id").values_list("voter", "decision"))


def resolved_events(gate: Gate) -> int:
    return Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count()


def decision_entries(gate: Gate) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(gate_id=gate.id, kind=audit.DECISION).order_by("seq"))


# ---- who may decide -----------------------------------------------------------------------------


def test_approver_groups__members_decide_and_others_are_refused() -> None:
    policy(approver_groups=["payments", "finance"])
    gate = open_gate()
    eve = person("eve", "support")
    err = refused(gate, eve, NotAnApprover)
    assert err.status_code == 403
    assert err.code == "not_an_approver"
    assert "payments, finance" in err.message
    refused(gate, key("ops"), NotAnApprover)  # a key is in no group
    alice = person("alice", "finance")
    done = decide(gate, alice)
    assert done.final
    assert done.tally is not None
    assert done.tally.text() == "1 of 1"
    gate.refresh_from_db()
    assert (gate.status, gate.actor, gate.decided_by, gate.policy_version) == (APPROVED, "alice", "user:alice", 1)


def test_approver_keys__listed_keys_decide_and_the_env_key_is_named_env() -> None:
    policy(approver_keys=["lead"])
    gate = open_gate()
    refused(gate, key("ops"), NotAnApprover)
    refused(gate, policies.voter_for_principal(ENV, actor=None), NotAnApprover)
    refused(gate, person("alice", "payments"), NotAnApprover)
    assert decide(gate, key("lead", actor="carol")).final
    gate.refresh_from_db()
    assert (gate.status, gate.actor, gate.decided_by) == (APPROVED, "carol", "key:lead")

    policy("env-only", position=1, approver_keys=["env"])
    by_env = open_gate()
    refused(by_env, key("lead"), NotAnApprover)
    assert decide(by_env, policies.voter_for_principal(ENV, actor=None)).final
    by_env.refresh_from_db()
    assert by_env.decided_by == "api-key:env"


def test_no_approver_lists__anyone_who_may_resolve_decides() -> None:
    policy()
    assert decide(open_gate(), key("ops")).final
    assert decide(open_gate(), person("zoe")).final


# ---- self-approval ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started_by", "starter"),
    [("key:ops", lambda: key("ops", actor="someone else")), ("user:bob", lambda: person("bob", "payments"))],
    ids=["key", "user"],
)
def test_self_approval__the_starter_may_not_approve_but_may_reject(
    started_by: str, starter: Callable[[], Voter]
) -> None:
    policy(approver_groups=["payments"], approver_keys=["ops"])
    voter = starter()
    gate = open_gate(started_by=started_by)
    err = refused(gate, voter, SelfApproval)
    assert (err.status_code, err.code) == (403, "self_approval")
    assert err.message.startswith(f"{started_by.removeprefix('user:')} started this run")
    assert decide(gate, voter, REJECTED).final  # stopping one's own run is always allowed
    gate.refresh_from_db()
    assert gate.status == REJECTED


def test_self_approval__allowed_by_the_policy() -> None:
    policy(approver_keys=["ops"], allow_self_approval=True)
    gate = open_gate(started_by="key:ops")
    assert decide(gate, key("ops")).final


def test_self_approval__an_unknown_starter_is_nobody() -> None:
    policy()
    for started_by in (None, "", "anonymous"):
        assert decide(open_gate(started_by=started_by), key("ops")).final


# ---- comments -----------------------------------------------------------------------------------


def test_require_comment__refused_without_one_and_kept_with_the_vote_and_in_the_audit() -> None:
    policy(require_comment=True, quorum=3)
    gate = open_gate()
    err = refused(gate, key("a"), CommentRequired)
    assert (err.status_code, err.code, err.extra) == (422, "comment_required", {"field": "comment"})
    refused(gate, key("a"), CommentRequired, comment="   ")
    refused(gate, key("a"), CommentRequired, payload={"comment": ""})
    refused(gate, key("a"), CommentRequired, REJECTED)  # every decision, not only approvals

    decide(gate, key("a"), comment="checked the invoice")
    decide(gate, key("b"), payload={"comment": "ok by me", "extra": 1})
    decide(gate, key("c"), comment="top-level wins", payload={"comment": "not this"})
    comments = list(GateVote.objects.filter(gate_id=gate.id).order_by("id").values_list("comment", flat=True))
    assert comments == ["checked the invoice", "ok by me", "top-level wins"]
    assert [e.data.get("comment") for e in decision_entries(gate)] == comments
    gate.refresh_from_db()
    assert gate.decision_payload == {"comment": "not this"}  # the payload is the agent's, as sent


# ---- resolve tokens -----------------------------------------------------------------------------


def test_allow_token_false__a_token_may_not_decide() -> None:
    policy(allow_token=False)
    gate = open_gate()
    err = refused(gate, token_holder(), TokenNotAllowed, token=gate.resolve_token)
    assert (err.status_code, err.code) == (403, "token_not_allowed")
    refused(gate, token_holder(), InvalidToken, token="wrong")  # a wrong token is wrong first


def test_allow_token_true__the_token_is_one_vote() -> None:
    policy(allow_token=True, quorum=2, approver_groups=["payments"])
    gate = open_gate()
    first = decide(gate, token_holder(actor="reviewer@example.com"), token=gate.resolve_token)
    assert not first.final
    assert first.tally is not None
    assert first.tally.text() == "1 of 2"
    refused(gate, token_holder(actor="someone else"), AlreadyVoted, token=gate.resolve_token)
    done = decide(gate, person("alice", "payments"))
    assert done.final
    assert votes(gate) == [("token:resolve-token", APPROVED), ("user:alice", APPROVED)]
    assert [(e.actor, e.channel) for e in decision_entries(gate)] == [
        ("reviewer@example.com", "token"),
        ("token:resolve-token, alice", "dashboard"),
    ]


# ---- quorum and rejections ----------------------------------------------------------------------


def test_quorum_n_of_m__distinct_approvers_in_the_order_they_voted() -> None:
    policy(approver_groups=["payments"], quorum=3)
    gate = open_gate()
    ann, ben, cat = (person(n, "payments") for n in ("ann", "ben", "cat"))
    assert decide(gate, ann).tally == approvals.Tally(3, 1, 0, ("user:ann",))
    refused(gate, ann, AlreadyVoted)
    assert not decide(gate, ben).final
    gate.refresh_from_db()
    assert gate.status == "pending"
    done = decide(gate, cat)
    assert done.final
    assert done.gate.actor == "ann, ben, cat"
    assert done.gate.decided_by == "user:cat"
    assert resolved_events(gate) == 1
    assert Event.objects.filter(run_id=gate.run_id, type="gate.voted").count() == 2
    err = refused(gate, person("dan", "payments"), GateAlreadyResolved, REJECTED)
    assert err.message == "gate already approved by ann, ben, cat"


def test_reject_mode_any__one_rejection_rejects() -> None:
    policy(quorum=2, reject_mode="any")
    gate = open_gate()
    decide(gate, key("a"))
    done = decide(gate, key("b"), REJECTED)
    assert done.final
    assert done.gate.status == REJECTED
    assert done.gate.actor == "key:b"
    assert done.tally == approvals.Tally(2, 1, 1, ("key:a", "key:b"))


def test_reject_mode_quorum__a_rejection_needs_the_quorum_too() -> None:
    policy(quorum=2, reject_mode="quorum")
    rejected = open_gate(name="a")
    first = decide(rejected, key("a"), REJECTED)
    assert not first.final
    assert first.tally == approvals.Tally(2, 0, 1, ("key:a",))
    assert decide(rejected, key("b"), REJECTED).gate.status == REJECTED

    approved = open_gate(name="b")
    decide(approved, key("a"), REJECTED)
    decide(approved, key("b"))
    done = decide(approved, key("c"))
    assert done.final
    assert done.gate.status == APPROVED
    assert done.tally == approvals.Tally(2, 2, 1, done.tally.voters)


# ---- the open rules -----------------------------------------------------------------------------


def test_a_gate_no_policy_matches__keeps_the_open_rules() -> None:
    policy(workflow_pattern="pay*", gate_pattern="send-*", approver_groups=["payments"], quorum=2)
    policy("off", enabled=False)
    other_workflow = open_gate(workflow="report", name="send-x")
    other_gate = open_gate(workflow="payout", name="publish")
    matched = open_gate(workflow="payout", name="send-x")
    assert (other_workflow.policy_id, other_gate.policy_id, other_gate.policy_version) == (None, None, None)
    assert matched.policy_id is not None
    for gate in (other_workflow, other_gate):
        done = decide(gate, token_holder(actor="reviewer"), token=gate.resolve_token)
        assert done.final
        assert done.tally is None
        assert (done.gate.actor, done.gate.decided_by, done.gate.policy_version) == (
            "reviewer",
            "token:resolve-token",
            None,
        )
        assert votes(gate) == []
        [entry] = decision_entries(gate)
        assert entry.policy_version is None
        assert "vote" not in entry.data


def test_the_first_matching_policy_by_position_wins() -> None:
    policy("broad", position=100, quorum=1)
    policy("narrow", position=10, gate_pattern="send", quorum=2)
    gate = open_gate()
    assert gate.policy is not None
    assert gate.policy.name == "narrow"
    assert not decide(gate, key("a")).final


def test_a_decision_applies_the_policy_as_it_is_now() -> None:
    saved = policy(approver_groups=["payments"])
    gate = open_gate()
    alice = person("alice", "payments")
    policies.policy_save(policy_id=saved.id, body={"approver_groups": ["leads"]}, actor="user:admin")
    refused(gate, alice, NotAnApprover)
    assert decide(gate, person("lee", "leads")).final
    gate.refresh_from_db()
    assert gate.policy_version == 2


# ---- races --------------------------------------------------------------------------------------


class Racers:
    """Threads started one by one (each with its own connection), joined together."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[Any] = []

    def start(self, target: Callable[[], Any]) -> None:
        i = len(self.results)
        self.results.append(None)

        def work() -> None:
            try:
                self.results[i] = target()
            except Exception as exc:
                self.results[i] = exc
            finally:
                connection.close()

        thread = threading.Thread(target=work)
        self.threads.append(thread)
        thread.start()

    def done(self, i: int) -> bool:
        return not self.threads[i].is_alive()

    def join(self) -> list[Any]:
        for thread in self.threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self.threads)
        return self.results


def lock_waiters() -> int:
    """Sessions of the test database waiting for a lock (the racers: nothing else runs here)."""
    with connection.cursor() as cur:
        cur.execute(
            """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"""
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def holding(test_database_url: str, *statements: tuple[str, list[Any]]) -> Iterator[None]:
    """Run ``statements`` in a transaction of another connection, and keep it open (its locks
    held) until the block ends; then roll it back."""
    with psycopg.connect(test_database_url) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
        try:
            yield
        finally:
            conn.rollback()


def audit_head(test_database_url: str) -> contextlib.AbstractContextManager[None]:
    """Hold the audit chain head: every decision that gets there waits, with all it did before
    (its vote, its tally, its resolution) done and uncommitted."""
    with psycopg.connect(test_database_url, autocommit=True) as conn:
        conn.execute(audit._HEAD_INIT_SQL, [audit.GENESIS])  # the row exists to be locked
    return holding(test_database_url, ("SELECT 1 FROM tb_audit_head WHERE id = 1 FOR UPDATE", []))


def test_race__quorum_of_two_reached_by_four_at_once(test_database_url: str) -> None:
    """Four approvers click at once, each first counted while the others are still in flight:
    exactly one ``gate.resolved``, exactly two votes, the two losers told who decided."""
    policy(approver_groups=["payments"], quorum=2)
    gate = open_gate()
    voters = [person(n, "payments") for n in ("ann", "ben", "cat", "dan")]
    racers = Racers()
    with audit_head(test_database_url):
        for voter in voters:
            racers.start(lambda voter=voter: decide(gate, voter))
        wait_until(lambda: lock_waiters() == 4, "four approvers in flight")
    results = racers.join()

    gate.refresh_from_db()
    assert gate.status == APPROVED
    winners = [r for r in results if isinstance(r, approvals.Decision)]
    losers = [r for r in results if not isinstance(r, approvals.Decision)]
    assert sorted(d.final for d in winners) == [False, True], results
    assert [type(e) for e in losers] == [GateAlreadyResolved, GateAlreadyResolved], results
    assert {e.message for e in losers} == {f"gate already approved by {gate.actor}"}
    assert len(votes(gate)) == 2
    assert gate.actor == ", ".join(v.removeprefix("user:") for v, _ in votes(gate))
    assert resolved_events(gate) == 1
    assert len(decision_entries(gate)) == 2
    assert audit.audit_verify().ok


def test_race__quorum_of_two_with_four_released_together() -> None:
    """The same race as it happens, released by a barrier, a few times over."""
    policy(approver_groups=["payments"], quorum=2)
    voters = [person(n, "payments") for n in ("ann", "ben", "cat", "dan")]
    for round in range(3):
        gate = open_gate(name=f"send-{round}")
        results = in_threads(4, lambda i, gate=gate: decide(gate, voters[i]))
        gate.refresh_from_db()
        assert gate.status == APPROVED, results
        assert sum(isinstance(r, approvals.Decision) for r in results) == 2, results
        assert sum(isinstance(r, GateAlreadyResolved) for r in results) == 2, results
        assert (len(votes(gate)), resolved_events(gate), len(decision_entries(gate))) == (2, 1, 2)
    assert audit.audit_verify().ok


def test_race__a_double_click_is_one_vote(test_database_url: str) -> None:
    policy(approver_groups=["payments"], quorum=2)
    gate = open_gate()
    alice = person("alice", "payments")
    racers = Racers()
    with audit_head(test_database_url):
        racers.start(lambda: decide(gate, alice))
        racers.start(lambda: decide(gate, alice))
        wait_until(lambda: lock_waiters() == 2, "both clicks in flight")
    results = racers.join()
    assert sorted(type(r).__name__ for r in results) == ["AlreadyVoted", "Decision"], results
    assert votes(gate) == [("user:alice", APPROVED)]
    assert len(decision_entries(gate)) == 1
    gate.refresh_from_db()
    assert gate.status == "pending"
    assert audit.audit_verify().ok


@pytest.mark.parametrize("first", [APPROVED, REJECTED])
def test_race__an_approval_and_a_rejection_at_once(test_database_url: str, first: str) -> None:
    """Quorum 2, any rejection rejects. Whichever is first: the gate is rejected once, and no
    vote is counted after the rejection decided it (the approval, if second, is told so)."""
    policy(quorum=2, reject_mode="any")
    gate = open_gate()
    second = APPROVED if first == REJECTED else REJECTED
    racers = Racers()
    with audit_head(test_database_url):
        racers.start(lambda: decide(gate, key("first"), first))
        wait_until(lambda: lock_waiters() == 1, "the first decision in flight")
        racers.start(lambda: decide(gate, key("second"), second))
        wait_until(lambda: lock_waiters() == 2, "the second decision in flight")
    results = racers.join()

    gate.refresh_from_db()
    assert gate.status == REJECTED
    assert resolved_events(gate) == 1
    if first == APPROVED:
        assert [type(r) for r in results] == [approvals.Decision, approvals.Decision], results
        assert votes(gate) == [("key:first", APPROVED), ("key:second", REJECTED)]
        assert gate.actor == "key:second"
    else:
        assert isinstance(results[0], approvals.Decision), results
        assert results[0].final
        assert isinstance(results[1], GateAlreadyResolved), results
        assert results[1].message == "gate already rejected by key:first"
        assert votes(gate) == [("key:first", REJECTED)]
    events = [e.type for e in Event.objects.filter(run_id=gate.run_id).order_by("seq")]
    assert events[events.index("gate.resolved") :] == ["gate.resolved"]  # nothing counted after it
    assert len(decision_entries(gate)) == len(votes(gate))
    assert audit.audit_verify().ok


def test_race__a_policy_saved_while_a_decision_is_in_flight(test_database_url: str) -> None:
    """The decision has read the policy (v1: quorum 1) and is about to record its vote when an
    admin saves v2 (quorum 2). The save waits for the decision: the gate is approved under v1,
    and the audit trail lists the decision before the change, never a v1 decision after v2."""
    saved = policy(approver_groups=["payments"])
    gate = open_gate()
    alice = person("alice", "payments")
    racers = Racers()
    # alice's vote, uncommitted elsewhere: her decision waits on the unique index, mid-way
    vote = (
        "INSERT INTO tb_gate_vote (gate_id, voter, decision, comment, channel, created_at)"
        " VALUES (%s, 'user:alice', 'approved', '', 'dashboard', now())",
        [gate.id],
    )
    with holding(test_database_url, vote):
        racers.start(lambda: decide(gate, alice))
        wait_until(lambda: lock_waiters() == 1, "the decision in flight")
        racers.start(lambda: policies.policy_save(policy_id=saved.id, body={"quorum": 2}, actor="user:admin"))
        wait_until(lambda: racers.done(1) or lock_waiters() == 2, "the save to finish or wait")
    decided, changed = racers.join()
    assert isinstance(decided, approvals.Decision), decided
    assert decided.final
    assert isinstance(changed, ApprovalPolicy), changed
    assert changed.version == 2

    gate.refresh_from_db()
    assert (gate.status, gate.policy_version) == (APPROVED, 1)
    assert list(GateVote.objects.filter(gate_id=gate.id).values_list("policy_version", flat=True)) == [1]
    trail = [(e.kind, e.policy_version) for e in AuditEntry.objects.order_by("seq")]
    assert trail == [("policy_change", "1"), ("decision", "1"), ("policy_change", "2")]
    assert audit.audit_verify().ok


def test_race__a_decision_while_a_policy_save_is_in_flight(test_database_url: str) -> None:
    """The other order: the admin's save (v2: quorum 2) is about to commit when alice decides.
    Her decision waits for it and applies v2: her vote is counted, the gate stays pending."""
    saved = policy(approver_groups=["payments"])
    gate = open_gate()
    alice = person("alice", "payments")
    racers = Racers()
    with audit_head(test_database_url):
        racers.start(lambda: policies.policy_save(policy_id=saved.id, body={"quorum": 2}, actor="user:admin"))
        wait_until(lambda: lock_waiters() == 1, "the save in flight")
        racers.start(lambda: decide(gate, alice))
        wait_until(lambda: lock_waiters() == 2, "the decision in flight")
    changed, decided = racers.join()
    assert isinstance(changed, ApprovalPolicy), changed
    assert changed.version == 2
    assert isinstance(decided, approvals.Decision), decided
    assert not decided.final
    assert decided.tally == approvals.Tally(2, 1, 0, ("user:alice",))

    gate.refresh_from_db()
    assert gate.status == "pending"
    assert list(GateVote.objects.filter(gate_id=gate.id).values_list("policy_version", flat=True)) == [2]
    trail = [(e.kind, e.policy_version) for e in AuditEntry.objects.order_by("seq")]
    assert trail == [("policy_change", "1"), ("policy_change", "2"), ("decision", "2")]
    # the gate records the version it is decided under
    assert decide(gate, person("bob", "payments")).gate.policy_version == 2
    assert audit.audit_verify().ok


# ---- audit --------------------------------------------------------------------------------------


def test_audit__each_vote_is_one_decision_entry_with_actor_channel_and_version() -> None:
    saved = policy(approver_groups=["payments"], approver_keys=["lead"], quorum=3, allow_token=True)
    gate = open_gate()
    policies.policy_save(policy_id=saved.id, body={"quorum": 3, "name": "payments-v2"}, actor="user:admin")
    decide(gate, person("alice", "payments"))
    decide(gate, key("lead", actor="carol"), comment="fine")
    decide(gate, token_holder(actor="reviewer"), token=gate.resolve_token)

    got = [(e.kind, e.actor, e.channel, e.policy_version, e.data["final"]) for e in decision_entries(gate)]
    assert got == [
        ("decision", "alice", "dashboard", "2", False),
        ("decision", "carol", "api_key", "2", False),
        ("decision", "alice, key:lead, reviewer", "token", "2", True),
    ]
    last = decision_entries(gate)[-1].data
    assert (last["decidedBy"], last["vote"], last["quorum"]) == (
        "token:resolve-token",
        APPROVED,
        {"needed": 3, "approvals": 3, "rejections": 0},
    )
    assert audit.audit_verify().ok
