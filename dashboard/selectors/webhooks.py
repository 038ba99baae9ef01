"""The webhook log: channel deliveries, recovery attempts and approval notifications, merged."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.db.models import Count

from tidebase_core.models import ChannelDelivery, DeliveryStatus, Notification, RecoveryAttempt


@dataclass
class Delivery:
    """A row of the webhook log: a channel delivery or a recovery (run.resume/run.invoke) attempt."""

    kind: str  # "channel" | "recovery" | "notification"
    id: str
    run_id: str
    workflow: str
    event_type: str
    url: str
    status: str
    attempts: int
    http_status: int | None
    error_text: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    latency_ms: int | None

    @property
    def dead(self) -> bool:
        return self.status == DeliveryStatus.FAILED

    @classmethod
    def of(cls, kind: str, row: Any, *, event_type: str, url: str) -> Delivery:
        """From an outbox row (``ChannelDelivery`` or ``RecoveryAttempt``: the ``OutboxRow``
        fields), its run loaded."""
        return cls(
            kind=kind,
            id=row.id,
            run_id=row.run_id,
            workflow=row.run.workflow_name,
            event_type=event_type,
            url=url,
            status=row.status,
            attempts=row.attempts,
            http_status=row.http_status,
            error_text=row.error_text,
            created_at=row.created_at,
            completed_at=row.completed_at,
            next_attempt_at=row.next_attempt_at,
            latency_ms=None,
        )


def _last_attempts(ids: list[str]) -> dict[tuple[str, str], Any]:
    """The latest HTTP attempt of each listed delivery from the webhooks app's attempt log, in
    one query (DISTINCT ON over the (kind, delivery_id, number) unique index)."""
    try:
        from webhooks.models import DeliveryAttempt
    except ImportError:
        return {}
    if not ids:
        return {}
    rows = (
        DeliveryAttempt.objects.filter(delivery_id__in=ids)
        .order_by("kind", "delivery_id", "-number")
        .distinct("kind", "delivery_id")
        .only("kind", "delivery_id", "number", "latency_ms")
    )
    return {(r.kind, r.delivery_id): r for r in rows}


def notification_target(target: str) -> str:
    """An email address or Slack channel as it is; a Slack URL (an incoming webhook or a click's
    ``response_url``, both capabilities) only by its host."""
    if target.startswith(("https://", "http://")):
        return f"{urlsplit(target).netloc}/…"
    return target


def deliveries(*, status: str = "", kind: str = "", limit: int = 100) -> list[Delivery]:
    """The newest deliveries of every kind, merged (one bounded query per kind)."""
    out: list[Delivery] = []
    if kind in ("", "channel"):
        qs = ChannelDelivery.objects.select_related("run").defer("payload", "secret", "response_body", "run__input")
        if status:
            qs = qs.filter(status=status)
        out += [
            Delivery.of("channel", d, event_type=d.event_type, url=d.url) for d in qs.order_by("-created_at")[:limit]
        ]
    if kind in ("", "notification"):
        nq = Notification.objects.select_related("run").defer("data", "response_body", "run__input")
        if status:
            nq = nq.filter(status=status)
        out += [
            Delivery.of("notification", n, event_type=f"{n.event_type} ({n.medium})", url=notification_target(n.target))
            for n in nq.order_by("-created_at")[:limit]
        ]
    if kind in ("", "recovery"):
        rq = RecoveryAttempt.objects.select_related("run").defer("response_body", "run__input")
        if status:
            rq = rq.filter(status=status)
        out += [
            Delivery.of("recovery", a, event_type=a.type, url=a.webhook_url) for a in rq.order_by("-created_at")[:limit]
        ]
    out.sort(key=lambda d: d.created_at, reverse=True)
    out = out[:limit]
    attempts = _last_attempts([d.id for d in out])
    for row in out:
        last = attempts.get((row.kind, row.id))
        if last is not None:
            row.latency_ms = last.latency_ms
    return out


def delivery_counts() -> dict[str, int]:
    """Rows by status over the three outbox tables, in one query."""
    counts = dict.fromkeys(DeliveryStatus.values, 0)
    per_table = [m.objects.values("status").annotate(n=Count("id")) for m in (RecoveryAttempt, Notification)]
    for row in ChannelDelivery.objects.values("status").annotate(n=Count("id")).union(*per_table, all=True):
        counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
    return counts
