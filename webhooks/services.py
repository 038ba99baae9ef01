"""Delivering outbox rows (``ChannelDelivery``, ``RecoveryAttempt``): claim, send, record.

The database holds the retry state; Celery messages only say "look at this row now".

1. **Claim** (``delivery_claim``): one short transaction locks the row with ``FOR UPDATE SKIP
   LOCKED`` and bumps ``attempts`` with a compare-and-set on the value the message carried, so each
   attempt number is sent by at most one worker. ``next_attempt_at`` moves to now +
   ``TIDEBASE_WEBHOOK_INFLIGHT_S``: if the worker dies mid-attempt, the sweep sends the next
   attempt after that horizon, with the same ``webhook-id``. The attempt is logged
   (``DeliveryAttempt``) before any network I/O.
2. **Send** (``delivery_send``): outside any transaction, through the SSRF guard, with a connect
   timeout and a total deadline, never following redirects.
3. **Record** (``delivery_record``): the attempt's outcome, then either ``delivered``, a retry at
   now + backoff, or dead-lettered ``failed``. Recovery rows append ``recovery.delivered`` /
   ``recovery.failed`` on their final outcome.

``delivery_sweep`` finds rows whose message was lost (due and unclaimed) and re-dispatches them;
``delivery_redeliver`` is the operator's "send it again".
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpcore
import httpx
import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, TextField, Value, When

from tidebase_core.models import ChannelDelivery, RecoveryAttempt
from tidebase_core.services.events import event_append
from tidebase_core.services.time import db_now
from webhooks import signing
from webhooks.models import DeliveryAttempt
from webhooks.ssrf import AddressPolicy, BlockedAddress, Deadline, GuardedBackend

logger = logging.getLogger(__name__)

Kind = Literal["channel", "recovery"]
KINDS: tuple[Kind, ...] = ("channel", "recovery")
TABLES: dict[Kind, str] = {"channel": "tb_channel_delivery", "recovery": "tb_recovery_attempt"}

RESPONSE_EXCERPT_CHARS = 8000
"""Stored response body (PROTOCOL.md §8: truncated to 8000 chars)."""
RESPONSE_READ_CAP = 64 * 1024
"""Bytes read from a response at most; the rest is discarded unread."""
RECOVERY_USER_AGENT = "tidebase-recovery/0.5.0"
CHANNEL_USER_AGENT = "tidebase-channel/0.3.0"
RETRY_AFTER_MAX_S = 24 * 3600.0
"""A receiver's ``Retry-After`` is honoured up to a day."""
JITTER = 0.1
"""Each retry delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]."""
SWEEP_GRACE_S = 2.0
"""The sweep leaves a due row alone this long, giving its after-commit message time to arrive."""
PERMANENT_ERRORS = frozenset({"blocked_address", "invalid_url"})
"""Errors that no retry can fix: dead-lettered at once."""


class DeliveryNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Message:
    url: str
    body: bytes
    secret: str | None
    previous_secrets: tuple[str, ...]
    user_agent: str


@dataclass(frozen=True)
class Claim:
    kind: Kind
    delivery_id: str
    number: int
    message: Message


@dataclass(frozen=True)
class Outcome:
    latency_ms: int
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    @property
    def permanent(self) -> bool:
        return self.error in PERMANENT_ERRORS or self.http_status == 410


def _model(kind: Kind) -> type[ChannelDelivery] | type[RecoveryAttempt]:
    return ChannelDelivery if kind == "channel" else RecoveryAttempt


def compact_json(value: object) -> bytes:
    return orjson.dumps(value)


