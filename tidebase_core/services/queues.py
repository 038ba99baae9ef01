"""Queues and schedules (PROTOCOL.md §10-§11): enqueue with dedupe, pull claims, queue caps,
push invitations and cron schedules. Tidebase decides *when* a run may execute; it never
executes it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from tidebase_core import ids, wire
from tidebase_core.db import RUN_JSON, Row, fetch_one, fetch_rows, jsonb
from tidebase_core.exceptions import InvalidRequest, NotFound
from tidebase_core.models import QueueConfig, Run, Schedule
from tidebase_core.realtime import QUEUE_CHANNEL
from tidebase_core.services.events import event_append
from tidebase_core.services.idempotency import claim_key
from tidebase_core.services.runs import insert_channels, recovery_record
from tidebase_core.services.time import db_now

PUSH_REDELIVERY = dt.timedelta(seconds=60)
"""A pushed run stays ``queued`` until its worker begins it; it is invited again after this."""
PUSH_BATCH = 10
CRON_HORIZON_YEARS = 5


# --- cron ---------------------------------------------------------------------------------------


def cron_next(expr: str, after: dt.datetime) -> dt.datetime:
    """The next whole minute strictly after ``after`` matching a 5-field UTC cron (cronsim;
    Vixie semantics: restricted day-of-month and day-of-week match if either matches).
    Raises InvalidRequest saying why an expression is invalid."""
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidRequest(f"cron must have exactly 5 fields, got {len(fields)}", field="cron")
    start = after.astimezone(dt.UTC).replace(second=0, microsecond=0)
    try:
        fire: dt.datetime = next(CronSim(" ".join(fields), start))
    except CronSimError as exc:
        raise InvalidRequest(f"invalid cron expression: {exc}", field="cron") from None
    except StopIteration:
        raise InvalidRequest("cron expression never fires", field="cron") from None
    if fire.year > after.year + CRON_HORIZON_YEARS:
        raise InvalidRequest("cron expression does not fire within 5 years", field="cron")
    return fire


# --- enqueue ------------------------------------------------------------------------------------

ENQUEUE_SQL = """
INSERT INTO tb_run (id, workflow_name, input, metadata, status, recovery_webhook, attempt, event_seq,
                    queue_name, dedupe_key, priority, run_at, max_attempts, deadline_at, created_at, updated_at)
