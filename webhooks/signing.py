"""Signing outbound webhooks. Pure functions: no settings, no I/O.

Every delivery carries two signatures over the exact body bytes:

- ``x-tidebase-signature: sha256=<hex>`` — the upstream scheme (PROTOCOL.md §8), which the official
  client's ``verify_webhook_signature`` checks;
- the Standard Webhooks headers ``webhook-id`` (stable across retries), ``webhook-timestamp``
  (per attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
  one space-separated entry per secret so receivers keep verifying while a secret is rotated.

A secret of the form ``whsec_<base64>`` is used as Standard Webhooks defines it (the decoded
bytes are the key); any other secret is used as its UTF-8 bytes. ``tidebase.webhooks`` (the SDK)
verifies the same way; both are tested against the same vectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_PREFIX = "sha256="


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def tidebase_signature(body: bytes, secret: str) -> str:
    """``x-tidebase-signature`` value: ``sha256=<lowercase hex HMAC-SHA256(body)>``; keyed with the
    secret's UTF-8 bytes, exactly as upstream does."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """One Standard Webhooks signature: ``v1,<base64>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(
    *, msg_id: str, timestamp: int, body: bytes, secret: str | None, previous: Iterable[str] = ()
) -> dict[str, str]:
    """The signing headers for one attempt. Without a secret only ``webhook-id`` and
    ``webhook-timestamp`` are sent (receivers can still de-duplicate)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        headers["x-tidebase-signature"] = tidebase_signature(body, secret)
        secrets = [secret, *(s for s in previous if s and s != secret)]
        headers["webhook-signature"] = " ".join(standard_signature(msg_id, timestamp, body, s) for s in secrets)
    return headers
