"""The two hottest routes, served straight from WSGI.

``steps/begin`` and ``steps/:id/complete`` are most of a workflow's traffic. For a plain,
well-formed request the server's Python work used to be mostly framework: building a
``WSGIRequest``, the signals, URL resolution, ninja's parameter pipeline, ``HttpResponse``.
Here such a request is answered with the *same* pydantic schema and the *same* function the
ninja view calls (``begin_body``/``complete_body``), and nothing else.

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
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.db import DataError, OperationalError, close_old_connections
from pydantic import BaseModel

from tidebase_core import auth
from tidebase_core.api import scopes
from tidebase_core.api.common import loads
from tidebase_core.api.schemas import StepBeginIn, StepCompleteIn
from tidebase_core.api.steps import begin_body, complete_body
from tidebase_core.db import operational_answer
from tidebase_core.exceptions import DomainError
from tidebase_core.middleware import bearer_token
from tidebase_core.wire import dumps

logger = logging.getLogger("tidebase.api")

# Unreserved characters only: a segment that needs percent-decoding takes the normal route.
_SEGMENT = r"([A-Za-z0-9_.~-]+)"
_BEGIN = re.compile(rf"/runs/{_SEGMENT}/steps/begin")
_COMPLETE = re.compile(rf"/runs/{_SEGMENT}/steps/{_SEGMENT}/complete")

_STATUS = {code.value: f"{code.value} {code.phrase}" for code in HTTPStatus}

StartResponse = Callable[..., Any]


def _begin(groups: tuple[str, ...], payload: Any) -> dict[str, object]:
    return begin_body(groups[0], payload)


def _complete(groups: tuple[str, ...], payload: Any) -> dict[str, object]:
    return complete_body(groups[0], groups[1], payload)


ROUTES: list[tuple[re.Pattern[str], str, type[BaseModel], Callable[[tuple[str, ...], Any], dict[str, object]]]] = [
    (_BEGIN, "begin_step", StepBeginIn, _begin),
    (_COMPLETE, "complete_step", StepCompleteIn, _complete),
]
"""(path, operation id in ``scopes.ROUTE_SCOPES``, body schema, handler)."""


def _match(environ: dict[str, Any]) -> tuple[Any, ...] | None:
    if environ.get("REQUEST_METHOD") != "POST":
        return None
    path: str = environ.get("PATH_INFO", "")
    if not path.startswith("/runs/"):
        return None
    for pattern, operation_id, schema, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return match.groups(), operation_id, schema, handler
    return None


def _plain(environ: dict[str, Any], operation_id: str) -> int | None:
    """The body length of a request the hot path may answer, or None to leave it to Django."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw_uri is None or "%" in raw_uri.partition("?")[0]:
        return None  # cannot prove the path was not percent-encoded
    content_type: str = environ.get("CONTENT_TYPE") or "application/json"
    if not content_type.startswith("application/json"):
        return None
    length: str = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit() or int(length) > min(settings.TIDEBASE_MAX_BODY_BYTES, settings.TIDEBASE_LARGE_BODY_BYTES):
        return None  # the framework path answers 413, or admits a large body (LargeBodies)
    header: str | None = environ.get("HTTP_AUTHORIZATION")
    who = auth.authenticate(bearer_token(header))
    if who is None or not scopes.allows(who, operation_id):
        return None  # Django answers 401 or 403 (the same route table)
    return int(length)


def serve(environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
    """Answer a plain step begin/complete, or return None (Django serves the request)."""
    route = _match(environ)
    if route is None:
        return None
    groups, operation_id, schema, handler = route
    close_old_connections()  # what Django's request_started does, before any query (auth's)
    extra_headers: list[tuple[str, str]] = []
    try:
        length = _plain(environ, operation_id)
        if length is None:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # a fall-through re-reads it
        try:  # exactly what ninja does: its parser (``loads``), then the schema, in Python mode
            data = loads(body)
            payload = schema.model_validate(data) if isinstance(data, dict) else None
        except (DomainError, ValueError):
            payload = None
        if payload is None:
            return None  # ninja renders the error (invalid JSON, unstorable value, wrong type...)
        try:
            status, data = 200, handler(groups, payload)
        except DomainError as exc:
            status, data, extra_headers = exc.status_code, exc.body(), exc.headers()
        except DataError:
            return None  # the statement changed nothing; ninja re-runs it and renders the error
        content = dumps(data)
    except OperationalError as exc:  # a lock, statement or pool timeout (auth's query too): 503
        answer = operational_answer(exc, environ.get("PATH_INFO", ""))
        if answer is None:
            logger.exception("api.unhandled", extra={"path": environ.get("PATH_INFO")})
            status, content = 500, dumps({"error": "internal server error", "code": "internal_error"})
        else:
            status, content, extra_headers = answer.status_code, dumps(answer.body()), answer.headers()
    except Exception:
        logger.exception("api.unhandled", extra={"path": environ.get("PATH_INFO")})
        status, content = 500, dumps({"error": "internal server error", "code": "internal_error"})
    finally:
        close_old_connections()  # ... and request_finished: a broken connection is dropped here
    start_response(
        _STATUS[status],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(content))),
            ("Access-Control-Allow-Origin", settings.TIDEBASE_CORS_ORIGIN),
            *extra_headers,
        ],
    )
    return [content]
