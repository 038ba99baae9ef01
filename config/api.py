"""The NinjaAPI instance: routers, a fast JSON parser, and the one error policy — every failure
is a JSON body with a human ``error`` and a machine ``code``; nothing escapes as an HTML 500."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DataError, OperationalError
from django.http import HttpRequest, HttpResponse
from ninja import Swagger
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser

from tidebase_core.api import budgets, gates, queues, runs, scopes, state, steps
from tidebase_core.api.common import issues, loads
from tidebase_core.api.openapi import DocumentedAPI
from tidebase_core.db import UNSTORABLE, operational_answer
from tidebase_core.exceptions import (
    DomainError,
    InternalError,
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    MissingBody,
    NotFound,
    NotReady,
    UnsupportedValue,
)
from tidebase_core.wire import error_response, json_response

logger = logging.getLogger("tidebase.api")


class JsonParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        data = loads(request.body)
        if not isinstance(data, dict):
            # A body of only optional fields would otherwise validate as {} and write.
            raise InvalidRequest("the request body must be a JSON object")
        return data


api = DocumentedAPI(  # the OpenAPI document is completed in tidebase_core.api.openapi
    title="Tidebase",
    version="0.7.0",
    description="The Tidebase wire protocol (PROTOCOL.md), served by Tidebase for Django.",
    parser=JsonParser(),
    docs_url="/api/docs",
    # Swagger UI's assets come from the ninja app's static files; without validatorUrl=None it
    # would also fetch a badge from validator.swagger.io on any host but localhost.
    docs=Swagger(settings={"validatorUrl": None}),
    openapi_url="/api/openapi.json",
    urls_namespace="tidebase",
)
api.add_router("/runs", runs.router)
api.add_router("/runs", steps.router)
api.add_router("/runs", gates.router)
api.add_router("/runs", state.router)
api.add_router("/queues", queues.router)
api.add_router("/schedules", queues.schedules_router)
api.add_router("/runs", budgets.runs_router)
api.add_router("/budgets", budgets.router)
# Every route is checked against the scope table before its body is parsed; a route missing
# from tidebase_core.api.scopes.ROUTE_SCOPES stops the server from starting.
api.add_decorator(scopes.guard, mode="view")


@api.get("/health", tags=["health"], operation_id="health")
def health(request: HttpRequest) -> HttpResponse:
    return json_response({"ok": True})


@api.get("/ready", tags=["health"], operation_id="ready")
def ready(request: HttpRequest) -> HttpResponse:
    # Readiness, unlike /health (answered by the gateway on the event loop), asks the database,
    # the broker and the heartbeats; it says which part fails (webhooks.health).
    from webhooks.health import readiness

    ok, checks = readiness()
    if ok:
        return json_response({"ready": True, "checks": checks})
    failing = [name for name, check in checks.items() if not check["ok"] and check.get("required", True)]
    return error_response(NotReady(f"not ready: {', '.join(failing)}", ready=False, checks=checks))


@api.exception_handler(DomainError)
def domain_error(request: HttpRequest, exc: DomainError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    if not request.body and any("body" in (e.get("loc") or ()) for e in exc.errors):
        return error_response(MissingBody("a JSON request body is required"))
    return error_response(InvalidRequest("invalid request body", issues=issues(exc.errors)))


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, DomainError):  # raised by JsonParser, wrapped by ninja
        return domain_error(request, exc.__cause__)
    kind = {400: InvalidJson, 404: NotFound, 405: MethodNotAllowed}.get(exc.status_code, DomainError)
    error = kind(str(exc))  # ninja's own message (e.g. "Cannot parse request body"), not a database's
    error.status_code = exc.status_code
    return error_response(error)


@api.exception_handler(DataError)
def data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    # A value Postgres refuses that request validation let through (JSON bodies are checked
    # before any SQL, jsonsafe.py; e.g. a NUL in a path segment). The database's message quotes
    # the statement, so it goes to the log, never into the answer (issue #12, item 8).
    logger.info("api.unstorable", extra={"path": request.path, "error": str(exc)})
    return domain_error(request, UnsupportedValue(UNSTORABLE))


@api.exception_handler(OperationalError)
def operational_error(request: HttpRequest, exc: OperationalError) -> HttpResponse:
    # A lock wait past TIDEBASE_LOCK_TIMEOUT_MS, a statement past TIDEBASE_STATEMENT_TIMEOUT_MS or
    # no pooled connection in time is transient: 503 with Retry-After (the transaction rolled back).
    answer = operational_answer(exc, request.path)
    return unexpected(request, exc) if answer is None else domain_error(request, answer)


@api.exception_handler(Exception)
def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("api.unhandled", extra={"path": request.path})
    return error_response(InternalError())
