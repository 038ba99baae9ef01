"""A policy's SLA run by the server (services.sla): each reminder, escalation and expiry happens
once, with its event, channel delivery, notifications and audit entry, however many reconcilers
tick at once and whatever a human decides meanwhile. Time moves by setting a gate's due times in
the past, never by sleeping."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import override_settings

from dashboard.roles import ensure_roles
from tests.api.test_events_sse import Stream
from tests.conftest import lock_waiters
from tests.webhooks.conftest import Receiver, wait_for
from tidebase_core.exceptions import GateAlreadyResolved
from tidebase_core.models import (
    ApprovalPolicy,
    AuditEntry,
    ChannelDelivery,
    Event,
    Gate,
    Notification,
)
from tidebase_core.services import approvals, audit, gates, policies, runs, sla
from tidebase_core.services.reconcile import reconcile_tick
from webhooks.services.attempts import delivery_attempt

pytestmark = pytest.mark.django_db(transaction=True)

HOOK = "http://127.0.0.1:9/hook"
"""The run's webhook channel: deliveries are rows here (nothing is sent unless a test sends)."""
NOTHING = {"reminded": 0, "escalated": 0, "expired": 0}


@pytest.fixture
def people() -> dict[str, User]:
    """alice and dave approve (dave has no address, so gets no email); carol leads (escalations)."""
    approvers, leads = Group.objects.create(name="payments"), Group.objects.create(name="leads")
    alice = User.objects.create_user("alice", "alice@x.test", "pw")
    dave = User.objects.create_user("dave", "", "pw")
    carol = User.objects.create_user("carol", "carol@x.test", "pw")
    alice.groups.add(approvers)
    dave.groups.add(approvers)
    carol.groups.add(leads)
    role = ensure_roles()["approver"]  # a policy narrows who decides among those with the role
    for user in (alice, dave, carol):
        user.groups.add(role)
    return {"alice": alice, "dave": dave, "carol": carol}


def make_policy(**body: Any) -> ApprovalPolicy:
    base = {
        "name": "payments",
        "workflow_pattern": "pay*",
        "approver_groups": ["payments"],
        "email": True,
        "slack": "C0PAY",
        "remind_after_s": 3600,
        "escalate_after_s": 7200,
        "escalate_groups": ["leads"],
        "escalate_slack": "C0LEADS",
        "expire_after_s": 10800,
        "expiry_action": "none",
    }
    return policies.policy_save(policy_id=None, body={**base, **body}, actor="user:admin")


def open_gate(*, workflow: str = "payout", hook: str = HOOK) -> Gate:
    run = runs.run_create(workflow_name=workflow, started_by="user:bob", channels=[{"url": hook}])
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gates.gate_begin(run_id=run.id, name="send", prompt="send $420?")
    return gate


def make_due(gate: Gate, *columns: str) -> None:
    """Move the gate's ``remind_at``/``escalate_at``/``expire_at`` a second into the past."""
    assigns = ", ".join(f"{c} = now() - interval '1 second'" for c in columns)
    with connection.cursor() as cur:
        cur.execute(f"UPDATE tb_gate SET {assigns} WHERE id = %s", [gate.id])


def events(gate: Gate, type: str) -> list[Event]:
    return list(Event.objects.filter(run_id=gate.run_id, type=type).order_by("seq"))


def deliveries(gate: Gate, type: str) -> list[ChannelDelivery]:
    return list(ChannelDelivery.objects.filter(gate_id=gate.id, event_type=type))


def notes(gate: Gate, type: str) -> list[tuple[str, str, str | None]]:
    rows = Notification.objects.filter(gate_id=gate.id, event_type=type).select_related("user")
    return sorted((n.medium, n.target, n.user.username if n.user else None) for n in rows)


def entries(gate: Gate, kind: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(gate_id=gate.id, kind=kind).order_by("seq"))


