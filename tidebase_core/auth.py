"""Who is calling: the env key, an app API key (stored hashed, with a scope), or nobody.

PROTOCOL.md §2 keeps working as upstream: with ``TIDEBASE_API_KEY`` set, every protocol route
but ``/health`` needs ``Authorization: Bearer <key>`` (compared in constant time), and SSE may
pass ``?token=`` instead. App keys add scopes (docs/decisions.md, "Auth").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from django.conf import settings

SCOPE_RANK = {"agent": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str  # "agent" | "operator" | "admin"
    kind: str  # "open" | "env" | "key" | "user" | "token"

    @property
    def can_resolve(self) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK["operator"]

    @property
    def can_cancel(self) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK["operator"]

    @property
    def label(self) -> str:
        """How decisions record this caller (``Gate.decided_by``)."""
        return {"open": "anonymous", "env": "api-key:env"}.get(self.kind, f"{self.kind}:{self.name}")


OPEN = Principal("anonymous", "admin", "open")
ENV = Principal("env", "admin", "env")
TOKEN_ONLY = Principal("resolve-token", "agent", "token")


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key() -> str:
    return "tb_" + secrets.token_urlsafe(32)


class _KeyCache:
    """Verified keys and "are there any app keys" for a few seconds, so the hot path costs no
    SQL per request. Revocation takes effect within ``TIDEBASE_API_KEY_CACHE_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._any: tuple[float, bool] = (0.0, False)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._any = (0.0, False)

    def any_keys(self) -> bool:
        ttl = settings.TIDEBASE_API_KEY_CACHE_S
        at, value = self._any
        if time.monotonic() - at < ttl:
            return value
        from tidebase_core.models import ApiKey

        value = ApiKey.objects.filter(revoked_at__isnull=True).exists()
        self._any = (time.monotonic(), value)
        return value

    def lookup(self, raw: str) -> Principal | None:
        digest = hash_key(raw)
        ttl = settings.TIDEBASE_API_KEY_CACHE_S
        hit = self._keys.get(digest)
        if hit and time.monotonic() - hit[0] < ttl:
            return hit[1]
        from tidebase_core.models import ApiKey

        key = ApiKey.objects.filter(key_hash=digest, revoked_at__isnull=True).only("name", "scope").first()
        principal = Principal(key.name, key.scope, "key") if key else None
        with self._lock:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[digest] = (time.monotonic(), principal)
        return principal


key_cache = _KeyCache()


def auth_required() -> bool:
    return bool(settings.TIDEBASE_API_KEY) or key_cache.any_keys()


def authenticate(raw: str | None) -> Principal | None:
    """Map a presented secret to a principal; None when it is missing or wrong. With no key
    configured anywhere, everyone is the open principal (upstream's default)."""
    if not auth_required():
        return OPEN
    if not raw:
        return None
    env_key = settings.TIDEBASE_API_KEY
    if env_key and hmac.compare_digest(raw.encode(), env_key.encode()):
        return ENV
    return key_cache.lookup(raw)
