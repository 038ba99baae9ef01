"""The reconciler's database work (PROTOCOL.md §9), one idempotent pass at a time.

The Celery beat task in ``webhooks`` calls ``reconcile_tick`` while holding the reconciler's
session advisory lock, so two overlapping ticks never run it concurrently; each duty is also
safe on its own under concurrency (row locks, compare-and-set), so a tick racing with API
requests cannot double-act. No network I/O happens here: webhooks are outbox rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from tidebase_core import protocol
from tidebase_core.db import fetch_rows
from tidebase_core.models import RecoveryAttempt, Run, RunStatus
from tidebase_core.services import approvals, budgets, push, schedules, sla
from tidebase_core.services.events import event_append
from tidebase_core.services.gates import gate_expire_due
from tidebase_core.services.runs import recovery_record
from tidebase_core.services.time import db_now

logger = logging.getLogger(__name__)

RESUME_THROTTLE = dt.timedelta(seconds=60)
"""At most one ``lease_expired`` recovery webhook per run per minute (any recovery attempt counts)."""

BATCH = 100


@transaction.atomic(durable=True)
def _expire_one(run_id: str) -> str | None:
    """Handle one run whose lease has expired; re-checked under the row lock."""
    run = Run.objects.select_for_update(no_key=True).filter(id=run_id).first()
    now = db_now()
    if run is None or run.status != RunStatus.RUNNING or run.lease_expires_at is None or run.lease_expires_at > now:
        return None
    if run.queue is not None:
        run.lease_owner = None
        run.lease_expires_at = None
        if run.attempt < run.max_attempts:
            run.status = RunStatus.QUEUED
            run.run_at = now + dt.timedelta(milliseconds=protocol.requeue_backoff_ms(run.attempt))
            run.save(update_fields=["status", "lease_owner", "lease_expires_at", "run_at", "updated_at"])
            event_append(
                run_id=run.id,
                type="run.requeued",
                payload={"reason": "lease_expired", "attempt": run.attempt, "maxAttempts": run.max_attempts},
            )
            return "requeued"
        run.status = RunStatus.FAILED
        run.failure_class = "max_retries"
        run.error = {"message": "lease expired with no attempts remaining"}
        run.save(update_fields=["status", "lease_owner", "lease_expires_at", "failure_class", "error", "updated_at"])
        event_append(
            run_id=run.id, type="run.failed", payload={"failureClass": "max_retries", "reason": "lease_expired"}
        )
        return "failed"
    if run.recovery_webhook:
        recent = RecoveryAttempt.objects.filter(run=run, created_at__gt=now - RESUME_THROTTLE).exists()
        if not recent:
            recovery_record(run, reason="lease_expired")
            return "resumed"
    return None


def expire_leases(*, limit: int = BATCH) -> dict[str, int]:
    """Expired run leases of queue runs (requeue with backoff, or fail ``max_retries``) and of
    runs with a recovery webhook (a throttled ``run.resume``). Plain runs are left alone: they
    stay ``running`` until someone begins them again."""
    rows = fetch_rows(
        """SELECT id FROM tb_run WHERE status = 'running' AND lease_expires_at < now()
           AND (queue_name IS NOT NULL OR recovery_webhook IS NOT NULL)
           ORDER BY lease_expires_at LIMIT %s""",
        [limit],
    )
    counts: dict[str, int] = {}
    for row in rows:
        outcome = _expire_one(row.id)
        if outcome:
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


@transaction.atomic(durable=True)
def _deadline_cancel_one(run_id: str) -> bool:
    run = Run.objects.select_for_update(no_key=True).filter(id=run_id).first()
    now = db_now()
    if run is None or run.status not in (RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING):
        return False
    if run.deadline_at is None or run.deadline_at >= now:
        return False
    run.status = RunStatus.CANCELLED
    run.cancel_reason = "deadline"
    run.cancel_actor = "reconciler"
    run.cancel_requested_at = run.cancel_requested_at or now
    run.cancelled_at = now
    run.completed_at = now
    run.lease_owner = None
    run.lease_expires_at = None
    run.save(
        update_fields=[
            "status",
            "cancel_reason",
            "cancel_actor",
            "cancel_requested_at",
            "cancelled_at",
            "completed_at",
            "lease_owner",
            "lease_expires_at",
            "updated_at",
        ]
    )
    event_append(run_id=run.id, type="run.cancelled", payload={"reason": "deadline", "actor": "reconciler"})
    return True


def cancel_past_deadline(*, limit: int = BATCH) -> int:
    """Cancel active runs past their ``deadlineAt`` (reason ``deadline``, actor ``reconciler``)."""
    rows = fetch_rows(
        """SELECT id FROM tb_run WHERE status IN ('pending', 'queued', 'running') AND deadline_at < now()
           ORDER BY deadline_at LIMIT %s""",
        [limit],
    )
    return sum(1 for row in rows if _deadline_cancel_one(row.id))


def reconcile_tick() -> dict[str, Any]:
    """One reconciler pass. Each duty is isolated: a failure is logged and the others run."""
    result: dict[str, Any] = {}
    duties: dict[str, Callable[[], Any]] = {
        "leases": expire_leases,
        "deadlines": cancel_past_deadline,
        "schedules": schedules.schedules_fire_due,
        "push": push.push_dispatch_due,
        "gate_timeouts": gate_expire_due,
        "gate_sla": sla.sla_tick,  # a policy's reminders, escalations and expiries
        "used_nonces": approvals.nonces_prune,  # spent one-click links and Slack requests, once expired
        "budget_periods": budgets.lift_ended_periods,  # a run parked at yesterday's budget goes on
    }
    for name, duty in duties.items():
        try:
            result[name] = duty()
        except Exception:
            logger.exception("reconcile.duty.failed", extra={"duty": name})
            result[name] = "error"
    return result
