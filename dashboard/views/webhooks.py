"""Webhook log: channel deliveries and recovery attempts, with redelivery of dead letters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from dashboard.selectors import webhooks as selectors
from dashboard.views._common import HtmxHttpRequest, htmx_target, permission
from tidebase_core.exceptions import DomainError
from tidebase_core.models import DeliveryStatus

TEMPLATE = "dashboard/webhooks/index.html"
KINDS = ("channel", "recovery", "notification")
STATUSES = tuple(DeliveryStatus.values)


def redeliver_service() -> Callable[..., Any] | None:
    """The webhooks app's ``delivery_redeliver(kind, id, actor)``, once it exists."""
    try:
        from webhooks.services.redelivery import delivery_redeliver
    except ImportError:
        return None
    return delivery_redeliver


@require_GET
@permission("view_dashboard")
def webhook_list(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    kind = request.GET.get("kind", "")
    status = status if status in STATUSES else ""
    kind = kind if kind in KINDS else ""
    context = {
        "rows": selectors.deliveries(status=status, kind=kind),
        "status": status,
        "kind": kind,
        "statuses": STATUSES,
        "can_redeliver": redeliver_service() is not None,
    }
    if htmx_target(request) == "webhook-rows":
        return render(request, f"{TEMPLATE}#webhook-rows", context)
    return render(request, TEMPLATE, {**context, "counts": selectors.delivery_counts()})


@require_POST
@permission("redeliver_webhook")
def webhook_redeliver(request: HtmxHttpRequest, kind: str, delivery_id: str) -> HttpResponse:
    if kind not in KINDS:
        raise Http404("unknown delivery kind")
    service = redeliver_service()
    if service is None:
        return HttpResponse("Redelivery is not available in this installation.", status=501)
    try:
        service(kind, delivery_id, f"user:{request.user.get_username()}")
        level, text, status = messages.SUCCESS, "Redelivery queued.", 200
    except LookupError as exc:  # webhooks.services.redelivery.DeliveryNotFound
        raise Http404("delivery not found") from exc
    except DomainError as exc:
        if exc.status_code == 404:
            raise Http404(exc.message) from exc
        level, text, status = messages.ERROR, exc.message, exc.status_code
    if not request.htmx:
        messages.add_message(request, level, text)
        return redirect("dashboard:webhooks")
    row = next((r for r in selectors.deliveries(kind=kind, limit=500) if r.id == delivery_id), None)
    response = render(
        request,
        f"{TEMPLATE}#webhook-row",
        {"row": row, "can_redeliver": True, "flash": text, "flash_level": "success" if status == 200 else "error"},
        status=status,
    )
    trigger_client_event(response, "webhook-redelivered", {"id": delivery_id})
    return response