def held_race(gate: Gate, targets: list[Callable[[], Any]]) -> list[Any]:
    """Run each target on its own thread (own DB connection) while this test holds the gate's row
    lock; a target starts once the one before it is waiting for the lock, so Postgres grants the
    lock in list order once the test lets go. Returns results (or exceptions) in order."""
    results: list[Any] = [None] * len(targets)

    def work(i: int) -> None:
        try:
            results[i] = targets[i]()
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    def waiting() -> int:
        with connection.cursor() as cur:  # pg_stat_activity is a snapshot per transaction
            cur.execute("SELECT pg_stat_clear_snapshot()")
        return lock_waiters("tb_gate")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(targets))]
    with transaction.atomic():
        Gate.objects.select_for_update().get(id=gate.id)
        for n, thread in enumerate(threads, start=1):
            thread.start()
            wait_for(lambda n=n: waiting() >= n, timeout=5, interval=0.02, what=f"{n} waiting for the gate")
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_reminder__once_with_event_delivery_emails_slack_and_audit(people: dict[str, User]) -> None:
    policy = make_policy()
    gate = open_gate()
    assert sla.sla_tick() == NOTHING  # nothing due yet
    make_due(gate, "remind_at")

    assert sla.sla_tick() == {**NOTHING, "reminded": 1}

    gate.refresh_from_db()
    assert gate.reminded_at is not None
    assert gate.escalated_at is None
    assert gate.status == "pending"
    [event] = events(gate, "gate.reminded")
    assert event.payload["gate"]["id"] == gate.id
    assert event.payload["gate"]["resolveToken"] is None
    assert event.payload["quorum"] == {"needed": 1, "approvals": 0, "rejections": 0}
    assert event.payload["sla"]["remindedAt"] is not None
    [delivery] = deliveries(gate, "gate.reminded")
    assert delivery.url == HOOK
    assert delivery.payload == event.payload
    assert notes(gate, "gate.reminded") == [("email", "alice@x.test", "alice"), ("slack", "C0PAY", None)]
    [entry] = entries(gate, audit.REMINDER)
    assert (entry.actor, entry.channel, entry.policy_version) == ("sla", "system", str(policy.version))
    assert entry.data["event"] == "gate.reminded"

    assert sla.sla_tick() == NOTHING  # done: a later beat does nothing
    assert len(events(gate, "gate.reminded")) == 1
    assert len(notes(gate, "gate.reminded")) == 2
    assert audit.audit_verify().ok


def test_escalation__tells_the_escalation_groups_and_slack(people: dict[str, User]) -> None:
    make_policy(email=False)  # escalations email the escalation groups even so
    gate = open_gate()
    make_due(gate, "escalate_at")

    assert sla.sla_tick() == {**NOTHING, "escalated": 1}
    assert sla.sla_tick() == NOTHING

    gate.refresh_from_db()
    assert gate.escalated_at is not None
    assert gate.reminded_at is None
    [event] = events(gate, "gate.escalated")
    assert event.payload["gate"]["id"] == gate.id
    assert len(deliveries(gate, "gate.escalated")) == 1
    assert notes(gate, "gate.escalated") == [("email", "carol@x.test", "carol"), ("slack", "C0LEADS", None)]
    [entry] = entries(gate, audit.ESCALATION)
    assert (entry.actor, entry.channel) == ("sla", "system")


def test_expiry_none__leaves_the_gate_pending_and_overdue(people: dict[str, User]) -> None:
    make_policy(expiry_action="none")
    gate = open_gate()
    make_due(gate, "expire_at")

    assert sla.sla_tick() == {**NOTHING, "expired": 1}
    assert sla.sla_tick() == NOTHING

    gate.refresh_from_db()
    assert gate.status == "pending"
    assert gate.expired_at is not None
    [event] = events(gate, "gate.expired")
    assert event.payload["expiryAction"] == "none"
    assert events(gate, "gate.resolved") == []
    assert len(deliveries(gate, "gate.expired")) == 1
    assert notes(gate, "gate.expired") == [("slack", "C0PAY", None)]
    [entry] = entries(gate, audit.EXPIRY)
    assert (entry.actor, entry.channel, entry.data["expiryAction"]) == ("sla", "system", "none")
    # Still decidable by an approver after it is overdue.
    voter = policies.voter_for_user(people["alice"], channel=audit.DASHBOARD)
    decided = approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=voter)
    assert decided.gate.status == "approved"


