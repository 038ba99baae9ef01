"""Queues (depth, caps, recent failures) and schedules."""

from __future__ import annotations

from dataclasses import dataclass

from tidebase_core.models import Run, RunStatus, Schedule
from tidebase_core.selectors import queues as core_queues


@dataclass(frozen=True)
class QueueRow:
    name: str
    queued: int
    running: int
    failed: int
    completed: int
    cancelled: int
    concurrency: int | None
    rate_per_minute: int | None
    invoke_url: str | None
    paused: bool
    recent_failures: list[Run]


def queue_overview(*, failures_per_queue: int = 3) -> list[QueueRow]:
    """Depth and caps per queue (one aggregate query) plus each queue's latest failed runs (one
    query per queue, bounded by the number of queues, which is small)."""
    rows = []
    for q in core_queues.queue_stats():
        config = q["config"] or {}
        failures = (
            list(
                Run.objects.filter(queue=q["name"], status=RunStatus.FAILED)
                .only("id", "workflow_name", "error", "failure_class", "updated_at", "status")
                .order_by("-updated_at")[:failures_per_queue]
            )
            if q["failed"]
            else []
        )
        rows.append(
            QueueRow(
                name=q["name"],
                queued=q["queued"],
                running=q["running"],
                failed=q["failed"],
                completed=q["completed"],
                cancelled=q["cancelled"],
                concurrency=config.get("concurrency"),
                rate_per_minute=config.get("ratePerMinute"),
                invoke_url=config.get("invokeUrl"),
                paused=bool(config.get("paused")),
                recent_failures=failures,
            )
        )
    return rows


def schedule_list() -> list[Schedule]:
    return core_queues.schedule_list()
