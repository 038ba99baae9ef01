"""Queues (PROTOCOL.md §10): enqueue with dedupe, pull claims under the queue caps, and queue
configuration. Tidebase decides *when* a run may execute; it never executes it. Schedules are in
``services.schedules``, push invitations in ``services.push``, reads in ``selectors.queues``."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from tidebase_core import ids, wire
from tidebase_core.db import RUN_JSON, Row, fetch_one, fetch_rows, jsonb
from tidebase_core.exceptions import InvalidRequest
from tidebase_core.models import QueueConfig, Run, RunStatus
from tidebase_core.realtime import QUEUE_CHANNEL
from tidebase_core.selectors.queues import claimed_last_minute, running_in_queue
from tidebase_core.services.events import event_append
from tidebase_core.services.idempotency import claim_key
from tidebase_core.services.runs import insert_channels

# --- enqueue ------------------------------------------------------------------------------------

ENQUEUE_SQL = """
INSERT INTO tb_run (id, workflow_name, input, metadata, status, recovery_webhook, attempt, event_seq,
                    queue_name, dedupe_key, priority, run_at, max_attempts, deadline_at, budget_usd, started_by,
                    created_at, updated_at)
VALUES (%(id)s, %(wf)s, %(input)s, %(metadata)s, 'queued', %(webhook)s, 0, 0, %(queue)s, %(dedupe)s,
        %(priority)s, COALESCE(%(run_at)s, now() + %(delay_ms)s * interval '1 millisecond'), %(max_attempts)s,
        CASE WHEN %(deadline_ms)s::bigint IS NULL THEN NULL ELSE now() + %(deadline_ms)s * interval '1 millisecond' END,
        %(budget)s::numeric, %(started_by)s, now(), now())
ON CONFLICT (queue_name, dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
DO NOTHING
RETURNING *, queue_name AS queue
"""


def enqueue(
    *,
    queue: str,
    workflow_name: str,
    input: Any = None,
    metadata: dict[str, Any] | None = None,
    recovery_webhook: str | None = None,
    channels: list[dict[str, Any]] | None = None,
    dedupe_key: str | None = None,
    delay_ms: int | None = None,
    run_at: dt.datetime | None = None,
    max_attempts: int = 1,
    priority: int = 0,
    deadline_ms: int | None = None,
    idempotency: tuple[str, str] | None = None,
    budget_usd: Decimal | None = None,
    started_by: str | None = None,
) -> tuple[Row | Run, bool]:
    """Insert a ``queued`` run, or return the active run holding ``(queue, dedupe_key)``.

    The partial unique index on active dedupe keys settles concurrent enqueues: one insert
    wins, the others get the winner. If the holder turns terminal between our conflict and
    our lookup, the insert is simply retried (upstream answers 500 there). Returns
    ``(run, deduplicated)``; emits ``run.enqueued`` for new runs only."""
    for _ in range(5):
        result = _enqueue_once(
            queue=queue,
            workflow_name=workflow_name,
            input=input,
            metadata=metadata,
            recovery_webhook=recovery_webhook,
            channels=channels,
            dedupe_key=dedupe_key,
            delay_ms=delay_ms,
            run_at=run_at,
            max_attempts=max_attempts,
            priority=priority,
            deadline_ms=deadline_ms,
            idempotency=idempotency,
            budget_usd=budget_usd,
            started_by=started_by,
        )
        if result is not None:
            return result
    raise InvalidRequest("dedupe key is contended; retry", field="dedupeKey")  # pragma: no cover


@transaction.atomic(durable=True)
def _enqueue_once(
    *,
    queue: str,
    workflow_name: str,
    input: Any,
    metadata: dict[str, Any] | None,
    recovery_webhook: str | None,
    channels: list[dict[str, Any]] | None,
    dedupe_key: str | None,
    delay_ms: int | None,
    run_at: dt.datetime | None,
    max_attempts: int,
    priority: int,
    deadline_ms: int | None,
    idempotency: tuple[str, str] | None,
    budget_usd: Decimal | None = None,
    started_by: str | None = None,
) -> tuple[Row | Run, bool] | None:
    new_id = ids.run_id()
    if idempotency is not None:
        earlier = claim_key(scope=idempotency[0], key=idempotency[1], resource_id=new_id)
        if earlier is not None:
            return Run.objects.get(id=earlier), True
    row = fetch_one(
        ENQUEUE_SQL,
        {
            "id": new_id,
            "wf": workflow_name,
            "input": jsonb({} if input is None else input),
            "metadata": jsonb(metadata or {}),
            "webhook": recovery_webhook,
            "queue": queue,
            "dedupe": dedupe_key,
            "priority": priority,
            "run_at": run_at,
            "delay_ms": delay_ms or 0,
            "max_attempts": max_attempts,
            "deadline_ms": deadline_ms,
            "budget": budget_usd,
            "started_by": started_by,
        },
        RUN_JSON,
    )
    if row is None:
        existing = (
            Run.objects.filter(queue=queue, dedupe_key=dedupe_key, status__in=(RunStatus.QUEUED, RunStatus.RUNNING))
            .order_by("created_at")
            .first()
        )
        if existing is None:
            transaction.set_rollback(True)
            return None
        return existing, True
    if channels:
        insert_channels(row.id, channels)
    event_append(run_id=row.id, type="run.enqueued", payload={"queue": queue, "runAt": wire.ts(row.run_at)})
    notify_queue(queue)
    return row, False


def notify_queue(queue: str) -> None:
    """Wake claimers long-polling this queue once the current transaction commits."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, %s)", [QUEUE_CHANNEL, queue])


