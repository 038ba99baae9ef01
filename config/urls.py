from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from config.api import api
from tidebase_core.api.slack import slack_interactions
from tidebase_core.exceptions import InternalError, NotFound
from tidebase_core.middleware import is_protocol_path
from tidebase_core.wire import error_response

# Protocol paths are routed by config.api_urls (ProtocolMiddleware sets request.urlconf);
# the ninja URLs are included here for the OpenAPI pages at /api/docs and /api/openapi.json.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    path("slack/interactions", slack_interactions, name="slack-interactions"),  # signed by Slack, no API key
    path("", include("dashboard.root_urls")),
    path("", api.urls),
]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_protocol_path(request.path_info):
        return error_response(NotFound("not found"))
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception("not found"))


def handler500(request: HttpRequest) -> HttpResponse:
    if is_protocol_path(request.path_info):
        return error_response(InternalError())
    from django.views.defaults import server_error

    return server_error(request)
