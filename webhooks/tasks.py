"""Celery tasks. Thin: each calls one service and, at most, publishes a follow-up message."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import connection

from config.celery import app
from tidebase_core import metrics
from tidebase_core.logs import install_celery_task_ids
from tidebase_core.services.reconcile import reconcile_tick
from webhooks import telemetry
from webhooks.dispatch import publish
from webhooks.services.kinds import Kind
from webhooks.services.redelivery import delivery_sweep

logger = logging.getLogger(__name__)
install_celery_task_ids()

RECONCILER_LOCK = 1952735746
"""Session advisory lock of the reconciler (PROTOCOL.md §9, 0x74646202): one tick at a time
across every beat and worker."""
COUNTDOWN_MAX_S = 60.0
"""Retries due sooner than this also get a delayed message; later ones are left to the sweep,
so workers do not hold hours-long ETA messages in memory."""


@app.task(name="tidebase.deliver", ignore_result=True)  # type: ignore[untyped-decorator]
def deliver(kind: Kind, delivery_id: str, expected_attempts: int, trigger: str = "dispatch") -> None:
    delay = telemetry.attempt(kind=kind, delivery_id=delivery_id, expected_attempts=expected_attempts, trigger=trigger)
    if delay is not None and delay <= COUNTDOWN_MAX_S:
        try:
            publish(kind, delivery_id, expected_attempts + 1, "retry", countdown=delay)
        except Exception:  # the sweep sends it when due
            logger.warning("webhook.retry.publish_failed", extra={"delivery_id": delivery_id}, exc_info=True)


def reconcile_locked() -> dict[str, Any] | None:
    """Run one reconciler pass under the session advisory lock; None when another tick holds it.
    The lock is held only for the database pass (no network I/O happens in it)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [RECONCILER_LOCK])
        row = cur.fetchone()
    if not row or not row[0]:
        return None
    try:
        return reconcile_tick()
    finally:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", [RECONCILER_LOCK])


def sweep() -> int:
    """Re-dispatch due rows whose message was lost. Returns how many were dispatched."""
    found = delivery_sweep()
    for kind, delivery_id, attempts in found:
        publish(kind, delivery_id, attempts, "sweep")
    return len(found)


@app.task(name="tidebase.tick", ignore_result=True)  # type: ignore[untyped-decorator]
def tick() -> dict[str, Any]:
    """Beat task, every ``TIDEBASE_RECONCILE_MS``: the reconciler (unless ``TIDEBASE_RECONCILER=0``)
    and then the delivery sweep, which always runs because delivery depends on it. Safe to run
    twice at once: the reconciler is skipped while another tick holds its lock, and overlapping
    sweeps split rows with ``SKIP LOCKED``."""
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if settings.TIDEBASE_RECONCILER:
        try:
            outcome = reconcile_locked()
            result["reconcile"] = "busy" if outcome is None else outcome
        except Exception:
            logger.exception("reconcile.tick.failed")
            result["reconcile"] = "error"
    result["swept"] = sweep()
    metrics.reconciler_ticked(time.perf_counter() - started)
    done = _done(result)
    if done:  # a tick that did nothing (nearly all of them) writes no line
        logger.info("tick: %s", ", ".join(f"{k}={v}" for k, v in done.items()), extra={"tick": done})
    return result


def _done(result: dict[str, Any]) -> dict[str, Any]:
    """The non-zero parts of a tick's result, flattened (``reconcile.leases.requeued``: 2)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif value and value != "busy":  # another tick holding the reconciler lock is routine
            out[prefix] = value

    walk("", result)
    return out
