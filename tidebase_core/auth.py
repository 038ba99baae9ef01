"""Who is calling: the env key, an app API key (stored hashed, with a scope), or nobody.

PROTOCOL.md §2 keeps working as upstream: with ``TIDEBASE_API_KEY`` set, every protocol route
but ``/health`` needs ``Authorization: Bearer <key>`` (compared in constant time), and SSE may
pass ``?token=`` instead. App keys add scopes; what each scope may call is the route table in
``tidebase_core.api.scopes`` (docs/decisions.md, "Auth").

Whether a key is needed at all is ``TIDEBASE_AUTH``: ``auto`` (the default) keeps the API open
until the first app key is created and closed from then on, revoked or not; ``required`` always
needs a key; ``open`` never does.
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
RESOLVER_SCOPES = ("operator", "admin")
OPEN_SCOPE = "open"
"""Stamp of a channel set while the API was open (no key needed): trusted with resolve tokens
only as long as the API stays open, never once a key closes it."""
"""Scopes that may resolve gates, hence read resolve tokens and receive them in channel
deliveries (a channel delivers the token only when a principal of these scopes set it)."""


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str  # "agent" | "operator" | "admin"
    kind: str  # "open" | "env" | "key" | "user" | "token"

    def has(self, scope: str) -> bool:
        """Whether this principal's scope includes ``scope`` (agent < operator < admin)."""
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]

    @property
    def can_resolve(self) -> bool:
        return self.scope in RESOLVER_SCOPES

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
    """Verified keys and "was an app key ever created" for a few seconds, so the hot path costs
    no SQL per request. Revocation takes effect within ``TIDEBASE_API_KEY_CACHE_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._any: tuple[float, bool] = (0.0, False)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._any = (0.0, False)

    def keys_in_use(self) -> bool:
        """Whether any app key was ever created, revoked or not: revoking the last key must
        not reopen the API (keys are revoked, never deleted; the admin cannot delete them)."""
        ttl = settings.TIDEBASE_API_KEY_CACHE_S
        at, value = self._any
        if time.monotonic() - at < ttl:
            return value
        from tidebase_core.models import ApiKey

        value = ApiKey.objects.exists()
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
    """Whether protocol routes need a key (``TIDEBASE_AUTH``, see the module docstring)."""
    mode = settings.TIDEBASE_AUTH
    if mode == "open":
        return False
    if mode == "required":
        return True
    return bool(settings.TIDEBASE_API_KEY) or key_cache.keys_in_use()


@dataclass(frozen=True)
class Access:
    """What the API asks of clients, for the dashboard and ``tidebase_key``."""

    mode: str  # TIDEBASE_AUTH
    required: bool  # a key is needed now
    env_key: bool  # TIDEBASE_API_KEY is set
    keys_in_use: bool  # an app key was ever created

    @property
    def first_key_closes(self) -> bool:
        """Creating an app key now would close an open API (``auto``, nothing configured yet)."""
        return self.mode == "auto" and not self.required


def access(*, keys_in_use: bool | None = None) -> Access:
    """The API's current access rule. Pass ``keys_in_use`` when the caller already knows it
    (the keys page has the list), to save the query."""
    from tidebase_core.models import ApiKey

    in_use = ApiKey.objects.exists() if keys_in_use is None else keys_in_use
    mode = settings.TIDEBASE_AUTH
    env_key = bool(settings.TIDEBASE_API_KEY)
    required = mode == "required" or (mode == "auto" and (env_key or in_use))
    return Access(mode=mode, required=required, env_key=env_key, keys_in_use=in_use)


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
