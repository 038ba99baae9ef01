"""Runs made through the real services, then aged with the database clock (created, finished
and usage times moved back by whole days), and the retention policy set per test."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from retention.conf import FIELDS
from tidebase_core import outbox
from tidebase_core.models import Run
from tidebase_core.services import gates, runs, state, steps, usage
from tidebase_core.services.time import db_now

_names = itertools.count(1)


@pytest.fixture(autouse=True)
def _no_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outbox rows stay in Postgres: nothing is published to a broker from these tests."""
    monkeypatch.setattr(outbox, "_dispatchers", [])


@pytest.fixture
def retain(settings: Any) -> Iterator[Any]:
    """``retain(completed_days=3, ...)`` sets the environment defaults; the rest keep forever."""

    def set_policy(**values: int | None) -> None:
        settings.TIDEBASE_RETAIN = {f: values.get(f) for f in FIELDS}

    set_policy()
    return set_policy


def make_run(
    workflow: str = "report",
    *,
    status: str = "completed",
    days: float = 0,
    steps_n: int = 2,
    usage_n: int = 1,
    state_n: int = 1,
    gate: bool = False,
) -> str:
    """A run with steps, state versions and usage records, finished as ``status`` ("running"
    leaves it running), then made ``days`` old: created a day before it finished. Its usage is
    recorded ``days`` ago (so the daily rollups hold it on that day)."""
    spent_at = db_now() - dt.timedelta(days=days)
    run = runs.run_create(workflow_name=workflow, input={"n": next(_names)})
    _, owner = runs.run_begin(run_id=run.id, owner="worker-1")
    for i in range(steps_n):
        begun = steps.step_begin(
            run_id=run.id, name=f"step-{i}", input_hash="h", input={"i": i}, options={}, owner=owner
        )
        assert begun.step is not None
        steps.step_complete(run_id=run.id, step_id=begun.step.id, owner=owner, output={"i": i})
    for i in range(state_n):
        state.state_write(run_id=run.id, value={"k": i}, merge=False)
    for _ in range(usage_n):
        usage.usage_record(
            run_id=run.id,
            provider="openai",
            model="gpt-4o",
            input_tokens=100,
            output_tokens=20,
            cost_usd=Decimal("0.0100000000"),
            at=spent_at,
        )
    if gate:
        gates.gate_begin(run_id=run.id, name="approve", prompt="Ship it?")
    if status == "completed":
        runs.run_complete(run_id=run.id, result={"ok": True})
    elif status == "failed":
        runs.run_fail(run_id=run.id, error={"message": "boom"})
    elif status == "cancelled":
        runs.run_cancel(run_id=run.id, reason="test")
    if days:
        age(run.id, days)
    return run.id


def age(run_id: str, days: float) -> None:
    """Move the run's finish (and last change) ``days`` back, its creation a day further, and
    its state versions with it."""
    with connection.cursor() as cur:
        cur.execute(
            """UPDATE tb_run SET created_at = now() - (%s + 1) * interval '1 day',
                   updated_at = now() - %s * interval '1 day',
                   completed_at = CASE WHEN completed_at IS NULL THEN NULL ELSE now() - %s * interval '1 day' END
               WHERE id = %s""",
            [days, days, days, run_id],
        )
        cur.execute(
            "UPDATE tb_state_version SET created_at = created_at - %s * interval '1 day' WHERE run_id = %s",
            [days, run_id],
        )


def exists(run_id: str) -> bool:
    return Run.objects.filter(id=run_id).exists()


def rows_of(run_id: str) -> dict[str, int]:
    """Rows each run-owned table holds for the run."""
    out = {}
    with connection.cursor() as cur:
        for table in (
            "tb_step",
            "tb_event",
            "tb_gate",
            "tb_usage",
            "tb_usage_run",
            "tb_run_state",
            "tb_state_stream",
            "tb_state_version",
            "tb_channel",
            "tb_channel_delivery",
            "tb_recovery_attempt",
        ):
            cur.execute(f"SELECT count(*) FROM {table} WHERE run_id = %s", [run_id])
            row = cur.fetchone()
            out[table] = int(row[0]) if row else 0
    return out
