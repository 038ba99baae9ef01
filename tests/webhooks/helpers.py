from __future__ import annotations

from django.db import transaction
from django.db.models.functions import Now

from tidebase_core.models import ChannelDelivery, RecoveryAttempt, Run
from tidebase_core.services.runs import recovery_record, run_create
from webhooks import dispatch


def channel_deliveries(url: str, n: int = 1, *, secret: str | None = "chan-secret", publish: bool = True) -> list[str]:
    """``n`` pending channel deliveries of one run to ``url``, committed; published unless told not to."""
    run = run_create(workflow_name="wf", channels=[{"url": url, "secret": secret}])
    rows = [
        ChannelDelivery(
            run=run,
            url=url,
            secret=secret,
            event_type="state.updated",
            payload={"state": {"i": i}, "stateVersion": {"version": i}},
        )
        for i in range(n)
    ]
    with transaction.atomic():
        ids = [row.id for row in ChannelDelivery.objects.bulk_create(rows)]
        ChannelDelivery.objects.filter(id__in=ids).update(next_attempt_at=Now())
    if publish:
        dispatch.enqueue("channel", [(i, 0) for i in ids])
    return ids


def recovery_row(url: str, *, reason: str = "manual", type: str = "run.resume") -> RecoveryAttempt:
    run = run_create(workflow_name="wf", recovery_webhook=url)
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(id=run.id)
        attempt = recovery_record(locked, reason=reason, type=type)
    return attempt
