"""Verifying webhooks sent by a Tidebase server."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["sign_webhook", "verify_webhook_signature"]

_PREFIX = "sha256="


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
