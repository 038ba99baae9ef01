"""URLconf for protocol paths only (set per request by ProtocolMiddleware): the wire protocol
never depends on the dashboard's or the admin's URL modules, and resolves against fewer
patterns."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.api import api
from tidebase_core.api.events import run_events
from tidebase_core.api.metrics import metrics_view
from tidebase_core.exceptions import InternalError, NotFound
from tidebase_core.wire import error_response

urlpatterns = [
    path("runs/<str:run_id>/events", run_events, name="run-events"),
    path("metrics", metrics_view, name="metrics"),
    path("", api.urls),
]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(NotFound("not found"))


def handler500(request: HttpRequest) -> HttpResponse:
    return error_response(InternalError())
