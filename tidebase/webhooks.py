"""Verifying webhooks sent by a Tidebase server.

Two signatures cover the exact body bytes:

- ``x-tidebase-signature: sha256=<hex HMAC-SHA256(body)>`` (upstream; :func:`verify_webhook_signature`);
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` =
  space-separated ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (several during a
  secret rotation). :func:`verify` checks these plus the timestamp tolerance, which is what
  makes a captured message useless later. A ``whsec_<base64>`` secret is base64-decoded, as
  Standard Webhooks defines; any other secret is used as its UTF-8 bytes.

:class:`tidebase.receiver.WebhookHandler` builds a complete endpoint (replay protection,
re-invoking workflows) on top of these.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "WebhookVerificationError",
    "sign_standard_webhook",
    "sign_webhook",
    "verify",
    "verify_webhook_signature",
]

_PREFIX = "sha256="
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """A webhook failed verification. ``reason`` is one of ``missing_signature``,
    ``invalid_signature``, ``missing_headers``, ``invalid_timestamp`` or ``stale``."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


def sign_webhook(body: bytes | str, secret: str) -> str:
    """The ``x-tidebase-signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    raw = body.encode() if isinstance(body, str) else body
    return _PREFIX + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify_webhook_signature(body: bytes | str, signature_header: str | None, secret: str) -> bool:
    """Check an ``x-tidebase-signature`` header against the exact body bytes.

    Accepts the hex digest with or without the ``sha256=`` prefix and compares
    in constant time. Pass the raw request body, not re-serialized JSON.
    """
    if not signature_header or not secret:
        return False
    given = signature_header.strip().removeprefix(_PREFIX)
    expected = sign_webhook(body, secret)[len(_PREFIX) :]
    return hmac.compare_digest(expected.encode(), given.lower().encode())


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign_standard_webhook(msg_id: str, timestamp: int, body: bytes | str, secret: str) -> str:
    """One Standard Webhooks signature, ``v1,<base64>``."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
    require_standard: bool = True,
) -> str | None:
    """Verify a webhook; return its ``webhook-id`` (None for an upstream-style message).

    With Standard Webhooks headers present, the timestamp must be within ``tolerance_s`` of
    ``now`` and one ``v1`` signature must match one of the secrets (the ``x-tidebase-signature``
    sent alongside is then not needed: it carries only the server's current secret, which would
    break receivers during a rotation). Without them the message is accepted on its
    ``x-tidebase-signature`` alone only when ``require_standard=False`` (an upstream server,
    which cannot be protected against replays). Raises :class:`WebhookVerificationError`.
    """
    raw = body.encode() if isinstance(body, str) else body
    secrets = [secret] if isinstance(secret, str) else [s for s in secret if s]
    if not secrets:
        raise ValueError("no webhook secret configured")
    lower = {k.lower(): v for k, v in headers.items()}
    legacy = lower.get("x-tidebase-signature")
    standard = lower.get("webhook-signature")
    if standard is None:
        if legacy is None:
            raise WebhookVerificationError("missing_signature", "the webhook is not signed")
        if require_standard:
            raise WebhookVerificationError("missing_headers", "Standard Webhooks headers are required")
        if not any(verify_webhook_signature(raw, legacy, s) for s in secrets):
            raise WebhookVerificationError("invalid_signature", "x-tidebase-signature does not match")
        return None
    msg_id, stamp = lower.get("webhook-id"), lower.get("webhook-timestamp")
    if not msg_id or not stamp:
        raise WebhookVerificationError("missing_headers", "webhook-id and webhook-timestamp are required")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("invalid_timestamp", "webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("stale", "webhook-timestamp is outside the tolerance")
    given = [part.strip() for part in standard.split(" ") if part.strip().startswith("v1,")]
    for s in secrets:
        expected = sign_standard_webhook(msg_id, timestamp, raw, s)
        if any(hmac.compare_digest(expected.encode(), g.encode()) for g in given):
            return msg_id
    raise WebhookVerificationError("invalid_signature", "webhook-signature does not match")
