"""Sending rows again: the sweep for rows whose message was lost, and the operator's redelivery."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection, transaction

from tidebase_core.models import DeliveryStatus
from tidebase_core.services.time import db_now
from webhooks.services.kinds import KINDS, TABLES, Kind, OutboxRow, outbox_model

logger = logging.getLogger(__name__)

SWEEP_GRACE_S = 2.0
"""The sweep leaves a due row alone this long, giving its after-commit message time to arrive."""


class DeliveryNotFound(LookupError):
    pass


def _sweep_sql(table: str) -> str:
    return f"""
    WITH due AS (
        SELECT id FROM {table}
        WHERE status = 'pending'
          AND (next_attempt_at IS NULL OR next_attempt_at <= now() - make_interval(secs => %s))
        ORDER BY next_attempt_at NULLS FIRST
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE {table} t SET next_attempt_at = now() + make_interval(secs => %s)
    FROM due WHERE t.id = due.id
    RETURNING t.id, t.attempts
    """


def delivery_sweep(*, limit: int | None = None) -> list[tuple[Kind, str, int]]:
    """Find pending rows that are due but unclaimed (their message was lost, the broker was
    down, or a worker died mid-attempt) and return ``(kind, id, attempts)`` to re-dispatch.
    Each returned row's ``next_attempt_at`` is pushed out by the in-flight horizon, so the next
    sweep does not dispatch it again while the message travels; the claim's compare-and-set
    makes a duplicate message harmless. Short transactions, ``SKIP LOCKED``: overlapping sweeps
    split the work."""
    batch = limit if limit is not None else settings.TIDEBASE_WEBHOOK_SWEEP_BATCH
    found: list[tuple[Kind, str, int]] = []
    for kind in KINDS:
        with transaction.atomic(durable=True), connection.cursor() as cur:
            cur.execute(_sweep_sql(TABLES[kind]), [SWEEP_GRACE_S, batch, settings.TIDEBASE_WEBHOOK_INFLIGHT_S])
            found.extend((kind, str(r[0]), int(r[1])) for r in cur.fetchall())
    return found


@transaction.atomic(durable=True)
def delivery_redeliver(kind: Kind, delivery_id: str, actor: str) -> OutboxRow:
    """Operator redelivery of a dead-lettered (or delivered) row: back to ``pending`` and due
    now; the ``webhook-id`` stays the row id and ``attempts`` keeps counting, so a redelivery is
    one more attempt: if it fails once the retry schedule is exhausted, the row is dead-lettered
    again. ``actor`` is logged and stored as the attempt's trigger. The message goes out after
    commit (the sweep covers a lost one). Raises DeliveryNotFound."""
    if kind not in KINDS:
        raise DeliveryNotFound(f"unknown delivery kind {kind!r}")
    row = outbox_model(kind).objects.select_for_update(of=("self",)).filter(id=delivery_id).first()
    if row is None:
        raise DeliveryNotFound(delivery_id)
    row.status = DeliveryStatus.PENDING
    row.next_attempt_at = db_now()
    row.completed_at = None
    row.save(update_fields=["status", "next_attempt_at", "completed_at"])
    logger.info("webhook.redeliver", extra={"kind": kind, "delivery_id": delivery_id, "actor": actor})
    from webhooks import dispatch  # the Celery side; imported late to keep this module broker-free

    attempts = row.attempts
    transaction.on_commit(
        lambda: dispatch.enqueue(kind, [(delivery_id, attempts)], trigger=f"redeliver:{actor}"), robust=True
    )
    return row
