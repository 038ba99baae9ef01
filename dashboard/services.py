"""Dashboard-only writes: API key management. (Gate, run and webhook mutations call the core's
and the webhooks app's services, the same ones the API uses.)"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from tidebase_core.auth import generate_key, hash_key, key_cache
from tidebase_core.exceptions import Conflict, NotFound
from tidebase_core.models import ApiKey


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


def api_key_create(*, name: str, scope: str) -> NewKey:
    """Create a key; only the SHA-256 of the secret is stored. Raises Conflict on a taken name."""
    raw = generate_key()
    try:
        with transaction.atomic():
            key = ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=hash_key(raw), scope=scope)
    except IntegrityError as exc:
        raise Conflict(f"a key named {name!r} already exists") from exc
    key_cache.clear()
    return NewKey(key=key, secret=raw)


def api_key_revoke(*, key_id: str) -> ApiKey:
    """Revoke a key (idempotent). This process forgets it at once; other processes within
    ``TIDEBASE_API_KEY_CACHE_S``."""
    ApiKey.objects.filter(id=key_id, revoked_at__isnull=True).update(revoked_at=Now())
    key = ApiKey.objects.filter(id=key_id).first()
    if key is None:
        raise NotFound("API key not found")
    key_cache.clear()
    return key
