"""Workers and beats with their last heartbeat, and a warning when nothing is delivering
webhooks, ticking the reconciler, or polling a queue that has ready runs (``webhooks.health``)."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard.views._common import HtmxHttpRequest, htmx_target, permission
from webhooks import health
from webhooks.heartbeat import stale_s

TEMPLATE = "dashboard/processes/index.html"


@require_GET
@permission("view_dashboard")
def process_list(request: HtmxHttpRequest) -> HttpResponse:
    rows = health.processes()
    alive = {kind: sum(1 for r in rows if r.kind == kind and r.state == "alive") for kind in ("worker", "beat")}
    context = {
        "processes": rows,
        "alive": alive,
        "stalled": health.stalled_queues(),
        "stale_s": stale_s(),
    }
    if htmx_target(request) == "process-rows":
        return render(request, f"{TEMPLATE}#process-rows", context)
    return render(request, TEMPLATE, context)
