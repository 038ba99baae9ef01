"""Transport conventions of the wire protocol (PROTOCOL.md §1-§2) for protocol paths:
raw-path routing, CORS and preflight, the request-size limit, and authentication."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote

from django.conf import settings
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse

from tidebase_core import auth
from tidebase_core.db import operational_answer
from tidebase_core.exceptions import MethodNotAllowed, PayloadTooLarge, ServerBusy, Unauthorized, UnsupportedValue
from tidebase_core.logs import REQUEST_ID, REQUEST_ID_ENVIRON, REQUEST_ID_HEADER, request_id_from
from tidebase_core.wire import error_response, json_response

PROTOCOL_PREFIXES = ("/health", "/ready", "/runs", "/queues", "/schedules", "/metrics", "/budgets")
SSE_PATH = re.compile(r"^/runs/[^/]+/events$")
RESOLVE_PATH = re.compile(r"^/runs/[^/]+/gates/[^/]+/resolve$")


def is_protocol_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTOCOL_PREFIXES)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, else "". The scheme is
    case-insensitive (RFC 7235 §2.1: ``bearer x`` and ``BEARER x`` are the same credentials)."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


UNAUTHORIZED: dict[str, object] = Unauthorized("unauthorized").body()
"""The 401 body, here and in the ASGI gateway (which refuses a large body before reading it)."""


def too_large_body(limit: int) -> dict[str, object]:
    """The 413 body, here and in the ASGI gateway."""
    return PayloadTooLarge(f"request body is larger than {limit} bytes", limit=limit).body()


def large_bodies_busy() -> ServerBusy:
    """The 503 for a large body that found no admission slot, here and in the ASGI gateway."""
    return ServerBusy("busy", "too many large request bodies are being processed; retry shortly")


def _too_large() -> HttpResponse:
    return json_response(too_large_body(settings.TIDEBASE_MAX_BODY_BYTES), 413)


def _read_chunked(request: HttpRequest) -> bool:
    """Read a chunked request body (``Transfer-Encoding: chunked``, no ``Content-Length``) into
    ``request.body``; False if it is larger than ``TIDEBASE_MAX_BODY_BYTES``. gunicorn decodes
    chunked input into ``wsgi.input``, but Django reads only ``CONTENT_LENGTH`` bytes of it and
    would see an empty body (a 400 ``missing_body`` for a body that was sent)."""
    meta = request.META
    if meta.get("CONTENT_LENGTH") or "chunked" not in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    limit = settings.TIDEBASE_MAX_BODY_BYTES
    body = meta["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        return False
    request._body = body  # what HttpRequest.body would have read
    request._stream = io.BytesIO(body)
    meta["CONTENT_LENGTH"] = str(len(body))
    return True


class LargeBodies:
    """Admission for large request bodies: at most ``TIDEBASE_LARGE_BODY_CONCURRENCY`` requests
    per process read and process a body above ``TIDEBASE_LARGE_BODY_BYTES`` at once (a chunked
    body counts as large). A 60 MB checkpoint costs several times its size while it is parsed,
    validated and encoded for Postgres; without a bound, four at once took a process to 2.4 GB.
    A request that finds no slot within ``TIDEBASE_LARGE_BODY_WAIT_S`` is answered 503 ``busy``
    before its body is read. Small bodies never wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: threading.BoundedSemaphore | None = None

    def _semaphore(self) -> threading.BoundedSemaphore:
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(max(1, settings.TIDEBASE_LARGE_BODY_CONCURRENCY))
            return self._slots

    @contextmanager
    def admit(self, size: int) -> Iterator[bool]:
        if size <= settings.TIDEBASE_LARGE_BODY_BYTES:
            yield True
            return
        slots = self._semaphore()
        admitted = slots.acquire(timeout=settings.TIDEBASE_LARGE_BODY_WAIT_S)
        try:
            yield admitted
        finally:
            if admitted:
                slots.release()


large_bodies = LargeBodies()


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
        # First in both chains (protocol and dashboard), so every line logged while serving the
        # request carries its id.
        request_id = request_id_from(request.META.get(REQUEST_ID_ENVIRON))
        token = REQUEST_ID.set(request_id)
        try:
            response = self._serve(request)
        finally:
            REQUEST_ID.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response

    def _serve(self, request: HttpRequest) -> HttpResponse:
        if not is_protocol_path(request.path_info):
            return self.get_response(request)
        request.path_info = _encoded_path(request)
        request.urlconf = "config.api_urls"
        try:
            response = self._handle(request)
        except OperationalError as exc:  # e.g. no pooled connection for auth's key lookup in time
            answer = operational_answer(exc, request.path)
            if answer is None:
                raise
            response = error_response(answer)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allow = response.get("Allow")
            response = error_response(MethodNotAllowed(f"method {request.method} not allowed"))
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
            return _too_large()
        if "\x00" in unquote(request.path_info) or "\x00" in unquote(request.META.get("QUERY_STRING", "")):
            # Postgres stores no NUL; see jsonsafe.py for bodies
            return error_response(UnsupportedValue("the URL cannot contain the NUL character (%00)"))
        path = request.path_info
        if path in ("/health", "/ready"):  # probes need no key (scopes.ROUTE_SCOPES: public)
            return self.get_response(request)
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is not None:
            raw = bearer_token(header)
        elif SSE_PATH.match(path):
            raw = request.GET.get("token") or ""
        else:
            raw = ""
        principal = auth.authenticate(raw)
        if principal is None:
            if header is None and RESOLVE_PATH.match(path):
                principal = auth.TOKEN_ONLY  # the resolve token is the capability (§8.3)
            else:
                return json_response(UNAUTHORIZED, 401)
        request.tb_principal = principal  # type: ignore[attr-defined]
        chunked = (
            not request.META.get("CONTENT_LENGTH")
            and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        )
        size = settings.TIDEBASE_MAX_BODY_BYTES if chunked else (int(length) if length.isdigit() else 0)
        if request.META.get("tidebase.admitted"):
            size = 0  # the ASGI gateway admitted this body before reading it (tidebase_core.gateway)
        with large_bodies.admit(size) as admitted:  # after auth: a stranger's body takes no slot
            if not admitted:
                return error_response(large_bodies_busy())
            if not _read_chunked(request):  # after auth: never read a stranger's body
                return _too_large()
            return self.get_response(request)
