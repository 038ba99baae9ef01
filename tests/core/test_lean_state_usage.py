"""State set and usage record are one SQL statement each (issue #11), like the step routes: the
whole write, its event and outbox rows (and for usage the rollups) in one round trip, committed
by Postgres as the statement ends. What the statement builds in SQL (event and channel
payloads, ``createdAt`` stamps) must equal what ``wire`` builds in Python, and the checks it
folds in (run exists, stepId, idempotency key) must still write nothing when they refuse.

The concurrency probes of these writes are in test_write_races.py and test_usage_rollups.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.conftest import lock_waiters
from tests.live import wait_for
from tidebase_core import protocol, wire
from tidebase_core.exceptions import InvalidRequest, RunNotFound
from tidebase_core.models import (
    ChannelDelivery,
    Event,
    IdempotencyKey,
    RunState,
    StateVersion,
    UsageDaily,
    UsageRecord,
    UsageRunTotal,
)
from tidebase_core.services import runs, state, usage
from tidebase_core.services.steps import step_begin
from tidebase_core.services.usage import usage_rollups_check

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

HOOK = {"url": "http://127.0.0.1:9/hook", "events": []}


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement sent to Postgres, by any cursor (Django's or a raw psycopg one), and
    every explicit commit (``COMMIT``)."""
    sent: list[str] = []
    execute, commit = psycopg.Cursor.execute, psycopg.Connection.commit

    def counted_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(" ".join(str(query).split())[:60])
        return execute(self, query, *args, **kwargs)

    def counted_commit(self: Any) -> None:
        sent.append("COMMIT")
        commit(self)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    monkeypatch.setattr(psycopg.Connection, "commit", counted_commit)
    return sent


def one_statement(sent: list[str], write: Callable[[], Any]) -> Any:
    connection.ensure_connection()
    sent.clear()
    result = write()
    assert len(sent) == 1, sent
    return result


def test_state_write__is_one_statement_whether_it_creates_merges_or_opens_a_stream(statements: list[str]) -> None:
    run = runs.run_create(workflow_name="wf", channels=[HOOK])

    one_statement(statements, lambda: state.state_write(run_id=run.id, value={"a": 1}, merge=False))
    one_statement(statements, lambda: state.state_write(run_id=run.id, value={"b": 2}, merge=True))
    one_statement(statements, lambda: state.state_write(run_id=run.id, value=[1], merge=True, stream="other"))

    assert RunState.objects.get(run_id=run.id).version == 3


def test_usage_record__is_one_statement_with_or_without_an_idempotency_key(statements: list[str]) -> None:
    run = runs.run_create(workflow_name="wf", channels=[HOOK])

    one_statement(statements, lambda: usage.usage_record(run_id=run.id, input_tokens=1))
    one_statement(statements, lambda: usage.usage_record(run_id=run.id, input_tokens=1, idempotency=("s", "k")))

    assert UsageRunTotal.objects.get(run_id=run.id).records == 2


def test_state_write__event_outbox_and_answer_are_the_wire_forms_of_the_stored_rows() -> None:
    run = runs.run_create(workflow_name="wf", channels=[HOOK])
    state.state_write(run_id=run.id, value={"a": 1, "big": 2**70}, merge=False)

    answered = state.state_write(
        run_id=run.id,
        value={"b": [1.5, None, "x"]},
        merge=True,
        label="l",
        reason="r",
        importance="checkpoint",
        metadata={"m": 1},
        created_by="me",
    )

    live = RunState.objects.get(run_id=run.id)
    version = StateVersion.objects.get(run_id=run.id, version=2)
    merged = {"a": 1, "big": 2**70, "b": [1.5, None, "x"]}
    assert live.value == version.value == merged
    assert (version.patch, version.label, version.reason, version.importance) == (
        {"b": [1.5, None, "x"]},
        "l",
        "r",
        "checkpoint",
    )
    assert (version.metadata, version.created_by, version.stream.name) == ({"m": 1}, "me", "run")
    assert json.loads(wire.dumps(wire.state_out(answered))) == json.loads(wire.dumps(wire.state_out(live)))
    event = Event.objects.get(run_id=run.id, type="state.updated", payload__stateVersion__version=2)
    pv = wire.public_version(version)
    assert event.payload == {"value": merged, "stateVersion": pv, "patch": {"b": [1.5, None, "x"]}}
    deliveries = ChannelDelivery.objects.filter(run_id=run.id, event_type="state.updated").order_by("created_at")
    assert [d.payload for d in deliveries][-1] == {"state": wire.state_out(live), "stateVersion": pv}
    assert deliveries.count() == 2


