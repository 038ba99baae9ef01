"""One attempt's life in the database: claimed (compare-and-set, logged before any network
I/O), then its outcome recorded (delivered, retried later, or dead-lettered)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Sequence

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, TextField, Value, When

from tidebase_core.models import ChannelDelivery, DeliveryStatus, Notification, RecoveryAttempt
from tidebase_core.services.events import event_append
from tidebase_core.services.time import db_now
from webhooks.models import DeliveryAttempt
from webhooks.services.kinds import TABLES, Kind, OutboxRow, outbox_model
from webhooks.services.messages import Claim, build_message
from webhooks.services.retries import retry_delay
from webhooks.services.sending import Outcome, delivery_send

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _claim_sql(table: str) -> str:
    return f"""
    WITH c AS (
        SELECT id FROM {table} WHERE id = %s AND status = 'pending' AND attempts = %s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE {table} t SET attempts = t.attempts + 1, next_attempt_at = now() + make_interval(secs => %s)
    FROM c WHERE t.id = c.id AND t.attempts = %s
    RETURNING t.attempts, now()
    """


@transaction.atomic(durable=True)
def delivery_claim(*, kind: Kind, delivery_id: str, expected_attempts: int, trigger: str) -> Claim | None:
    """Claim attempt ``expected_attempts + 1`` of a pending row, or return None when the row is
    gone, final, locked by another claimer, or already past that attempt (a duplicate or stale
    message). Marks earlier attempts that never finished (their worker died) ``interrupted`` and
    logs the new attempt. Takes the row lock for this short transaction only."""
    with connection.cursor() as cur:
        cur.execute(
            _claim_sql(TABLES[kind]),
            [delivery_id, expected_attempts, settings.TIDEBASE_WEBHOOK_INFLIGHT_S, expected_attempts],
        )
        got = cur.fetchone()
    if got is None:
        return None
    number, now = int(got[0]), got[1]
    row: OutboxRow
    if kind == "recovery":
        row = RecoveryAttempt.objects.select_related("run").get(id=delivery_id)
    elif kind == "notification":
        row = Notification.objects.select_related("gate__run", "gate__policy", "user").get(id=delivery_id)
    else:
        row = ChannelDelivery.objects.get(id=delivery_id)
    message = build_message(kind, row)
    DeliveryAttempt.objects.filter(kind=kind, delivery_id=delivery_id, finished_at__isnull=True).update(
        finished_at=now, interrupted_at=now, error="interrupted"
    )
    DeliveryAttempt.objects.create(
        kind=kind,
        delivery_id=delivery_id,
        number=number,
        trigger=trigger[:80],
        url=message.shown_url,
        started_at=now,
        worker=worker_name()[:120],
    )
    return Claim(kind=kind, delivery_id=delivery_id, number=number, message=message)


@transaction.atomic(durable=True)
def delivery_record(claim: Claim, outcome: Outcome, *, schedule: Sequence[float] | None = None) -> float | None:
    """Record the outcome of a claimed attempt; return the retry delay in seconds when another
    attempt is scheduled, else None. A 2xx marks the row ``delivered`` even when a newer attempt
    has been claimed meanwhile (a success is a fact); a failure only reschedules when this is still
    the row's latest attempt. Final outcomes of recovery rows append ``recovery.delivered`` or
    ``recovery.failed``.

    An attempt a later claim already marked ``interrupted`` (it outlived the in-flight horizon)
    keeps the mark: its late outcome is logged beside it. Locks in the claim's order, the outbox
    row first, then the attempt row (then, for events, the run row): the other order deadlocks
    with a claim marking this very attempt interrupted."""
    now = db_now()
    row = outbox_model(claim.kind).objects.select_for_update(of=("self",)).filter(id=claim.delivery_id).first()
    DeliveryAttempt.objects.filter(kind=claim.kind, delivery_id=claim.delivery_id, number=claim.number).update(
        finished_at=now,
        latency_ms=outcome.latency_ms,
        http_status=outcome.http_status,
        error=Case(
            When(interrupted_at__isnull=False, then=F("error")),
            default=Value(outcome.error, output_field=TextField()),
        ),
        response_excerpt=outcome.response,
    )
    if row is None or row.status != DeliveryStatus.PENDING:
        return None
    if not outcome.ok and row.attempts != claim.number:
        return None
    row.http_status = outcome.http_status
    row.response_body = outcome.response
    row.error_text = outcome.error
    fields = ["http_status", "response_body", "error_text", "next_attempt_at"]
    delay = None
    if not outcome.ok and not outcome.permanent:
        delay = retry_delay(
            claim.number,
            settings.TIDEBASE_WEBHOOK_RETRY_SCHEDULE if schedule is None else schedule,
            retry_after_s=outcome.retry_after_s,
        )
    if delay is not None:
        row.next_attempt_at = now + dt.timedelta(seconds=delay)
        row.save(update_fields=fields)
        return delay
    row.status = DeliveryStatus.DELIVERED if outcome.ok else DeliveryStatus.FAILED
    row.next_attempt_at = None
    row.completed_at = now
    row.save(update_fields=[*fields, "status", "completed_at"])
    if isinstance(row, RecoveryAttempt):
        payload: dict[str, object] = {"recoveryAttemptId": row.id}
        if outcome.http_status is not None:
            payload["httpStatus"] = outcome.http_status
        else:
            payload["error"] = outcome.error
        event_type = "recovery.delivered" if outcome.ok else "recovery.failed"
        event_append(run_id=row.run_id, type=event_type, payload=payload)
    if not outcome.ok:
        logger.warning(
            "webhook.dead_lettered",
            extra={"kind": claim.kind, "delivery_id": claim.delivery_id, "attempts": claim.number},
        )
    return None


def delivery_attempt(*, kind: Kind, delivery_id: str, expected_attempts: int, trigger: str) -> float | None:
    """Claim, send and record one attempt (the Celery task's body). Returns the retry delay when
    a further attempt is scheduled. No transaction is open while the request is in flight."""
    claim = delivery_claim(kind=kind, delivery_id=delivery_id, expected_attempts=expected_attempts, trigger=trigger)
    if claim is None:
        return None
    outcome = delivery_send(claim)
    return delivery_record(claim, outcome)
