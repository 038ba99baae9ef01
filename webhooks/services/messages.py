"""What an attempt sends: the exact body, its signing secrets and its user agent."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from django.conf import settings

from tidebase_core.models import ChannelDelivery, RecoveryAttempt
from webhooks.services.kinds import Kind

RECOVERY_USER_AGENT = "tidebase-recovery/0.5.0"
CHANNEL_USER_AGENT = "tidebase-channel/0.3.0"


@dataclass(frozen=True)
class Message:
    url: str
    body: bytes
    secret: str | None
    previous_secrets: tuple[str, ...]
    user_agent: str
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers (``traceparent`` when tracing, ``webhooks.telemetry``)."""


@dataclass(frozen=True)
class Claim:
    kind: Kind
    delivery_id: str
    number: int
    message: Message


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
