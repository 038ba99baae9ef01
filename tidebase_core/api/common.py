from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import unquote

import pydantic_core
from django.http import HttpRequest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from tidebase_core.auth import OPEN, Principal
from tidebase_core.exceptions import Forbidden, InvalidJson, InvalidRequest

M = TypeVar("M", bound=BaseModel)


def principal(request: HttpRequest) -> Principal:
    value: Principal = getattr(request, "tb_principal", OPEN)
    return value


def seg(value: str) -> str:
    """Decode one percent-encoded path segment (see ProtocolMiddleware)."""
    return unquote(value)


def require(request: HttpRequest, capability: str) -> Principal:
    who = principal(request)
    if not getattr(who, capability):
        raise Forbidden(f"this API key ({who.scope}) may not do that", scope=who.scope)
    return who


def idempotency(request: HttpRequest, route: str) -> tuple[str, str] | None:
    """``(scope, key)`` from an ``Idempotency-Key`` header, scoped to the caller and route."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return None
    if len(key) > 200:
        raise InvalidRequest("Idempotency-Key is longer than 200 characters", field="Idempotency-Key")
    return f"{principal(request).label}:{route}", key


def loads(raw: bytes) -> Any:
    """Parse a request body. Integers beyond 64 bits stay exact Python ints (orjson would turn
    them into floats, silently); they are stored and answered exactly (``wire.dumps``)."""
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from None


def optional_body(request: HttpRequest, schema: type[M]) -> M:
    """Routes whose body is optional (§1: cancel and recover treat a bad body as ``{}``)."""
    data: Any = {}
    if request.body:
        try:
            data = pydantic_core.from_json(request.body, allow_inf_nan=False)
        except ValueError:
            data = {}
    if not isinstance(data, dict):
        data = {}
    try:
        return schema.model_validate(data)
    except PydanticValidationError as exc:
        raise InvalidRequest("invalid request body", issues=issues(exc.errors())) from None


def issues(errors: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "code": e.get("type"),
            "path": [p for p in e.get("loc", ()) if p not in ("body", "payload")],
            "message": e.get("msg"),
        }
        for e in errors
    ]