@pytest.mark.parametrize(
    ("old", "patch"),
    [({"a": 1, "b": 1}, {"b": 2, "c": 3}), ([1], [2]), ({"a": 1}, 5), ([1], {"b": 2}), ("s", [1, 2]), (1, 2)],
)
def test_state_write__a_patch_merges_as_protocol_patch_value(old: Any, patch: Any) -> None:
    """The merge is Postgres' ``jsonb || jsonb`` now, not Python's: the same values (§7.7)."""
    run = runs.run_create(workflow_name="wf")
    state.state_write(run_id=run.id, value=old, merge=False)

    answered = state.state_write(run_id=run.id, value=patch, merge=True)

    expected = protocol.patch_value(old, patch)
    assert json.loads(wire.dumps(answered.value)) == expected
    assert RunState.objects.get(run_id=run.id).value == expected


def test_state_write__a_put_answers_its_own_value_and_writes_no_patch() -> None:
    run = runs.run_create(workflow_name="wf")
    state.state_write(run_id=run.id, value={"a": 1}, merge=False)

    answered = state.state_write(run_id=run.id, value={"b": 2}, merge=False)

    assert (answered.value, answered.version) == ({"b": 2}, 2)
    version = StateVersion.objects.get(run_id=run.id, version=2)
    assert (version.value, version.patch) == ({"b": 2}, None)
    event = Event.objects.filter(run_id=run.id, type="state.updated").latest("seq")
    assert "patch" not in event.payload


def test_state_write__an_unknown_run_is_not_found_and_writes_nothing() -> None:
    with pytest.raises(RunNotFound):
        state.state_write(run_id="run_missing", value={"a": 1}, merge=True)
    assert not RunState.objects.exists()
    assert not StateVersion.objects.exists()


def test_usage_record__event_outbox_and_answer_carry_the_stored_stamp() -> None:
    run = runs.run_create(workflow_name="wf", channels=[HOOK])

    record = usage.usage_record(
        run_id=run.id,
        kind="llm",
        provider="openai",
        model="gpt-4o-mini",
        label="call",
        quantity=Decimal("2"),
        unit="calls",
        input_tokens=1200,
        output_tokens=350,
        cost_usd=Decimal("0.0021"),
        metadata={"bench": True},
    )

    stored = UsageRecord.objects.get(id=record.id)
    assert record.created_at == stored.created_at
    assert stored.total_tokens == 1550
    out = wire.usage_out(record)
    assert out == wire.usage_out(stored)
    event = Event.objects.get(run_id=run.id, type="usage.recorded")
    assert event.payload == {"usage": out}
    [delivery] = ChannelDelivery.objects.filter(run_id=run.id, event_type="usage.recorded")
    assert delivery.payload == {"usage": out}


def test_usage_record__refusals_write_nothing_and_leave_the_key_free() -> None:
    run = runs.run_create(workflow_name="wf")
    other = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=other.id, owner="w")
    foreign = step_begin(run_id=other.id, name="s", input_hash="h", input=None, options={}, owner=owner).step
    assert foreign is not None

    with pytest.raises(RunNotFound):
        usage.usage_record(run_id="run_missing", input_tokens=1, idempotency=("s", "k"))
    with pytest.raises(InvalidRequest):
        usage.usage_record(run_id=run.id, step_id=foreign.id, input_tokens=1, idempotency=("s", "k"))
    assert not UsageRecord.objects.exists()
    assert not IdempotencyKey.objects.exists()
    assert not UsageDaily.objects.exists()

    first = usage.usage_record(run_id=other.id, step_id=foreign.id, input_tokens=1, idempotency=("s", "k"))
    again = usage.usage_record(run_id=other.id, step_id=foreign.id, input_tokens=1, idempotency=("s", "k"))
    assert again.id == first.id
    assert again.created_at == first.created_at
    assert UsageRecord.objects.count() == 1


def test_usage_record__first_records_that_queued_on_the_run_lock_count_the_run_once_in_its_earliest_row(
    test_database_url: str,
) -> None:
    """Eight first records of one run, each under its own provider (so its own daily row), all
    waiting on the run row lock: the run counts once, in the daily row of the record stamped
    first. The check of "first record" must see the writers that committed while it waited."""
    run = runs.run_create(workflow_name="wf")
    writers = 8
    errors: list[Exception] = []

    def write(i: int) -> None:
        try:
            usage.usage_record(run_id=run.id, provider=f"p{i}", model="m", input_tokens=i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    with psycopg.connect(test_database_url) as holder:
        holder.execute("SELECT 1 FROM tb_run WHERE id = %s FOR NO KEY UPDATE", [run.id])
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        wait_for(lambda: lock_waiters("tb_run") >= writers)
        holder.rollback()
    for t in threads:
        t.join(60)

    assert errors == []
    daily = list(UsageDaily.objects.all())
    assert len(daily) == writers
    assert sum(d.runs for d in daily) == 1
    earliest = UsageRecord.objects.order_by("created_at", "id").first()
    assert earliest is not None
    assert next(d for d in daily if d.runs).provider == earliest.provider
    assert usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 0}