VALUES (%(id)s, %(wf)s, %(input)s, %(metadata)s, 'queued', %(webhook)s, 0, 0, %(queue)s, %(dedupe)s,
        %(priority)s, COALESCE(%(run_at)s, now() + %(delay_ms)s * interval '1 millisecond'), %(max_attempts)s,
        CASE WHEN %(deadline_ms)s::bigint IS NULL THEN NULL ELSE now() + %(deadline_ms)s * interval '1 millisecond' END,
        now(), now())
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
        },
        RUN_JSON,
    )
    if row is None:
        existing = (
            Run.objects.filter(queue=queue, dedupe_key=dedupe_key, status__in=("queued", "running"))
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
        running = Run.objects.filter(queue=queue, status="running").count()
        capacity = min(capacity, config.concurrency - running)
    if config.rate_per_minute is not None:
        row = fetch_one(
            "SELECT count(*) AS n FROM tb_run WHERE queue_name = %s AND claimed_at > now() - interval '60 seconds'",
            [queue],
        )
        capacity = min(capacity, config.rate_per_minute - (row.n if row else 0))
    return capacity


# --- queue config and stats ---------------------------------------------------------------------


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


# --- schedules ----------------------------------------------------------------------------------


@transaction.atomic(durable=True)
def schedule_set(
    *,
    name: str,
    cron: str,
    workflow_name: str,
    input: Any = None,
    queue: str = "default",
    max_attempts: int = 1,
    enabled: bool = True,
) -> Schedule:
    """Full replace (§11.1); ``nextRunAt`` is recomputed from now. An invalid cron is a 400
    that says why, and nothing is stored. The row is made to exist (``ON CONFLICT DO NOTHING``),
    then locked and replaced: of concurrent PUTs, the last to lock wins, whole."""
    next_run_at = cron_next(cron, db_now())
    Schedule.objects.bulk_create([Schedule(name=name, cron=cron, workflow_name=workflow_name)], ignore_conflicts=True)
    schedule = Schedule.objects.select_for_update().get(name=name)
    schedule.cron = cron
    schedule.workflow_name = workflow_name
    schedule.input = {} if input is None else input
    schedule.queue = queue
    schedule.max_attempts = max_attempts
    schedule.enabled = enabled
    schedule.next_run_at = next_run_at
    schedule.save()
    return schedule


def schedule_delete(*, name: str) -> None:
    deleted, _ = Schedule.objects.filter(name=name).delete()
    if not deleted:
        raise NotFound("schedule not found")


def schedules_fire_due(*, limit: int = 100) -> int:
    """Enqueue every enabled schedule whose ``nextRunAt`` has passed, exactly once per fire
    time: the schedule row is claimed with ``FOR UPDATE SKIP LOCKED`` and its ``nextRunAt`` moved
    past now in the same transaction as the run insert, so two racing ticks cannot both fire
    it. After downtime a schedule fires once for the missed period (the most recent due fire
    time is not tracked separately) and then resumes at the next fire after now; missed fires
    are not replayed one by one."""
    fired = 0
    for _ in range(limit):
        if not _fire_one():
            break
        fired += 1
    return fired


@transaction.atomic(durable=True)
def _fire_one() -> bool:
    schedule = (
        Schedule.objects.select_for_update(skip_locked=True)
        .filter(enabled=True, next_run_at__lte=db_now())
        .order_by("next_run_at")
        .first()
    )
    if schedule is None:
        return False
    now = db_now()
    assert schedule.next_run_at is not None
    fire_time = wire.ts(schedule.next_run_at)
    try:
        with transaction.atomic():
            Run.objects.create(
                workflow_name=schedule.workflow_name,
                input=schedule.input,
                status="queued",
                queue=schedule.queue,
                dedupe_key=f"sched:{schedule.name}:{fire_time}",
                run_at=now,
                max_attempts=schedule.max_attempts,
                metadata={"schedule": schedule.name, "fireTime": fire_time},
            )
    except IntegrityError:
        pass  # this fire time already has an active run
    schedule.last_enqueued_at = now
    schedule.next_run_at = cron_next(schedule.cron, now)
    schedule.save(update_fields=["last_enqueued_at", "next_run_at", "updated_at"])
    return True


# --- push mode ----------------------------------------------------------------------------------


def push_dispatch_due() -> int:
    """Invite workers of push-mode queues (§9.4): for each queue with an ``invokeUrl``, up to
    ``min(10, concurrency - running)`` ready runs get a ``run.invoke`` outbox row and their
    ``runAt`` moved to now + 60 s (the redelivery horizon). The run stays ``queued`` until the
    worker begins it, so a duplicate invitation is harmless."""
    sent = 0
    for config in QueueConfig.objects.filter(invoke_url__isnull=False, paused=False):
        sent += _push_queue(config.name)
    return sent


@transaction.atomic(durable=True)
def _push_queue(queue: str) -> int:
    config = QueueConfig.objects.select_for_update().filter(name=queue).first()
    if config is None or not config.invoke_url:
        return 0
    capacity = PUSH_BATCH
    if config.concurrency is not None:
        running = Run.objects.filter(queue=queue, status="running").count()
        capacity = min(capacity, config.concurrency - running)
    if capacity <= 0:
        return 0
    runs = list(
        Run.objects.select_for_update(skip_locked=True)
        .filter(queue=queue, status="queued", run_at__lte=db_now())
        .order_by("-priority", "run_at", "id")[:capacity]
    )
    now = db_now()
    for run in runs:
        run.run_at = now + PUSH_REDELIVERY
        run.save(update_fields=["run_at", "updated_at"])
        recovery_record(run, reason="queue_dispatch", type="run.invoke", url=config.invoke_url)
    return len(runs)
