from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import unquote

import pydantic_core
from django.http import HttpRequest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from tidebase_core.auth import OPEN_SCOPE, Principal
from tidebase_core.exceptions import InvalidJson, InvalidRequest
from tidebase_core.jsonsafe import check_body
from tidebase_core.wire import SET_BY

M = TypeVar("M", bound=BaseModel)


def principal(request: HttpRequest) -> Principal:
    """The caller, set by ``ProtocolMiddleware``. Every route has passed ``scopes.guard``, which
    refuses a request without one, so this never invents a principal."""
    value: Principal = request.tb_principal  # type: ignore[attr-defined]
    return value


def channels_in(request: HttpRequest, channels: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Request channels (``ChannelIn``) as stored dicts, stamped with the caller's scope. The
    open principal (no key configured) is stamped ``open``, not ``admin``: such a channel gets
    resolve tokens only while the API stays open (``services.events.resolver_scopes``)."""
    who = principal(request)
    scope = OPEN_SCOPE if who.kind == "open" else who.scope
    return [{**c.as_dict(), SET_BY: scope} for c in channels or []]


def seg(value: str) -> str:
    """Decode one percent-encoded path segment (see ProtocolMiddleware)."""
    return unquote(value)


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
        data = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from None
    check_body(raw, data)  # NUL characters and numbers beyond a double: 400 before any SQL
    return data


def optional_body(request: HttpRequest, schema: type[M]) -> M:
    """Routes whose body is optional (cancel and recover): no body reads as ``{}``. A body that
    is sent must be a valid one, as on every other route: upstream reads an unparsable body as
    ``{}`` too (§1), but a caller that sent one meant something else (docs/decisions.md)."""
    data: Any = loads(request.body) if request.body else {}
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
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


def usd(value: float | None) -> Decimal | None:
    """A JSON number of dollars as the Decimal it was written as (``0.1`` is ``Decimal("0.1")``)."""
    return None if value is None else Decimal(repr(value))
