"""The run routes are single SQL statements that build their JSON in Postgres (run detail, and
the run payloads of channel deliveries). Here: they answer what the Python serializers
(``wire.*_out``) answer, field for field; each costs one statement; and the run-level
invariants hold under concurrency (threads with their own connections)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.core.test_probes import events, in_threads
from tidebase_core import wire
from tidebase_core.exceptions import RunCompleted, RunLeased, RunNotFound
from tidebase_core.models import (
    Channel,
    ChannelDelivery,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    StateStream,
    StateVersion,
    UsageRecord,
)
from tidebase_core.selectors import runs as selectors
from tidebase_core.services import gates, runs, steps

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def plain(value: Any) -> Any:
    """What a client sees: the answer's JSON, parsed."""
    return json.loads(wire.dumps(value))


def reference_detail(run_id: str, *, show_tokens: bool) -> dict[str, Any]:
    """Run detail built the way it was before it moved into SQL: the ORM and ``wire``."""
    run = Run.objects.get(id=run_id)
    edges = list(RunEdge.objects.filter(parent_run_id=run_id).select_related("child_run").order_by("created_at", "id"))
    state = RunState.objects.filter(run_id=run_id).first()
    versions = StateVersion.objects.filter(run_id=run_id).order_by("stream__name", "version")
    deliveries = ChannelDelivery.objects.filter(run_id=run_id).order_by("-created_at", "-id")[:100]
    return plain(
        {
            "run": wire.run_out(run),
            "steps": [wire.step_out(s) for s in selectors.step_list(run_id=run_id)],
            "state": wire.state_out(state) if state else None,
            "stateStreams": [
                wire.stream_out(s) for s in StateStream.objects.filter(run_id=run_id).order_by("created_at", "id")
            ],
            "stateVersions": [wire.version_out(v) for v in versions],
            "runEdges": [wire.edge_out(e) for e in edges],
            "childRuns": [wire.run_out(e.child_run) for e in edges],
            "recoveryAttempts": [
                wire.recovery_out(a)
                for a in RecoveryAttempt.objects.filter(run_id=run_id).order_by("-created_at", "-id")
            ],
            "channels": [
                wire.channel_out(c) for c in Channel.objects.filter(run_id=run_id).order_by("created_at", "id")
            ],
            "channelDeliveries": [wire.delivery_out(d, show_token=show_tokens) for d in deliveries],
            "gates": [
                wire.gate_out(g, show_token=show_tokens)
                for g in Gate.objects.filter(run_id=run_id).order_by("created_at", "id")
            ],
            "usage": [
                wire.usage_out(u) for u in UsageRecord.objects.filter(run_id=run_id).order_by("created_at", "id")
            ],
            "events": [wire.event_out(e) for e in events(run_id)],
        }
    )


CHANNELS = [
    {"url": "https://ops.example/hook", "secret": "s3cret", "events": [], wire.SET_BY: "admin"},
    {"url": "https://agent.example/hook", "secret": None, "events": ["run.completed", "gate.created"]},
    {"url": "https://other.example/hook", "secret": "", "events": ["step.failed"], wire.SET_BY: "agent"},
]


