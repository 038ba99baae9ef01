"""Queue and schedule reads: depth per queue (PROTOCOL.md §10.3) and the schedule list."""

from __future__ import annotations

from typing import Any

from tidebase_core import wire
from tidebase_core.db import fetch_one, fetch_rows
from tidebase_core.models import QueueConfig, Run, RunStatus, Schedule


def queue_stats() -> list[dict[str, Any]]:
    """Counts by status per queue that has runs, plus configured queues with none (§10.3)."""
    rows = fetch_rows(
        """SELECT queue_name AS name,
                  count(*) FILTER (WHERE status = 'queued') AS queued,
                  count(*) FILTER (WHERE status = 'running') AS running,
                  count(*) FILTER (WHERE status = 'failed') AS failed,
                  count(*) FILTER (WHERE status = 'completed') AS completed,
                  count(*) FILTER (WHERE status = 'cancelled') AS cancelled
           FROM tb_run WHERE queue_name IS NOT NULL GROUP BY queue_name ORDER BY queue_name""",
        [],
    )
    configs = {c.name: c for c in QueueConfig.objects.all()}
    out = [
        {
            "name": r.name,
            "queued": r.queued,
            "running": r.running,
            "failed": r.failed,
            "completed": r.completed,
            "cancelled": r.cancelled,
            "config": wire.queue_config_out(configs[r.name]) if r.name in configs else None,
        }
        for r in rows
    ]
    seen = {r.name for r in rows}
    out.extend(
        {
            "name": name,
            "queued": 0,
            "running": 0,
            "failed": 0,
            "completed": 0,
            "cancelled": 0,
            "config": wire.queue_config_out(config),
        }
        for name, config in sorted(configs.items())
        if name not in seen
    )
    return out


def running_in_queue(queue: str) -> int:
    """How many runs of ``queue`` are ``running`` (what a concurrency cap counts)."""
    return Run.objects.filter(queue=queue, status=RunStatus.RUNNING).count()


def claimed_last_minute(queue: str) -> int:
    """How many runs of ``queue`` were claimed in the last 60 seconds (what a rate cap counts)."""
    row = fetch_one(
        "SELECT count(*) AS n FROM tb_run WHERE queue_name = %s AND claimed_at > now() - interval '60 seconds'",
        [queue],
    )
    return int(row.n) if row else 0


def schedule_list() -> list[Schedule]:
    """Every schedule, by name."""
    return list(Schedule.objects.order_by("name"))
