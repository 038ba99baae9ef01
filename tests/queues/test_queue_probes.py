"""Queue invariants under real concurrency: threads with their own Postgres connections."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from tidebase_core.models import Event, Run, Schedule
from tidebase_core.services import queues, schedules
from tidebase_core.services.runs import run_complete
from tidebase_core.services.time import db_now

pytestmark = pytest.mark.django_db(transaction=True)


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` on ``n`` threads released together; each thread has its own connection."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_enqueue__16_concurrent_with_one_dedupe_key_make_one_run() -> None:
    for round_ in range(10):
        key = f"k{round_}"
        results = race(16, lambda i, key=key: queues.enqueue(queue="q", workflow_name="wf", dedupe_key=key))
        ids = {run.id for run, _ in results}
        assert len(ids) == 1
        assert sum(1 for _, dedup in results if not dedup) == 1
    assert Run.objects.filter(queue="q").count() == 10
    assert Event.objects.filter(type="run.enqueued").count() == 10


def test_enqueue__a_terminal_run_frees_its_dedupe_key() -> None:
    first, _ = queues.enqueue(queue="q", workflow_name="wf", dedupe_key="once")
    run_complete(run_id=first.id, result=None)
    second, dedup = queues.enqueue(queue="q", workflow_name="wf", dedupe_key="once")
    assert not dedup
    assert second.id != first.id


def test_claim__8_competing_claimers_get_disjoint_runs_within_the_concurrency_cap() -> None:
    queues.queue_configure(name="capped", concurrency=3)
    for _ in range(20):
        queues.enqueue(queue="capped", workflow_name="wf")
    results = race(8, lambda i: queues.claim(queues=["capped"], limit=2)[0])
    claimed = [run.id for rows in results for run in rows]
    assert len(claimed) == len(set(claimed))  # disjoint
    assert len(claimed) == 3  # never above the cap
    assert Run.objects.filter(queue="capped", status="running").count() == 3
    # Finishing one frees one slot, and only one.
    run_complete(run_id=claimed[0], result=None)
    again = race(8, lambda i: queues.claim(queues=["capped"], limit=2)[0])
    assert sum(len(rows) for rows in again) == 1


def test_claim__rate_cap_limits_claims_per_minute_across_claimers() -> None:
    queues.queue_configure(name="rated", rate_per_minute=5)
    for _ in range(20):
        queues.enqueue(queue="rated", workflow_name="wf")
    results = race(8, lambda i: queues.claim(queues=["rated"], limit=3)[0])
    claimed = [run.id for rows in results for run in rows]
    assert len(claimed) == len(set(claimed)) == 5


def test_claim__highest_priority_then_oldest_and_not_before_run_at() -> None:
    low, _ = queues.enqueue(queue="p", workflow_name="wf", priority=0)
    high, _ = queues.enqueue(queue="p", workflow_name="wf", priority=9)
    queues.enqueue(queue="p", workflow_name="wf", priority=99, delay_ms=3_600_000)  # not ready
    rows, owner = queues.claim(queues=["p"], limit=5)
    assert [r.id for r in rows] == [high.id, low.id]
    assert all(r.lease_owner == owner and r.status == "running" for r in rows)


def test_schedules__two_racing_ticks_enqueue_a_due_schedule_once() -> None:
    for round_ in range(10):
        name = f"s{round_}"
        schedules.schedule_set(name=name, cron="* * * * *", workflow_name="wf")
        # The database clock, read before the ticks: "due" and "past now" are relative to it, and
        # a minute may turn between a tick and the assertion on a slow machine.
        before = db_now()
        Schedule.objects.filter(name=name).update(next_run_at=before - dt.timedelta(hours=1))
        fired = race(2, lambda i: schedules.schedules_fire_due())
        assert sum(fired) == 1
        assert Run.objects.filter(metadata__schedule=name).count() == 1
        schedule = Schedule.objects.get(name=name)
        assert schedule.next_run_at is not None
        assert schedule.next_run_at > before  # moved past the tick's now (which is >= before)