def rich_run() -> str:
    """A run with something in every part of its detail, and the values that tell serializers
    apart: big integers, decimals with trailing zeros, timestamps before year 1000, tokens."""
    run = runs.run_create(
        workflow_name="rich",
        input={"big": 2**70, "nested": {"a": [1, 2.5, None, "x"]}},
        metadata={"team": "core"},
        recovery_webhook="https://recover.example/hook",
        channels=CHANNELS,
    )
    _, owner = runs.run_begin(run_id=run.id, owner="w1")
    first = steps.step_begin(run_id=run.id, name="plan", input_hash="h1", input={"q": 1}, options={}, owner=owner)
    assert first.step is not None
    steps.step_complete(run_id=run.id, step_id=first.step.id, owner=owner, output={"plan": [1, 2]})
    second = steps.step_begin(
        run_id=run.id, name="write", input_hash="h2", input=None, options={"sideEffects": ["email"]}, owner=owner
    )
    assert second.step is not None
    steps.step_fail(
        run_id=run.id, step_id=second.step.id, owner=owner, error={"m": "x"}, retryable=False, resume_decision=None
    )
    gate, _ = gates.gate_begin(
        run_id=run.id,
        name="approve",
        prompt="ok?",
        data={"amount": 10},
        channels=[
            {"url": "https://inline.example/a", "secret": "inline-secret", "events": [], wire.SET_BY: "admin"},
            {"url": "https://inline.example/b", "events": ["gate.created"], wire.SET_BY: "agent"},
        ],
        capability={"tool": "refund"},
        timeout_ms=60_000,
    )
    gates.gate_begin(run_id=run.id, name="second", prompt="and this?", data=None)
    # what a receiver answered: the token echoed back, and an error text that quotes it
    ChannelDelivery.objects.filter(run_id=run.id, event_type="gate.created").update(
        response_body=f"got {gate.resolve_token}", error_text=f"echo {gate.resolve_token} twice {gate.resolve_token}"
    )
    ChannelDelivery.objects.filter(run_id=run.id, event_type="step.failed").update(response_body="", error_text="")
    stream = StateStream.objects.create(run_id=run.id, name="run", target_id=run.id, current_version=2)
    other = StateStream.objects.create(run_id=run.id, name="agent:a", target_type="agent", target_id="a")
    StateVersion.objects.create(stream=stream, run_id=run.id, version=2, value={"v": 2}, patch={"v": 2})
    StateVersion.objects.create(stream=stream, run_id=run.id, version=1, value={"v": 1}, label="start")
    StateVersion.objects.create(stream=other, run_id=run.id, version=1, value=None, importance="milestone")
    RunState.objects.create(run_id=run.id, value={"status": "writing"}, version=2)
    for cost, quantity in ((Decimal("0.0021000000"), None), (Decimal("2"), Decimal("1.5")), (None, Decimal("3.0"))):
        UsageRecord.objects.create(run_id=run.id, kind="llm", cost_usd=cost, quantity=quantity, input_tokens=2**40)
    child, _, _ = runs.child_create(parent_run_id=run.id, name="c1", workflow_name="sub", input=None)
    runs.child_create(parent_run_id=run.id, name="c2", workflow_name="sub", input=[1])
    runs.run_complete(run_id=child.id, result={"child": True})
    runs.run_fail(run_id=run.id, error={"name": "RuntimeError", "message": "stop"})
    runs.run_recover(run_id=run.id, reason="manual")
    RecoveryAttempt.objects.filter(run_id=run.id, reason="manual").update(
        status="failed", http_status=500, response_body="no", error_text="boom", attempts=2
    )
    Run.objects.filter(id=run.id).update(deadline_at=dt.datetime(119, 7, 10, 12, 34, 56, 999_999, tzinfo=dt.UTC))
    return run.id


@pytest.mark.parametrize("show_tokens", [True, False])
def test_run_detail__sql_answers_what_the_python_serializers_answer(show_tokens: bool) -> None:
    run_id = rich_run()

    detail = plain(selectors.run_detail(run_id=run_id, show_tokens=show_tokens))

    expected = reference_detail(run_id, show_tokens=show_tokens)
    assert list(detail) == list(expected)
    for part, value in expected.items():
        assert detail[part] == value, part
    # the run above exercises every part and every redaction
    assert all(detail[part] for part in expected), [part for part in expected if not detail[part]]
    tokens = {d["payload"]["gate"]["resolveToken"] for d in detail["channelDeliveries"] if "gate" in d["payload"]}
    assert (tokens - {None} != set()) is show_tokens


def test_run_detail__of_an_unknown_run_is_not_found() -> None:
    with pytest.raises(RunNotFound):
        selectors.run_detail(run_id="run_missing", show_tokens=True)