# --- claim --------------------------------------------------------------------------------------

CLAIM_SQL = """
WITH picked AS (
  SELECT id FROM tb_run
  WHERE queue_name = %(queue)s AND status = 'queued' AND run_at <= now()
  ORDER BY priority DESC, run_at ASC, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE tb_run r SET status = 'running', lease_owner = %(owner)s,
       lease_expires_at = now() + %(lease)s * interval '1 millisecond', attempt = r.attempt + 1,
       claimed_at = now(), updated_at = now()
FROM picked WHERE r.id = picked.id
RETURNING r.*, r.queue_name AS queue
"""


@transaction.atomic(durable=True)
def claim(*, queues: list[str], owner: str | None = None, limit: int = 1) -> tuple[list[Row], str]:
    """Pull-mode claim (§10.2). Per queue, a transaction advisory lock keyed on the queue makes
    the cap arithmetic race-free; ``FOR UPDATE SKIP LOCKED`` keeps claimers off each other's
    rows. Highest priority first, then oldest ``runAt``. Each claimed run is ``running`` with
    this lease owner (the work loop never calls begin) and gets a ``run.claimed`` event."""
    owner = owner or str(uuid.uuid4())
    claimed: list[Row] = []
    configs = {c.name: c for c in QueueConfig.objects.filter(name__in=queues)}
    for queue in queues:
        remaining = limit - len(claimed)
        if remaining <= 0:
            break
        config = configs.get(queue)
        if config is not None and config.paused:
            continue
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["queue:" + queue])
        capacity = _capacity(queue, config, remaining)
        if capacity <= 0:
            continue
        rows = fetch_rows(
            CLAIM_SQL,
            {"queue": queue, "limit": capacity, "owner": owner, "lease": settings.TIDEBASE_LEASE_MS},
            RUN_JSON,
        )
        rows.sort(key=lambda r: (-r.priority, r.run_at, r.id))
        for row in rows:
            event_append(run_id=row.id, type="run.claimed", payload={"leaseOwner": owner, "queue": queue})
        claimed.extend(rows)
    return claimed, owner


def _capacity(queue: str, config: QueueConfig | None, remaining: int) -> int:
    capacity = remaining
    if config is None:
        return capacity
    if config.concurrency is not None:
        capacity = min(capacity, config.concurrency - running_in_queue(queue))
    if config.rate_per_minute is not None:
        capacity = min(capacity, config.rate_per_minute - claimed_last_minute(queue))
    return capacity


# --- configuration ------------------------------------------------------------------------------


@transaction.atomic(durable=True)
def queue_configure(
    *,
    name: str,
    concurrency: int | None = None,
    rate_per_minute: int | None = None,
    invoke_url: str | None = None,
    paused: bool | None = None,
) -> QueueConfig:
    """Upsert with keep-existing semantics (§10.4): an omitted or null field keeps its value.
    The row is made to exist (``ON CONFLICT DO NOTHING``), then locked and changed: concurrent
    configurations of a new queue all apply, field by field."""
    QueueConfig.objects.bulk_create([QueueConfig(name=name)], ignore_conflicts=True)
    config = QueueConfig.objects.select_for_update().get(name=name)
    if concurrency is not None:
        config.concurrency = concurrency
    if rate_per_minute is not None:
        config.rate_per_minute = rate_per_minute
    if invoke_url is not None:
        config.invoke_url = invoke_url
    if paused is not None:
        config.paused = paused
    config.save()
    return config
