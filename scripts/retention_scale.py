"""Measure retention on a seeded database: the Storage page's queries, the dry run, and a full
prune pass (batch durations, rows per second) with a writer on a live run alongside it (its
latency with and without the pass). Prints JSON. Deletes data: point it at a scratch database.

    createdb retention_scale
    DATABASE_URL=postgres://postgres@127.0.0.1/retention_scale manage.py migrate
    DATABASE_URL=... manage.py tidebase_seed --runs 300000 --usage 1500000 --sample-runs 20000
    DATABASE_URL=... .venv/bin/python scripts/retention_scale.py [--batch 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from retention import selectors, services  # noqa: E402
from retention.policy import Policy  # noqa: E402
from tidebase_core.services import runs, state, steps, usage  # noqa: E402

POLICY = {
    "completed_days": 30,
    "failed_days": 60,
    "cancelled_days": 30,
    "usage_days": 20,
    "rollup_days": 60,
    "delivery_days": 7,
    "state_days": None,
    "state_versions": 5,
}


def timed(fn: Callable[[], Any], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


class Writer(threading.Thread):
    """A worker on a live run: step begin + complete, a state write and a usage record, in a loop."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.latencies: list[float] = []
        run = runs.run_create(workflow_name="triage", input={"live": True})
        self.run_id = run.id

    def run(self) -> None:
        _, owner = runs.run_begin(run_id=self.run_id, owner="bench")
        i = 0
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                begun = steps.step_begin(
                    run_id=self.run_id, name=f"s{i}", input_hash="h", input={}, options={}, owner=owner
                )
                assert begun.step is not None
                steps.step_complete(run_id=self.run_id, step_id=begun.step.id, owner=owner, output=i)
                state.state_write(run_id=self.run_id, value={"i": i}, merge=False)
                usage.usage_record(run_id=self.run_id, model="m", input_tokens=10, cost_usd=None)
                self.latencies.append(time.perf_counter() - started)
                i += 1
        finally:
            connection.close()


def writer_during(work: Callable[[], Any]) -> tuple[Any, list[float]]:
    writer = Writer()
    writer.start()
    try:
        result = work()
    finally:
        writer.stop.set()
        writer.join()
    return result, writer.latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    settings.TIDEBASE_RETAIN = POLICY
    policy = Policy.load()
    out: dict[str, Any] = {"policy": POLICY, "batch": args.batch}
    out["tables"] = {t.table: {"rows": t.rows, "bytes": t.bytes} for t in selectors.table_sizes()}
    out["page_ms"] = {
        "table_sizes": timed(selectors.table_sizes),
        "storage_by_workflow": timed(lambda: selectors.storage(policy)),
        "deletions_capped": timed(lambda: selectors.deletions(policy)),
    }
    started = time.perf_counter()
    counts = services.would_delete(policy=policy)
    out["dry_run"] = {
        "seconds": round(time.perf_counter() - started, 2),
        "counts": {k: v.rows for k, v in counts.items()},
    }

    _, idle = writer_during(lambda: time.sleep(10))
    durations: list[float] = []
    original = services._batch

    @contextlib.contextmanager
    def timed_batch(category: str) -> Iterator[Any]:
        began = time.perf_counter()
        with original(category) as cur:
            yield cur
        durations.append(time.perf_counter() - began)

    services._batch = timed_batch  # type: ignore[assignment]
    started = time.perf_counter()
    report, busy = writer_during(lambda: services.prune(policy=policy, batch_size=args.batch))
    elapsed = time.perf_counter() - started
    deleted = sum(report.deleted.values())
    out["prune"] = {
        "seconds": round(elapsed, 1),
        "deleted": report.summary(),
        "rows_per_s": round(deleted / elapsed),
        "transactions": len(durations),
        "transaction_ms": {"p50": pct(durations, 0.5), "p99": pct(durations, 0.99), "max": pct(durations, 1.0)},
        "incomplete": report.incomplete,
    }
    out["live_writer_ms"] = {
        "idle": {"n": len(idle), "p50": pct(idle, 0.5), "p99": pct(idle, 0.99), "max": pct(idle, 1.0)},
        "during_prune": {"n": len(busy), "p50": pct(busy, 0.5), "p99": pct(busy, 0.99), "max": pct(busy, 1.0)},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
