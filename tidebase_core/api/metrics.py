"""``GET /metrics``: the Prometheus exposition (``tidebase_core.metrics``), behind the API's
auth like every protocol route: an ``operator`` key (or admin, or the env key; open when the API
is open). Prometheus sends it with ``authorization: {credentials: <key>}`` (docs/observability.md)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from tidebase_core import metrics, wire
from tidebase_core.api.scopes import scoped


@csrf_exempt  # a protocol path: never demand CSRF tokens, answer 405 JSON instead
@scoped("metrics")
def metrics_view(request: HttpRequest) -> HttpResponseBase:
    if request.method not in ("GET", "HEAD"):
        return wire.json_response({"error": "method not allowed", "code": "method_not_allowed"}, 405)
    if not metrics.ENABLED:
        body = {"error": "metrics are turned off (TIDEBASE_METRICS=0)", "code": "metrics_disabled"}
        return wire.json_response(body, 404)
    response = HttpResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
