"""A Django view for :class:`tidebase.receiver.WebhookHandler`. Django is imported lazily, so
the SDK never depends on it::

    # urls.py
    from tidebase.django import webhook_view
    urlpatterns = [path("tidebase/webhook", webhook_view(handler))]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .receiver import WebhookHandler

__all__ = ["webhook_view"]


def webhook_view(handler: WebhookHandler) -> Callable[..., Any]:
    """A CSRF-exempt Django view passing the raw request to ``handler`` (signatures cover the
    exact body bytes, so the body is never re-parsed by Django)."""
    from django.http import HttpRequest, HttpResponse
    from django.views.decorators.csrf import csrf_exempt

    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        response = handler.handle(request.method or "GET", dict(request.headers.items()), request.body)
        out = HttpResponse(response.content, status=response.status)
        for key, value in response.headers.items():
            out[key] = value
        return out

    return view
