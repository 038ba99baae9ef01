"""The two hottest routes without ninja's per-request machinery.

``steps/begin`` and ``steps/:id/complete`` are most of a workflow's traffic. Here they skip
URL resolution and ninja's parameter pipeline: the body is validated by the *same* pydantic
schema with pydantic-core's JSON parser and handed to the *same* view function ninja routes
to. Anything unusual (invalid body, a non-JSON content) falls through to ninja, so errors are
rendered in exactly one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.db import DataError
from django.http import HttpRequest, HttpResponse
from pydantic import BaseModel, ValidationError

from tidebase_core.api import steps
from tidebase_core.api.schemas import StepBeginIn, StepCompleteIn
from tidebase_core.exceptions import DomainError
from tidebase_core.wire import json_response

Route = tuple[re.Pattern[str], type[BaseModel], Callable[..., HttpResponse]]

ROUTES: list[Route] = [
    (re.compile(r"^/runs/(?P<run_id>[^/]+)/steps/begin$"), StepBeginIn, steps.begin_step),
    (re.compile(r"^/runs/(?P<run_id>[^/]+)/steps/(?P<step_id>[^/]+)/complete$"), StepCompleteIn, steps.complete_step),
]


def try_fast(request: HttpRequest) -> HttpResponse | None:
    """Serve a hot route, or return None to let the normal stack handle the request."""
    if request.method != "POST":
        return None
    for pattern, schema, view in ROUTES:
        match = pattern.match(request.path_info)
        if match is None:
            continue
        try:
            payload = schema.model_validate_json(request.body)
        except (ValidationError, ValueError):
            return None
        kwargs: dict[str, Any] = match.groupdict()
        try:
            return view(request, payload=payload, **kwargs)
        except DomainError as exc:
            return json_response(exc.body(), exc.status_code)
        except DataError:
            return None  # re-run through ninja, which renders storage errors
    return None
