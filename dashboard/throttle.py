"""Login throttling (django-axes, configured in settings): which client address a login comes from.

Failures are counted per username + client address, so a stranger who guesses passwords locks
out only their own attempts at that name, never the operator's from another address.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """``REMOTE_ADDR``; behind ``TIDEBASE_PROXY_COUNT`` proxies that each append to
    ``X-Forwarded-For``, the address the outermost proxy saw (the N-th entry from the right).
    Entries left of it were written by the client and are ignored: they can be forged."""
    remote = str(request.META.get("REMOTE_ADDR") or "")
    count = settings.TIDEBASE_PROXY_COUNT
    if count <= 0:
        return remote
    hops = [h.strip() for h in str(request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if h.strip()]
    return hops[-count] if len(hops) >= count else remote
