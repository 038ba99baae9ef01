"""A first step begin commits without waiting for the WAL flush; a complete always waits
(docs/decisions.md, "Step begins commit asynchronously"). The setting is local to the begin's
own transaction: it never leaks to the pooled connection, nor into a caller's transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction

from tidebase_core.api import events
from tidebase_core.db import flush_barrier, jsonb
from tidebase_core.ids import step_id
from tidebase_core.services import runs, steps

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def default() -> str:
    """The server's own setting (``on`` unless an operator tuned it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'")
        value: str = cursor.fetchone()[0]
    return value


def setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        value: str = cursor.fetchone()[0]
    return value


def begin_params(run_id: str, owner: str, commit: str | None) -> dict[str, Any]:
    return {
        "run": run_id,
        "name": "s",
        "hash": "h",
        "step_id": step_id(),
        "input": jsonb({}),
        "options": jsonb({}),
        "contract": jsonb({}),
        "payload": jsonb({}),
        "explicit": True,
        "commit": commit,
        "owner": owner,
        "lease": 60000,
        "half": 30000,
    }


@pytest.mark.parametrize("commit", ["off", None])
def test_the_begin_statement_sets_the_commit_mode_of_its_own_transaction(commit: str | None) -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(steps.BEGIN_SQL, begin_params(run.id, owner, commit))
        assert setting() == (commit or default())
    assert setting() == default()


def test_a_begin_in_autocommit_does_not_leak_the_setting_to_the_connection() -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    result = steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner)
    assert result.action == "execute"
    assert setting() == default()


def test_inside_a_callers_transaction_the_begin_leaves_the_commit_mode_alone() -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    with transaction.atomic():
        assert steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner).step
        assert setting() == default()  # the caller's other writes keep their durability


@pytest.mark.parametrize(("sync", "commit"), [(False, "off"), (True, None)])
def test_durable_begins_can_be_asked_for(
    settings: Any, monkeypatch: pytest.MonkeyPatch, sync: bool, commit: str | None
) -> None:
    settings.TIDEBASE_STEP_BEGIN_SYNC_COMMIT = sync
    sent: list[dict[str, Any]] = []
    real = steps.fetch_prepared

    def spy(sql: str, params: dict[str, Any], *args: Any) -> Any:
        sent.append(params)
        return real(sql, params, *args)

    monkeypatch.setattr(steps, "fetch_prepared", spy)
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner)
    assert sent[0]["commit"] == commit


def lsn(function: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}() - '0/0'::pg_lsn")
        value: int = int(cursor.fetchone()[0])
    return value


def test_the_flush_barrier_returns_once_every_earlier_commit_is_on_disk() -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner)
    written = lsn("pg_current_wal_insert_lsn")  # at or past the begin's commit record
    flush_barrier()
    assert lsn("pg_current_wal_flush_lsn") >= written


def test_the_event_stream_sends_a_batch_only_after_the_flush_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    run = runs.run_create(workflow_name="wf")
    order: list[str] = []
    monkeypatch.setattr(events, "flush_barrier", lambda: order.append("barrier"))
    poll = events._poll(run.id, 0)  # what the stream sends next, under WSGI and the gateway alike
    chunk = poll()
    order.append("sent")
    assert chunk is not None
    assert b"run.created" in chunk
    assert order == ["barrier", "sent"]
    assert poll() is None  # nothing new: no barrier needed