def test_run_payloads_of_channel_deliveries__are_the_runs_wire_form() -> None:
    run = runs.run_create(workflow_name="wf", input={"i": 2**64}, channels=CHANNELS)
    runs.run_begin(run_id=run.id, owner="w")
    runs.run_fail(run_id=run.id, error={"message": "first"})
    failed = plain(wire.run_out(Run.objects.get(id=run.id)))
    runs.run_complete(run_id=run.id, result={"ok": True})
    completed = plain(wire.run_out(Run.objects.get(id=run.id)))

    sent = {d.event_type: d.payload for d in ChannelDelivery.objects.filter(run_id=run.id, channel__secret="s3cret")}
    assert sent["run.failed"] == {"run": failed, "error": {"message": "first"}}
    assert sent["run.completed"] == {"run": completed}
    # the channel subscribed to run.completed only got that one; the step.failed one got none
    by_url = {(d.url, d.event_type) for d in ChannelDelivery.objects.filter(run_id=run.id)}
    assert by_url == {
        ("https://ops.example/hook", "run.failed"),
        ("https://ops.example/hook", "run.completed"),
        ("https://agent.example/hook", "run.completed"),
    }


# --- one statement each ----------------------------------------------------------------------


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """The SQL statements sent from now on (every psycopg cursor, Django's included)."""
    connection.ensure_connection()
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def spy(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return real(self, query, *args, **kwargs)

    def taken() -> list[str]:
        out = sent[:]
        sent.clear()
        return out

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    return taken


def test_run_routes__create_begin_complete_fail_and_detail_are_one_statement_each(
    statements: Callable[[], list[str]],
) -> None:
    run = runs.run_create(workflow_name="wf", input={"i": 1}, channels=CHANNELS, idempotency=("me", "k-lean"))
    assert len(statements()) == 1
    runs.run_begin(run_id=run.id)
    assert len(statements()) == 1
    runs.run_fail(run_id=run.id, error={"m": 1})
    assert len(statements()) == 1
    runs.run_complete(run_id=run.id, result=None)
    assert len(statements()) == 1
    selectors.run_detail(run_id=run.id, show_tokens=False)
    assert len(statements()) == 1


# --- semantics the single statements keep ----------------------------------------------------


def test_run_create__channels_keep_their_order_and_the_first_event_is_seq_1() -> None:
    run = runs.run_create(workflow_name="wf", channels=[{"url": f"https://h.example/{i}"} for i in range(5)])

    detail = plain(selectors.run_detail(run_id=run.id, show_tokens=False))

    assert [c["config"]["url"] for c in detail["channels"]] == [f"https://h.example/{i}" for i in range(5)]
    assert [(e["seq"], e["type"]) for e in detail["events"]] == [(1, "run.created")]
    assert detail["events"][0]["payload"]["channels"] == [
        {"type": "webhook", "url": f"https://h.example/{i}", "events": []} for i in range(5)
    ]
    assert Run.objects.get(id=run.id).event_seq == 1
    assert set(Channel.objects.filter(run_id=run.id).values_list("set_by_scope", flat=True)) == {"agent"}


def test_run_fail__with_a_recovery_webhook_writes_run_failed_then_recovery_started() -> None:
    run = runs.run_create(workflow_name="wf", recovery_webhook="https://recover.example/hook")
    runs.run_begin(run_id=run.id, owner="w")

    failed, requeued = runs.run_fail(run_id=run.id, error=None, failure_class="oom")

    attempt = RecoveryAttempt.objects.get(run_id=run.id)
    assert not requeued
    assert (failed.status, plain(failed.error), failed.failure_class, failed.lease_owner) == ("failed", {}, "oom", None)
    assert (attempt.reason, attempt.type, attempt.status, attempt.webhook_url) == (
        "run_failed",
        "run.resume",
        "pending",
        "https://recover.example/hook",
    )
    assert attempt.next_attempt_at is not None
    assert [(e.seq, e.type, e.payload) for e in events(run.id)][-2:] == [
        (3, "run.failed", {"error": {}, "failureClass": "oom"}),
        (4, "recovery.started", {"recoveryAttemptId": attempt.id, "reason": "run_failed"}),
    ]
    assert Run.objects.get(id=run.id).event_seq == 4


@pytest.mark.parametrize(("attempt", "backoff_s"), [(1, 5), (3, 20), (6, 160), (7, 300), (40, 300)])
def test_run_fail__a_queue_run_with_attempts_left_is_requeued_with_backoff(attempt: int, backoff_s: int) -> None:
    run = runs.run_create(workflow_name="wf", recovery_webhook="https://recover.example/hook")
    Run.objects.filter(id=run.id).update(queue="q", max_attempts=50, attempt=attempt - 1)
    runs.run_begin(run_id=run.id, owner="w")

    requeued_run, requeued = runs.run_fail(run_id=run.id, error={"m": 1}, failure_class="ignored")

    stored = Run.objects.get(id=run.id)
    assert requeued
    assert (stored.status, stored.error, stored.failure_class, stored.lease_owner) == ("queued", {"m": 1}, None, None)
    assert stored.lease_expires_at is None
    assert stored.run_at is not None
    last = events(run.id)[-1]
    assert stored.run_at - last.created_at == dt.timedelta(seconds=backoff_s)  # one statement: one now()
    assert (last.type, last.payload) == (
        "run.requeued",
        {"error": {"m": 1}, "attempt": attempt, "maxAttempts": 50, "nextRunAt": wire.ts(stored.run_at)},
    )
    assert plain(wire.run_out(requeued_run)) == plain(wire.run_out(stored))
    assert not RecoveryAttempt.objects.filter(run_id=run.id).exists()


def test_run_fail__a_queue_run_out_of_attempts_fails_with_max_retries() -> None:
    run = runs.run_create(workflow_name="wf")
    Run.objects.filter(id=run.id).update(queue="q", max_attempts=2, attempt=1)
    runs.run_begin(run_id=run.id, owner="w")

    failed, requeued = runs.run_fail(run_id=run.id, error={"m": 1}, failure_class="mine")

    assert not requeued
    assert (failed.status, failed.failure_class) == ("failed", "max_retries")


# --- concurrency -----------------------------------------------------------------------------

THREADS = 16


def test_run_begin__16_owners_at_once_one_acquires_and_15_see_run_leased() -> None:
    run = runs.run_create(workflow_name="wf")

    results = in_threads(THREADS, lambda i: runs.run_begin(run_id=run.id, owner=f"w{i}")[1])

    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, RunLeased) and r.extra == {"leaseOwner": winners[0]} for r in results if r not in winners)
    stored = Run.objects.get(id=run.id)
    assert (stored.status, stored.lease_owner, stored.attempt) == ("running", winners[0], 1)
    assert [e.payload for e in events(run.id, "run.started")] == [{"leaseOwner": winners[0]}]