@pytest.mark.parametrize(("action", "status"), [("reject", "rejected"), ("approve", "approved")])
def test_expiry_decides__one_gate_resolved_by_the_sla(people: dict[str, User], action: str, status: str) -> None:
    policy = make_policy(expiry_action=action)
    gate = open_gate()
    make_due(gate, "expire_at")

    assert sla.sla_tick() == {**NOTHING, "expired": 1}
    assert sla.sla_tick() == NOTHING

    gate.refresh_from_db()
    assert (gate.status, gate.decision, gate.actor, gate.decided_by) == (status, status, "sla", "reconciler")
    assert gate.decision_payload == {"reason": "sla_expired"}
    assert gate.expired_at is not None
    assert gate.policy_version == policy.version
    [expired] = events(gate, "gate.expired")
    [resolved] = events(gate, "gate.resolved")
    assert expired.seq < resolved.seq
    assert resolved.payload["gate"]["status"] == status
    assert len(deliveries(gate, "gate.expired")) == 1
    assert len(deliveries(gate, "gate.resolved")) == 1
    assert notes(gate, "gate.resolved") == [("slack", "C0PAY", None)]  # the outcome, once
    [entry] = entries(gate, audit.EXPIRY)  # the expiry is the decision's entry
    assert (entry.actor, entry.channel, entry.policy_version) == ("sla", "system", str(policy.version))
    assert (entry.data["decision"], entry.data["expiryAction"]) == (status, action)
    assert entries(gate, audit.DECISION) == []


def test_all_steps_due_at_once__each_once_in_order(people: dict[str, User]) -> None:
    make_policy(expiry_action="reject")
    gate = open_gate()
    make_due(gate, "remind_at", "escalate_at", "expire_at")

    assert sla.sla_tick() == {"reminded": 1, "escalated": 1, "expired": 1}
    assert sla.sla_tick() == NOTHING

    kinds = list(
        Event.objects.filter(run_id=gate.run_id, type__startswith="gate.")
        .order_by("seq")
        .values_list("type", flat=True)
    )
    assert kinds == ["gate.created", "gate.reminded", "gate.escalated", "gate.expired", "gate.resolved"]


def test_gates_without_policy_or_decided_are_untouched(people: dict[str, User]) -> None:
    plain = open_gate(workflow="other")  # no policy matches
    assert plain.policy_id is None
    make_due(plain, "remind_at", "escalate_at", "expire_at")  # even with times set by hand
    make_policy()
    decided = open_gate()
    voter = policies.voter_for_user(people["alice"], channel=audit.DASHBOARD)
    approvals.gate_decide(run_id=decided.run_id, gate_id=decided.id, decision="approved", voter=voter)
    make_due(decided, "remind_at", "escalate_at", "expire_at")

    assert sla.sla_tick() == NOTHING

    for gate in (plain, decided):
        gate.refresh_from_db()
        assert (gate.reminded_at, gate.escalated_at, gate.expired_at) == (None, None, None)
        assert Event.objects.filter(run_id=gate.run_id, type__in=["gate.reminded", "gate.expired"]).count() == 0


def test_step_twice__the_second_finds_it_done(people: dict[str, User]) -> None:
    make_policy()
    gate = open_gate()
    make_due(gate, "remind_at")
    assert sla.sla_step(gate_id=gate.id, step=sla.REMIND) is not None
    assert sla.sla_step(gate_id=gate.id, step=sla.REMIND) is None
    assert len(events(gate, "gate.reminded")) == 1


