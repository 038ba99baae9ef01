from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import metrics, wire
from tidebase_core.api.common import channels_in, idempotency, principal, seg, usd
from tidebase_core.api.schemas import ClaimIn, EnqueueIn, QueueConfigIn, ScheduleIn
from tidebase_core.db import Row
from tidebase_core.selectors import queues as selectors
from tidebase_core.services import queues as services
from tidebase_core.services import schedules
from tidebase_core.waiting import Parked, Poll, long_poll

router = Router(tags=["queues"])
schedules_router = Router(tags=["schedules"])


@router.post("/claim", operation_id="claim_runs")
def claim_runs(request: HttpRequest, payload: ClaimIn) -> HttpResponse:
    """Claim ready runs. Additive: ``waitMs`` long-polls — with nothing to claim, the request
    waits (up to ``TIDEBASE_GATE_WAIT_MAX_MS``) and is woken when a run is enqueued on one of
    the queues, instead of the worker sleeping ``poll_s`` between claims."""

    def check() -> Poll[tuple[list[Row], str]]:
        runs, owner = services.claim(queues=payload.queues, owner=payload.leaseOwner, limit=payload.limit)
        return Poll((runs, owner), bool(runs))

    answer = long_poll(request, [f"queue:{q}" for q in payload.queues], payload.waitMs, check)
    if isinstance(answer, Parked):
        return answer
    runs, owner = answer
    metrics.runs_claimed(runs)
    return wire.json_response({"runs": [wire.run_out(r) for r in runs], "leaseOwner": owner})


@router.get("", operation_id="list_queues")
def list_queues(request: HttpRequest) -> HttpResponse:
    return wire.json_response({"queues": selectors.queue_stats()})


@router.post("/{queue}/enqueue", operation_id="enqueue_run")
def enqueue_run(request: HttpRequest, queue: str, payload: EnqueueIn) -> HttpResponse:
    run, deduplicated = services.enqueue(
        queue=seg(queue),
        workflow_name=payload.workflowName,
        input=payload.input,
        metadata=payload.metadata,
        recovery_webhook=str(payload.recoveryWebhook) if payload.recoveryWebhook else None,
        channels=channels_in(request, payload.channels),
        dedupe_key=payload.dedupeKey,
        delay_ms=payload.delayMs,
        run_at=payload.runAt,
        max_attempts=payload.maxAttempts,
        priority=payload.priority,
        deadline_ms=payload.deadlineMs,
        idempotency=idempotency(request, "enqueue"),
        budget_usd=usd(payload.budgetUsd),
        started_by=principal(request).label,
    )
    return wire.json_response({"run": wire.run_out(run), "deduplicated": deduplicated})


@router.put("/{queue}/config", operation_id="configure_queue")
def configure_queue(request: HttpRequest, queue: str, payload: QueueConfigIn) -> HttpResponse:
    config = services.queue_configure(
        name=seg(queue),
        concurrency=payload.concurrency,
        rate_per_minute=payload.ratePerMinute,
        invoke_url=str(payload.invokeUrl) if payload.invokeUrl else None,
        paused=payload.paused,
    )
    return wire.json_response({"config": wire.queue_config_out(config)})


@schedules_router.get("", operation_id="list_schedules")
def list_schedules(request: HttpRequest) -> HttpResponse:
    return wire.json_response({"schedules": [wire.schedule_out(s) for s in selectors.schedule_list()]})


@schedules_router.put("/{name}", operation_id="set_schedule")
def set_schedule(request: HttpRequest, name: str, payload: ScheduleIn) -> HttpResponse:
    schedule = schedules.schedule_set(
        name=seg(name),
        cron=payload.cron,
        workflow_name=payload.workflowName,
        input=payload.input,
        queue=payload.queue,
        max_attempts=payload.maxAttempts,
        enabled=payload.enabled,
    )
    return wire.json_response({"schedule": wire.schedule_out(schedule)})


@schedules_router.delete("/{name}", operation_id="delete_schedule")
def delete_schedule(request: HttpRequest, name: str) -> HttpResponse:
    schedules.schedule_delete(name=seg(name))
    return wire.json_response({"deleted": seg(name)})
