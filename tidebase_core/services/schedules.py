"""Cron schedules (PROTOCOL.md §11): set, delete, and the reconciler's firing of due ones."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cronsim import CronSim, CronSimError
from django.db import IntegrityError, transaction

from tidebase_core import wire
from tidebase_core.exceptions import InvalidRequest, NotFound
from tidebase_core.models import Run, RunStatus, Schedule
from tidebase_core.services.time import db_now

CRON_HORIZON_YEARS = 5


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
                status=RunStatus.QUEUED,
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
