"""What an attempt sends: the exact body, its signing secrets and its user agent; for a
notification, the email or Slack message rendered from its gate (``webhooks.services.notify``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from django.conf import settings

from tidebase_core.models import Notification, RecoveryAttempt
from webhooks.services.kinds import Kind, OutboxRow

RECOVERY_USER_AGENT = "tidebase-recovery/0.5.0"
CHANNEL_USER_AGENT = "tidebase-channel/0.3.0"


@dataclass(frozen=True)
class Email:
    """An email sent through Django's email framework instead of an HTTP request."""

    to: str
    subject: str
    text: str
    html: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Settled:
    """An attempt that needs no I/O: recorded at once as delivered with ``note`` as its response
    (``ok``: e.g. an approval request for a gate already decided), or dead-lettered with ``note``
    as its error (a permanent error code, e.g. ``slack_bot_token_missing``)."""

    ok: bool
    note: str


@dataclass(frozen=True)
class Message:
    url: str
    body: bytes
    secret: str | None
    previous_secrets: tuple[str, ...]
    user_agent: str
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers (``traceparent`` when tracing, ``webhooks.telemetry``)."""
    bearer: str | None = None
    """``Authorization: Bearer`` (Slack's Web API); apart from ``headers``, which tracing replaces."""
    slack: bool = False
    """A Slack endpoint: a 2xx whose JSON body says ``"ok": false`` is a failed attempt."""
    email: Email | None = None
    """Send this email instead of the HTTP request (``url`` is then ``mailto:<address>``)."""
    settled: Settled | None = None
    """Send nothing: the attempt's outcome is already known."""

    @property
    def shown_url(self) -> str:
        """The URL as attempt rows and traces record it. A Slack incoming-webhook URL or
        ``response_url`` is itself the credential, so only its host is kept; Slack's Web API
        (``TIDEBASE_SLACK_API_URL``) and every other URL are kept whole."""
        if not self.slack or self.url.startswith(settings.TIDEBASE_SLACK_API_URL + "/"):
            return self.url
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}/…"


@dataclass(frozen=True)
class Claim:
    kind: Kind
    delivery_id: str
    number: int
    message: Message


def compact_json(value: object) -> bytes:
    return orjson.dumps(value)


def build_message(kind: Kind, row: OutboxRow) -> Message:
    """The exact request for ``row`` (PROTOCOL.md §8.1/§8.2 bodies, compact JSON in key order).
    Recovery and invoke bodies carry ``run.attempt`` as it is now; channel deliveries are signed
    with the channel's own secret, recovery/invoke with ``TIDEBASE_WEBHOOK_SECRET``. A
    notification is rendered from its gate as it is now (``webhooks.services.notify``)."""
    if isinstance(row, Notification):
        from webhooks.services.notify import notification_message  # it builds on this module

        return notification_message(row)
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
