"""The NinjaAPI instance: routers, a fast JSON parser, and the one error policy — every failure
is a JSON body with a human ``error`` and a machine ``code``; nothing escapes as an HTML 500."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DataError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser

from tidebase_core.api import gates, queues, runs, state, steps
from tidebase_core.api.common import issues, loads
from tidebase_core.exceptions import DomainError, InvalidRequest
from tidebase_core.wire import json_response

logger = logging.getLogger("tidebase.api")


class JsonParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        data = loads(request.body)
        if not isinstance(data, dict):
            # A body of only optional fields would otherwise validate as {} and write.
            raise InvalidRequest("the request body must be a JSON object")
        return data


api = NinjaAPI(
    title="Tidebase",
    version="0.7.0",
    description="The Tidebase wire protocol (PROTOCOL.md), served by Tidebase for Django.",
    parser=JsonParser(),
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    urls_namespace="tidebase",
)
api.add_router("/runs", runs.router)
api.add_router("/runs", steps.router)
api.add_router("/runs", gates.router)
api.add_router("/runs", state.router)
api.add_router("/queues", queues.router)
api.add_router("/schedules", queues.schedules_router)


@api.get("/health", tags=["health"], operation_id="health")
def health(request: HttpRequest) -> HttpResponse:
    return json_response({"ok": True})


@api.exception_handler(DomainError)
def domain_error(request: HttpRequest, exc: DomainError) -> HttpResponse:
    return json_response(exc.body(), exc.status_code)


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    if not request.body and any("body" in (e.get("loc") or ()) for e in exc.errors):
        return json_response({"error": "a JSON request body is required", "code": "missing_body"}, 400)
    return json_response(
        {"error": "invalid request body", "code": "invalid_request", "issues": issues(exc.errors)}, 400
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, DomainError):  # raised by JsonParser, wrapped by ninja
        return domain_error(request, exc.__cause__)
    code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return json_response({"error": str(exc), "code": code}, exc.status_code)


@api.exception_handler(DataError)
def data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    # e.g. a NUL character in a JSON string, which Postgres jsonb cannot store
    return json_response(
        {"error": f"value cannot be stored: {exc.__cause__ or exc}".strip(), "code": "unsupported_value"}, 400
    )


@api.exception_handler(Exception)
def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("api.unhandled", extra={"path": request.path})
    return json_response({"error": "internal server error", "code": "internal_error"}, 500)
