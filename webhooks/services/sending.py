"""Sending one attempt: an HTTP POST through the SSRF guard, with a connect timeout and a total
deadline, never following redirects (or, for a notification, an email through Django's email
framework); every failure is an ``Outcome``, never an exception."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

from webhooks import signing
from webhooks.services.messages import Claim
from webhooks.ssrf import AddressPolicy, BlockedAddress, Deadline, GuardedBackend

RESPONSE_EXCERPT_CHARS = 8000
"""Stored response body (PROTOCOL.md §8: truncated to 8000 chars)."""
RESPONSE_READ_CAP = 64 * 1024
"""Bytes read from a response at most; the rest is discarded unread."""
PERMANENT_ERRORS = frozenset(
    {"blocked_address", "invalid_url", "recipient_refused", "slack_refused", "slack_bot_token_missing"}
)
"""Errors that no retry can fix: dead-lettered at once. An error is ``code`` or ``code: detail``."""
SLACK_PERMANENT = frozenset(
    {
        "account_inactive",
        "cant_update_message",
        "channel_not_found",
        "invalid_auth",
        "is_archived",
        "message_not_found",
        "missing_scope",
        "not_authed",
        "not_in_channel",
        "token_revoked",
    }
)
"""Slack Web API errors a retry cannot fix (``slack_refused``); any other is retried (``slack_error``)."""


@dataclass(frozen=True)
class Outcome:
    latency_ms: int
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None
    sent: bool = False
    """Delivered without an HTTP status: an email the SMTP server accepted, or nothing to send."""

    @property
    def ok(self) -> bool:
        return self.error is None and (self.sent or (self.http_status is not None and 200 <= self.http_status < 300))

    @property
    def permanent(self) -> bool:
        code = (self.error or "").split(":", 1)[0]
        return code in PERMANENT_ERRORS or self.http_status == 410


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


def _slack_refusal(text: str) -> str | None:
    """Slack's Web API answers errors with HTTP 200 and ``{"ok": false, "error": "..."}``: the
    error as ours (``slack_refused: ...`` when no retry can fix it, else ``slack_error: ...``),
    or None for a success (incoming webhooks answer a plain ``ok``)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("ok") is not False:
        return None
    error = str(body.get("error") or "unknown")[:200]
    return f"{'slack_refused' if error in SLACK_PERMANENT else 'slack_error'}: {error}"


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
    if message.settled is not None:
        if message.settled.ok:
            return Outcome(latency_ms=0, sent=True, response=message.settled.note)
        return Outcome(latency_ms=0, error=message.settled.note)
    if message.email is not None:
        from webhooks.services.notify import email_send  # it builds on this module

        return email_send(message.email)
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
        **dict(message.headers),
    }
    if message.bearer:
        headers["authorization"] = f"Bearer {message.bearer}"
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
            refused = _slack_refusal(text) if message.slack and response.is_success else None
            return Outcome(
                latency_ms=elapsed(),
                http_status=response.status_code,
                response=text[:RESPONSE_EXCERPT_CHARS],
                retry_after_s=None if response.is_success else _retry_after(response.headers.get("retry-after")),
                error=refused,
            )
    except BlockedAddress:
        return Outcome(latency_ms=elapsed(), error="blocked_address")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return Outcome(latency_ms=elapsed(), error="invalid_url")
    except httpx.TimeoutException as exc:
        return Outcome(latency_ms=elapsed(), error=f"timeout: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return Outcome(latency_ms=elapsed(), error=f"{type(exc).__name__}: {exc}"[:1000])
