"""The hottest routes, served straight from WSGI.

``steps/begin`` and ``steps/:id/complete`` are most of a workflow's traffic, then state set
(PUT/PATCH ``/runs/:id/state``), usage record (``POST /runs/:id/usage``) and the run routes a
workflow invocation calls (create, detail, begin, complete, fail). For a plain,
well-formed request the server's Python work used to be mostly framework: building a
``WSGIRequest``, the signals, URL resolution, ninja's parameter pipeline, ``HttpResponse``.
Here such a request is answered with the *same* pydantic schema and the *same* function the
ninja view calls (``begin_body``/``complete_body``, ``state_body``, ``usage_body``), and
nothing else.

Anything unusual is handed to Django untouched (the body is put back on ``wsgi.input``), so
every error is still rendered in one place: a missing or bad API key (401), a percent-encoded
path segment (§19.9), a non-JSON content type, a body that is absent, chunked, too large or
invalid, a value Postgres refuses. Only domain errors (409 ``lease_lost``, 404 ...) are rendered
here, with the same ``{"error", "code"}`` body as everywhere.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.db import DataError, OperationalError, close_old_connections
from django.http import HttpRequest
from pydantic import BaseModel

from tidebase_core import auth
from tidebase_core.api import runs as run_api
from tidebase_core.api import scopes
from tidebase_core.api.common import idempotency, loads
from tidebase_core.api.schemas import (
    RunCompleteIn,
    RunCreateIn,
    RunFailIn,
    StateWriteIn,
    StepBeginIn,
    StepCompleteIn,
    UsageIn,
)
from tidebase_core.api.state import USAGE_IDEMPOTENCY, state_body, usage_body
from tidebase_core.api.steps import begin_body, complete_body
from tidebase_core.db import operational_answer
from tidebase_core.exceptions import DomainError, InternalError
from tidebase_core.logs import REQUEST_ID, REQUEST_ID_ENVIRON, REQUEST_ID_HEADER, request_id_from
from tidebase_core.metrics import ROUTE_ENVIRON
from tidebase_core.middleware import bearer_token
from tidebase_core.wire import dumps

logger = logging.getLogger("tidebase.api")

# Unreserved characters only: a segment that needs percent-decoding takes the normal route.
_SEGMENT = r"([A-Za-z0-9_.~-]+)"
_BEGIN = re.compile(rf"/runs/{_SEGMENT}/steps/begin")
_COMPLETE = re.compile(rf"/runs/{_SEGMENT}/steps/{_SEGMENT}/complete")
_STATE = re.compile(rf"/runs/{_SEGMENT}/state")
_USAGE = re.compile(rf"/runs/{_SEGMENT}/usage")
_RUN = re.compile(rf"/runs/{_SEGMENT}")  # POST: create (the segment is a workflow name); GET: detail
_RUN_BEGIN = re.compile(rf"/runs/{_SEGMENT}/begin")
_RUN_COMPLETE = re.compile(rf"/runs/{_SEGMENT}/complete")
_RUN_FAIL = re.compile(rf"/runs/{_SEGMENT}/fail")

_STATUS = {code.value: f"{code.value} {code.phrase}" for code in HTTPStatus}
_INTERNAL_ERROR = dumps(InternalError().body())

StartResponse = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request (authenticated and allowed the route), and its WSGI environ."""

    who: auth.Principal
    environ: dict[str, Any]

    def request(self) -> HttpRequest:
        """A bare request over the environ, for helpers that read headers and the principal."""
        request = HttpRequest()
        request.META = self.environ
        request.tb_principal = self.who  # type: ignore[attr-defined]  # as ProtocolMiddleware sets it
        return request


