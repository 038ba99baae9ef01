"""A first step begin commits without waiting for the WAL flush; a complete always waits
(docs/decisions.md, "Step begins commit asynchronously"). The setting is local to the begin's
own transaction: it never leaks to the pooled connection, nor into a caller's transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction

from tidebase_core.db import jsonb
from tidebase_core.ids import step_id
from tidebase_core.services import runs, steps

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


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


@pytest.mark.parametrize(("commit", "inside"), [("off", "off"), (None, "on")])
def test_the_begin_statement_sets_the_commit_mode_of_its_own_transaction(commit: str | None, inside: str) -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(steps.BEGIN_SQL, begin_params(run.id, owner, commit))
        assert setting() == inside
    assert setting() == "on"


def test_a_begin_in_autocommit_does_not_leak_the_setting_to_the_connection() -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    result = steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner)
    assert result.action == "execute"
    assert setting() == "on"


def test_inside_a_callers_transaction_the_begin_leaves_the_commit_mode_alone() -> None:
    run = runs.run_create(workflow_name="wf")
    _, owner = runs.run_begin(run_id=run.id, owner="w")
    with transaction.atomic():
        assert steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner).step
        assert setting() == "on"  # the caller's other writes stay durable


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
