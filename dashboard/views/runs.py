"""Runs: a filtered, keyset-paged list and the run page with its live region."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling, trigger_client_event

from dashboard.forms import ReasonForm, RunFilterForm
from dashboard.selectors import runs as selectors
from dashboard.views._common import HtmxHttpRequest, htmx_target, permission, querystring
from tidebase_core.exceptions import DomainError
from tidebase_core.models.runs import TERMINAL_STATUSES, RunStatus
from tidebase_core.selectors import cost_figures
from tidebase_core.services.runs import run_cancel, run_recover

LIST_TEMPLATE = "dashboard/runs/index.html"
DETAIL_TEMPLATE = "dashboard/runs/detail.html"


@require_GET
@permission("view_dashboard")
def run_list(request: HtmxHttpRequest) -> HttpResponse:
    form = RunFilterForm(request.GET)
    filters = form.filters()
    page = selectors.run_page(filters=filters, cursor=form.cleaned_data.get("cursor", "") if form.is_valid() else "")
    base = {
        "q": filters.run_id,
        "workflow": filters.workflow,
        "queue": filters.queue,
        "since": request.GET.get("since", ""),
        "until": request.GET.get("until", ""),
    }
    context = {
        "form": form,
        "page": page,
        "filters": filters,
        "statuses": [
            (s.value, page.counts.get(s.value, 0), querystring({**base, "status": s.value})) for s in RunStatus
        ],
        "all_query": querystring(base),
        "next_query": querystring({**base, "status": filters.status, "cursor": page.next_cursor})
        if page.next_cursor
        else "",
        "first_query": querystring({**base, "status": filters.status}),
        "paged": bool(request.GET.get("cursor")),
    }
    if htmx_target(request) == "runs-results":
        return render(request, f"{LIST_TEMPLATE}#runs-results", context)
    return render(request, LIST_TEMPLATE, context)


@require_GET
@permission("view_dashboard")
def run_detail(request: HtmxHttpRequest, run_id: str) -> HttpResponse:
    """The run page. ``#run-live`` polls every 2 s with the event sequence it shows: an unchanged
    run answers 204 after one query; a terminal run answers 286 (stop polling) with its final state."""
    run = selectors.run_live(run_id=run_id)
    if run is None:
        raise Http404("run not found")
    terminal = run.status in TERMINAL_STATUSES
    if htmx_target(request) == "run-live":
        seen_seq, seen_status = request.GET.get("seq", ""), request.GET.get("status", "")
        if seen_seq == str(run.event_seq) and seen_status == run.status:
            return HttpResponseStopPolling() if terminal else HttpResponse(status=204)
        response = render(request, f"{DETAIL_TEMPLATE}#run-live", _detail_context(run, request))
        if terminal:
            response.status_code = HttpResponseStopPolling.status_code
        return response
    return render(request, DETAIL_TEMPLATE, _detail_context(run, request))


def _detail_context(run: object, request: HtmxHttpRequest | None = None) -> dict[str, object]:
    detail = selectors.run_detail(run=run)  # type: ignore[arg-type]
    return {
        "d": detail,
        "run": detail.run,
        "cancel_form": ReasonForm(),
        "figures": cost_figures.run_figures(run_id=detail.run.id),
        "can_manage_budgets": request is not None and request.user.has_perm("tidebase_core.manage_budgets"),
    }


@require_POST
@permission("cancel_run")
def run_cancel_view(request: HtmxHttpRequest, run_id: str) -> HttpResponse:
    form = ReasonForm(request.POST)
    reason = (form.cleaned_data.get("reason") if form.is_valid() else "") or "cancelled from the dashboard"
    return _mutate(
        request,
        run_id,
        lambda: run_cancel(run_id=run_id, reason=reason, actor=f"user:{request.user.get_username()}"),
        "Run cancelled.",
    )


@require_POST
@permission("recover_run")
def run_recover_view(request: HtmxHttpRequest, run_id: str) -> HttpResponse:
    return _mutate(
        request,
        run_id,
        lambda: run_recover(run_id=run_id, reason=f"manual: {request.user.get_username()}"),
        "Recovery requested: a run.resume webhook is on its way.",
    )


def _mutate(request: HtmxHttpRequest, run_id: str, action: object, success: str) -> HttpResponse:
    status, text, level = 200, success, "success"
    try:
        action()  # type: ignore[operator]
    except DomainError as exc:
        if exc.status_code == 404:
            raise Http404(exc.message) from exc
        status, text, level = exc.status_code, exc.message[:1].upper() + exc.message[1:] + ".", "error"
    if not request.htmx:
        (messages.success if level == "success" else messages.error)(request, text)
        return redirect("dashboard:run", run_id=run_id)
    run = selectors.run_live(run_id=run_id)
    if run is None:
        raise Http404("run not found")
    context = {**_detail_context(run, request), "flash": {"level": level, "text": text}}
    response = render(request, f"{DETAIL_TEMPLATE}#run-live", context, status=status)
    trigger_client_event(response, "run-changed", {"runId": run_id, "status": run.status})
    return response