def _begin(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return begin_body(groups[0], payload)


def _complete(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return complete_body(groups[0], groups[1], payload)


def _set_state(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return state_body(groups[0], payload, merge=False)


def _patch_state(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return state_body(groups[0], payload, merge=True)


def _usage(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return usage_body(groups[0], payload, idempotency(caller.request(), USAGE_IDEMPOTENCY))


def _create_run(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return run_api.create_body(groups[0], payload, caller.request())


def _get_run(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return run_api.detail_body(groups[0], caller.who)


def _begin_run(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return run_api.begin_body(groups[0], caller.environ.get("HTTP_X_TIDEBASE_WORKER") or None)


def _complete_run(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return run_api.complete_body(groups[0], payload)


def _fail_run(groups: tuple[str, ...], payload: Any, caller: Caller) -> dict[str, object]:
    return run_api.fail_body(groups[0], payload)


Handler = Callable[[tuple[str, ...], Any, Caller], dict[str, object]]

ROUTES: list[tuple[re.Pattern[str], str, type[BaseModel] | None, Handler]] = [
    (_BEGIN, "begin_step", StepBeginIn, _begin),
    (_COMPLETE, "complete_step", StepCompleteIn, _complete),
    (_STATE, "set_state", StateWriteIn, _set_state),
    (_STATE, "patch_state", StateWriteIn, _patch_state),
    (_USAGE, "record_usage", UsageIn, _usage),
    (_RUN, "create_run", RunCreateIn, _create_run),
    (_RUN, "get_run", None, _get_run),
    (_RUN_BEGIN, "begin_run", None, _begin_run),
    (_RUN_COMPLETE, "complete_run", RunCompleteIn, _complete_run),
    (_RUN_FAIL, "fail_run", RunFailIn, _fail_run),
]
"""(path, operation id in ``scopes.ROUTE_SCOPES``, body schema or None for routes that read no
body, handler). The method is POST unless ``METHODS`` says otherwise."""

METHODS = {"set_state": "PUT", "patch_state": "PATCH", "get_run": "GET"}


def _match(environ: dict[str, Any]) -> tuple[Any, ...] | None:
    method = environ.get("REQUEST_METHOD")
    if method not in ("POST", "PUT", "PATCH", "GET"):
        return None
    path: str = environ.get("PATH_INFO", "")
    if not path.startswith("/runs/"):
        return None
    for pattern, operation_id, schema, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None and METHODS.get(operation_id, "POST") == method:
            return match.groups(), operation_id, schema, handler
    return None


def _plain(environ: dict[str, Any], operation_id: str) -> tuple[int, Caller] | None:
    """The body length and caller of a request the hot path may answer, or None to leave it to
    Django."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw_uri is None or "%" in raw_uri.partition("?")[0]:
        return None  # cannot prove the path was not percent-encoded
    content_type: str = environ.get("CONTENT_TYPE") or "application/json"
    if not content_type.startswith("application/json"):
        return None
    length: str = environ.get("CONTENT_LENGTH") or ""
    if not length and environ.get("REQUEST_METHOD") == "GET" and "HTTP_TRANSFER_ENCODING" not in environ:
        length = "0"  # a GET without a body
    if not length.isdigit() or int(length) > min(settings.TIDEBASE_MAX_BODY_BYTES, settings.TIDEBASE_LARGE_BODY_BYTES):
        return None  # the framework path answers 413, or admits a large body (LargeBodies)
    header: str | None = environ.get("HTTP_AUTHORIZATION")
    who = auth.authenticate(bearer_token(header))
    if who is None or not scopes.allows(who, operation_id):
        return None  # Django answers 401 or 403 (the same route table)
    return int(length), Caller(who, environ)


def serve(environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
    """Answer a plain request to one of ``ROUTES``, or return None (Django serves the request)."""
    route = _match(environ)
    if route is None:
        return None
    groups, operation_id, schema, handler = route
    environ[ROUTE_ENVIRON] = operation_id  # the gateway's route label (tidebase_core.metrics)
    close_old_connections()  # what Django's request_started does, before any query (auth's)
    extra_headers: list[tuple[str, str]] = []
    request_id = request_id_from(environ.get(REQUEST_ID_ENVIRON))  # no middleware runs here
    request_id_token = REQUEST_ID.set(request_id)
    try:
        plain = _plain(environ, operation_id)
        if plain is None:
            return None
        length, caller = plain
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # a fall-through re-reads it
        if schema is None:
            payload = None  # a route that reads no body (its ninja view ignores one too)
        else:
            try:  # exactly what ninja does: its parser (``loads``), then the schema, in Python mode
                data = loads(body)
                payload = schema.model_validate(data) if isinstance(data, dict) else None
            except (DomainError, ValueError):
                payload = None
            if payload is None:
                return None  # ninja renders the error (invalid JSON, unstorable value, wrong type...)
        try:
            status, data = 200, handler(groups, payload, caller)
        except DomainError as exc:
            status, data, extra_headers = exc.status_code, exc.body(), exc.headers()
        except DataError:
            return None  # the statement changed nothing; ninja re-runs it and renders the error
        content = dumps(data)
    except OperationalError as exc:  # a lock, statement or pool timeout (auth's query too): 503
        answer = operational_answer(exc, environ.get("PATH_INFO", ""))
        if answer is None:
            logger.exception("api.unhandled", extra={"path": environ.get("PATH_INFO")})
            status, content = 500, _INTERNAL_ERROR
        else:
            status, content, extra_headers = answer.status_code, dumps(answer.body()), answer.headers()
    except Exception:
        logger.exception("api.unhandled", extra={"path": environ.get("PATH_INFO")})
        status, content = 500, _INTERNAL_ERROR
    finally:
        close_old_connections()  # ... and request_finished: a broken connection is dropped here
        REQUEST_ID.reset(request_id_token)
    start_response(
        _STATUS[status],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(content))),
            ("Access-Control-Allow-Origin", settings.TIDEBASE_CORS_ORIGIN),
            (REQUEST_ID_HEADER, request_id),
            *extra_headers,
        ],
    )
    return [content]