def test_run_complete__16_completes_at_once_record_one_result_and_one_event() -> None:
    run = runs.run_create(workflow_name="wf", channels=CHANNELS[:1])
    runs.run_begin(run_id=run.id, owner="w")

    results = in_threads(THREADS, lambda i: plain(runs.run_complete(run_id=run.id, result={"by": i}).result))

    stored = Run.objects.get(id=run.id)
    assert stored.status == "completed"
    assert results == [stored.result] * THREADS  # the losers waited for the winner and answer its run
    assert len(events(run.id, "run.completed")) == 1
    assert ChannelDelivery.objects.filter(run_id=run.id, event_type="run.completed").count() == 1


def test_run_complete_racing_cancel_and_fail__one_final_outcome_with_matching_events() -> None:
    for _ in range(20):
        run = runs.run_create(workflow_name="wf")
        runs.run_begin(run_id=run.id, owner="w")
        actions: list[Callable[[], Any]] = [
            lambda run_id=run.id: runs.run_complete(run_id=run_id, result="done"),
            lambda run_id=run.id: runs.run_fail(run_id=run_id, error={"m": "late"}),
            lambda run_id=run.id: runs.run_cancel(run_id=run_id, reason="stop"),
        ]

        results = in_threads(3, lambda i, actions=actions: actions[i]())

        stored = Run.objects.get(id=run.id)
        kinds = [e.type for e in events(run.id) if e.type not in ("run.created", "run.started")]
        if stored.status == "completed":  # complete came before cancel; a fail may precede it
            assert kinds in (["run.completed"], ["run.failed", "run.completed"]), kinds
            assert isinstance(results[2], RunCompleted)
        else:  # cancel came before complete; a fail may precede it
            assert stored.status == "cancelled", stored.status
            assert kinds in (["run.cancelled"], ["run.failed", "run.cancelled"]), kinds
            assert results[0].status == "cancelled"
        assert [e.seq for e in events(run.id)] == list(range(1, len(kinds) + 3))
