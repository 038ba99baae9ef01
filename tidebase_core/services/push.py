"""Push-mode queues (PROTOCOL.md §9.4): the reconciler invites workers with ``run.invoke``."""

from __future__ import annotations

import datetime as dt

from django.db import transaction

from tidebase_core.models import QueueConfig, Run, RunStatus
from tidebase_core.selectors.queues import running_in_queue
from tidebase_core.services.runs import recovery_record
from tidebase_core.services.time import db_now

PUSH_REDELIVERY = dt.timedelta(seconds=60)
"""A pushed run stays ``queued`` until its worker begins it; it is invited again after this."""
PUSH_BATCH = 10


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
        capacity = min(capacity, config.concurrency - running_in_queue(queue))
    if capacity <= 0:
        return 0
    runs = list(
        Run.objects.select_for_update(skip_locked=True)
        .filter(queue=queue, status=RunStatus.QUEUED, run_at__lte=db_now())
        .order_by("-priority", "run_at", "id")[:capacity]
    )
    now = db_now()
    for run in runs:
        run.run_at = now + PUSH_REDELIVERY
        run.save(update_fields=["run_at", "updated_at"])
        recovery_record(run, reason="queue_dispatch", type="run.invoke", url=config.invoke_url)
    return len(runs)
