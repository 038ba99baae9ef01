"""WSGI entry point.

``POST /runs/:id/steps/begin`` and ``.../steps/:id/complete`` are answered by
``tidebase_core.api.hotpath`` without building a Django request when they are plain (see there).
Other protocol paths (``/runs``, ``/health``, ...) go to a handler whose middleware chain is only
``ProtocolMiddleware``: the wire protocol never uses sessions, CSRF, messages or auth
middleware, and skipping them is a measurable share of a step's latency. Everything else (the
dashboard, the admin) gets the full ``settings.MIDDLEWARE`` chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("TIDEBASE_PROCESS", "web")  # a web process: pooled database connections
site = get_wsgi_application()

from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402

from tidebase_core.api import hotpath  # noqa: E402
from tidebase_core.middleware import ProtocolMiddleware, is_protocol_path  # noqa: E402


class ProtocolHandler(WSGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]
        self._middleware_chain = convert_exception_to_response(ProtocolMiddleware(handler))  # type: ignore[arg-type]


protocol = ProtocolHandler()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    answered = hotpath.serve(environ, start_response)
    if answered is not None:
        return answered
    handler = protocol if is_protocol_path(environ.get("PATH_INFO", "")) else site
    return handler(environ, start_response)


from tidebase_core import tracing  # noqa: E402

if tracing.ENABLED:  # a SERVER span per request, continuing the caller's traceparent
    application = tracing.traced_wsgi(application)  # type: ignore[assignment]