def build_message(kind: Kind, row: ChannelDelivery | RecoveryAttempt) -> Message:
    """The exact request for ``row`` (PROTOCOL.md §8.1/§8.2 bodies, compact JSON in key order).
    Recovery and invoke bodies carry ``run.attempt`` as it is now; channel deliveries are signed
    with the channel's own secret, recovery/invoke with ``TIDEBASE_WEBHOOK_SECRET``."""
    if isinstance(row, RecoveryAttempt):
        run = row.run
        body = {
            "type": row.type,
            "runId": run.id,
            "workflowName": run.workflow_name,
            "reason": row.reason,
            "attempt": run.attempt,
        }
        return Message(
            url=row.webhook_url,
            body=compact_json(body),
            secret=settings.TIDEBASE_WEBHOOK_SECRET,
            previous_secrets=tuple(settings.TIDEBASE_WEBHOOK_SECRET_PREVIOUS),
            user_agent=RECOVERY_USER_AGENT,
        )
    body = {
        "type": row.event_type,
        "runId": row.run_id,
        "gateId": row.gate_id,
        "deliveryId": row.id,
        "payload": row.payload,
    }
    return Message(
        url=row.url, body=compact_json(body), secret=row.secret, previous_secrets=(), user_agent=CHANNEL_USER_AGENT
    )


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
    row: ChannelDelivery | RecoveryAttempt
    if kind == "recovery":
        row = RecoveryAttempt.objects.select_related("run").get(id=delivery_id)
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
        url=message.url,
        started_at=now,
        worker=worker_name()[:120],
    )
    return Claim(kind=kind, delivery_id=delivery_id, number=number, message=message)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle costs tens of milliseconds of CPU,
    far too much to pay per attempt. SSLContext is safe to share between threads."""
    return httpx.create_ssl_context()


def _policy() -> AddressPolicy:
    return AddressPolicy.from_entries(settings.TIDEBASE_WEBHOOK_ALLOW_HOSTS)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def delivery_send(
    claim: Claim,
    *,
    policy: AddressPolicy | None = None,
    connect_timeout_s: float | None = None,
    total_timeout_s: float | None = None,
) -> Outcome:
    """POST one attempt. Never raises for network trouble: every failure is an ``Outcome`` with
    an ``error``. Must run outside any transaction (it may take up to the total timeout)."""
    message = claim.message
    total = total_timeout_s if total_timeout_s is not None else settings.TIDEBASE_WEBHOOK_TIMEOUT_S
    connect = connect_timeout_s if connect_timeout_s is not None else settings.TIDEBASE_WEBHOOK_CONNECT_TIMEOUT_S
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    parts = urlsplit(message.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Outcome(latency_ms=0, error="invalid_url")
    headers = {
        "content-type": "application/json",
        "user-agent": message.user_agent,
        "x-tidebase-delivery-attempt": str(claim.number),
        **signing.sign_headers(
            msg_id=claim.delivery_id,
            timestamp=int(time.time()),
            body=message.body,
            secret=message.secret,
            previous=message.previous_secrets,
        ),
    }
    deadline = Deadline.after(total)
    transport = httpx.HTTPTransport(verify=_ssl_context(), retries=0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=1,
        network_backend=GuardedBackend(policy or _policy(), deadline),
    )
    timeout = httpx.Timeout(total, connect=min(connect, total))
    try:
        with (
            httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", message.url, content=message.body, headers=headers) as response,
        ):
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= RESPONSE_READ_CAP:
                    break
            text = b"".join(chunks)[:RESPONSE_READ_CAP].decode("utf-8", errors="replace")
            return Outcome(
                latency_ms=elapsed(),
                http_status=response.status_code,
                response=text[:RESPONSE_EXCERPT_CHARS],
                retry_after_s=None if response.is_success else _retry_after(response.headers.get("retry-after")),
            )
    except BlockedAddress:
        return Outcome(latency_ms=elapsed(), error="blocked_address")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return Outcome(latency_ms=elapsed(), error="invalid_url")
    except httpx.TimeoutException as exc:
        return Outcome(latency_ms=elapsed(), error=f"timeout: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return Outcome(latency_ms=elapsed(), error=f"{type(exc).__name__}: {exc}"[:1000])


def retry_delay(
    number: int, schedule: Sequence[float], *, retry_after_s: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Seconds before the attempt after attempt ``number`` (1-based), or None when the schedule
    is exhausted. Jittered by ±``JITTER``; a ``Retry-After`` longer than the schedule wins."""
    if number > len(schedule):
        return None
    delay = schedule[number - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_MAX_S))
    return delay


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
    row = _model(claim.kind).objects.select_for_update(of=("self",)).filter(id=claim.delivery_id).first()
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
    if row is None or row.status != "pending":
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
    row.status = "delivered" if outcome.ok else "failed"
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
def delivery_redeliver(kind: Kind, delivery_id: str, actor: str) -> ChannelDelivery | RecoveryAttempt:
    """Operator redelivery of a dead-lettered (or delivered) row: back to ``pending`` and due
    now; the ``webhook-id`` stays the row id and ``attempts`` keeps counting, so a redelivery is
    one more attempt: if it fails once the retry schedule is exhausted, the row is dead-lettered
    again. ``actor`` is logged and stored as the attempt's trigger. The message goes out after
    commit (the sweep covers a lost one). Raises DeliveryNotFound."""
    if kind not in KINDS:
        raise DeliveryNotFound(f"unknown delivery kind {kind!r}")
    row = _model(kind).objects.select_for_update(of=("self",)).filter(id=delivery_id).first()
    if row is None:
        raise DeliveryNotFound(delivery_id)
    row.status = "pending"
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
