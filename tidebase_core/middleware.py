"""Transport conventions of the wire protocol (PROTOCOL.md §1-§2) for protocol paths:
raw-path routing, CORS and preflight, the request-size limit, and authentication."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, unquote

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from tidebase_core import auth
from tidebase_core.wire import json_response

PROTOCOL_PREFIXES = ("/health", "/runs", "/queues", "/schedules")
SSE_PATH = re.compile(r"^/runs/[^/]+/events$")
RESOLVE_PATH = re.compile(r"^/runs/[^/]+/gates/[^/]+/resolve$")


def is_protocol_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTOCOL_PREFIXES)


def _encoded_path(request: HttpRequest) -> str:
    """The request path with every segment percent-encoded, so ``%2F`` inside a workflow,
    queue or schedule name never splits it (§19.9). Views decode segments with ``unquote``."""
    raw = request.META.get("RAW_URI") or request.META.get("REQUEST_URI")
    if raw:
        path = raw.split("?", 1)[0]
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return "/".join(quote(unquote(seg), safe="") for seg in path.split("/"))
    return "/".join(quote(seg, safe="") for seg in request.path_info.split("/"))


class ProtocolMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_protocol_path(request.path_info):
            return self.get_response(request)
        request.path_info = _encoded_path(request)
        request.urlconf = "config.api_urls"
        response = self._handle(request)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allow = response.get("Allow")
            response = json_response(
                {"error": f"method {request.method} not allowed", "code": "method_not_allowed"}, 405
            )
            if allow:
                response["Allow"] = allow
        response["Access-Control-Allow-Origin"] = settings.TIDEBASE_CORS_ORIGIN
        return response

    def _handle(self, request: HttpRequest) -> HttpResponse:
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = "GET,HEAD,PUT,POST,DELETE,PATCH"
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                response["Access-Control-Allow-Headers"] = requested
            response["Vary"] = "Access-Control-Request-Headers"
            return response
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > settings.TIDEBASE_MAX_BODY_BYTES:
            return json_response(
                {
                    "error": f"request body is larger than {settings.TIDEBASE_MAX_BODY_BYTES} bytes",
                    "code": "payload_too_large",
                    "limit": settings.TIDEBASE_MAX_BODY_BYTES,
                },
                413,
            )
        path = request.path_info
        if path == "/health":
            return self.get_response(request)
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is not None:
            raw = header[7:] if header.startswith("Bearer ") else ""
        elif SSE_PATH.match(path):
            raw = request.GET.get("token") or ""
        else:
            raw = ""
        principal = auth.authenticate(raw)
        if principal is None:
            if header is None and RESOLVE_PATH.match(path):
                principal = auth.TOKEN_ONLY  # the resolve token is the capability (§8.3)
            else:
                return json_response({"error": "unauthorized", "code": "unauthorized"}, 401)
        request.tb_principal = principal  # type: ignore[attr-defined]
        return self.get_response(request)
