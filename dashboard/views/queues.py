"""Queues (depth, caps, paused, recent failures) and schedules (next and last fire)."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.selectors import queues as selectors
from dashboard.views._common import HtmxHttpRequest, htmx_target, permission

TEMPLATE = "dashboard/queues/index.html"


@require_GET
@permission("view_dashboard")
def queue_list(request: HtmxHttpRequest) -> HttpResponse:
    context = {"queues": selectors.queue_overview(), "schedules": selectors.schedule_list()}
    if htmx_target(request) == "queue-rows":
        return render(request, f"{TEMPLATE}#queue-rows", context)
    return render(request, TEMPLATE, context)