def test_concurrent_ticks__one_reminder(people: dict[str, User]) -> None:
    """Three reconcilers that all read the gate as due before any of them commits: the first
    reminds, the others' compare-and-set matches nothing."""
    make_policy()
    gate = open_gate()
    make_due(gate, "remind_at")

    results = held_race(gate, [sla.sla_tick, sla.sla_tick, sla.sla_tick])

    assert sorted(r["reminded"] for r in results) == [0, 0, 1], results
    assert len(events(gate, "gate.reminded")) == 1
    assert len(deliveries(gate, "gate.reminded")) == 1
    assert len(notes(gate, "gate.reminded")) == 2
    assert len(entries(gate, audit.REMINDER)) == 1


@pytest.mark.parametrize("first", ["sla", "human"])
def test_expiry_racing_an_approval__one_gate_resolved(people: dict[str, User], first: str) -> None:
    make_policy(expiry_action="reject")
    gate = open_gate()
    make_due(gate, "expire_at")
    voter = policies.voter_for_user(people["alice"], channel=audit.DASHBOARD)

    def expire() -> Gate | None:
        return sla.sla_step(gate_id=gate.id, step=sla.EXPIRE)

    def approve() -> approvals.Decision:
        return approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=voter)

    if first == "sla":
        expired, approved = held_race(gate, [expire, approve])
    else:
        approved, expired = held_race(gate, [approve, expire])

    gate.refresh_from_db()
    assert len(events(gate, "gate.resolved")) == 1
    if first == "sla":
        assert isinstance(expired, Gate)
        assert expired.status == "rejected"
        assert isinstance(approved, GateAlreadyResolved)
        assert (gate.status, gate.actor) == ("rejected", "sla")
        assert len(events(gate, "gate.expired")) == 1
    else:
        assert expired is None  # decided meanwhile: skipped, not an error
        assert isinstance(approved, approvals.Decision)
        assert approved.final
        assert (gate.status, gate.actor, gate.expired_at) == ("approved", "alice", None)
        assert events(gate, "gate.expired") == []
    assert audit.audit_verify().ok


def test_reconcile_tick_runs_the_sla(people: dict[str, User]) -> None:
    make_policy()
    gate = open_gate()
    make_due(gate, "remind_at", "escalate_at")
    result = reconcile_tick()
    assert result["gate_sla"] == {"reminded": 1, "escalated": 1, "expired": 0}
    assert reconcile_tick()["gate_sla"] == NOTHING
    assert len(events(gate, "gate.reminded")) == 1
    assert len(events(gate, "gate.escalated")) == 1


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_reminder_reaches_an_sse_subscriber(people: dict[str, User], live_server_url: str) -> None:
    make_policy()
    gate = open_gate()
    last = Event.objects.filter(run_id=gate.run_id).order_by("-seq").values_list("seq", flat=True)[0]
    stream = Stream(f"{live_server_url}/runs/{gate.run_id}/events?after={last}")
    try:
        make_due(gate, "remind_at")
        sla.sla_tick()
        event = stream.next_event()
        assert (event["seq"], event["type"]) == (last + 1, "gate.reminded")
        assert event["payload"]["gate"]["id"] == gate.id  # type: ignore[index]
    finally:
        stream.close()


@override_settings(TIDEBASE_WEBHOOK_ALLOW_HOSTS=["127.0.0.1"])
def test_reminder_reaches_a_webhook_receiver(people: dict[str, User], receiver: Receiver) -> None:
    make_policy()
    gate = open_gate(hook=receiver.url)
    make_due(gate, "remind_at")
    sla.sla_tick()
    [delivery] = deliveries(gate, "gate.reminded")
    delivery_attempt(kind="channel", delivery_id=delivery.id, expected_attempts=0, trigger="test")
    [body] = [b for b in receiver.bodies() if b["type"] == "gate.reminded"]
    assert (body["gateId"], body["deliveryId"]) == (gate.id, delivery.id)
    assert body["payload"]["quorum"]["needed"] == 1
    assert json.loads(json.dumps(body["payload"])) == delivery.payload
    assert ChannelDelivery.objects.get(id=delivery.id).status == "delivered"
