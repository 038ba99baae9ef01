"""Approvals inbox: pending gates oldest first, decisions in place, history."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from dashboard.forms import GateDecisionForm
from dashboard.selectors import approvals as selectors
from dashboard.templatetags.dashboard import principal
from dashboard.views._common import HtmxHttpRequest, htmx_target, permission
from tidebase_core.exceptions import DomainError, GateAlreadyResolved
from tidebase_core.models import Gate
from tidebase_core.services import approvals, audit, policies

TEMPLATE = "dashboard/inbox/index.html"


@require_GET
@permission("view_dashboard")
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    """The landing page. Polled every 3 s by ``#inbox-rows`` (pending) and refreshed on
    ``gate-decided`` by ``#history-rows``: each poll renders only its partial."""
    target = htmx_target(request)
    if target == "inbox-rows":
        return render(request, f"{TEMPLATE}#inbox-rows", {"gates": selectors.pending_gates()})
    if target == "history-rows":
        return render(request, f"{TEMPLATE}#history-rows", {"history": selectors.decided_gates()})
    context = {"gates": selectors.pending_gates(), "history": selectors.decided_gates()}
    return render(request, TEMPLATE, context)


@require_POST
@permission("resolve_gate")
def gate_decide(request: HtmxHttpRequest, gate_id: str) -> HttpResponse:
    """Approve or reject through ``gate_resolve``, the service the API uses. A losing concurrent
    decision gets 409 and the card as it now is ("already decided by …")."""
    gate = selectors.gate_card(gate_id=gate_id)
    if gate is None:
        raise Http404("gate not found")
    form = GateDecisionForm(request.POST)
    status, refusal, already = 200, "", False
    if not form.is_valid():
        status = 422
    else:
        try:
            approvals.gate_decide(
                run_id=gate.run_id,
                gate_id=gate.id,
                decision=form.cleaned_data["decision"],
                voter=policies.voter_for_user(request.user, channel=audit.DASHBOARD),
                payload=form.decision_payload(),
            )
        except GateAlreadyResolved:
            status, already = 409, True
        except DomainError as exc:
            status, refusal = exc.status_code, exc.message
        gate = selectors.gate_card(gate_id=gate_id) or gate
    conflict = _conflict_text(gate, already=already, refusal=refusal) if already or refusal else ""
    if not request.htmx:
        if conflict:
            messages.error(request, conflict)
        elif status == 200:
            messages.success(request, f"{gate.status.capitalize()} “{gate.name}”.")
        else:
            messages.error(request, "; ".join(str(e) for errs in form.errors.values() for e in errs))
        return redirect("dashboard:inbox")
    response = render(
        request,
        f"{TEMPLATE}#gate-card",
        {
            "gate": gate,
            "form": form,
            "conflict": conflict,
            "mine": status == 200,
        },
        status=status,
    )
    if status in (200, 409):
        trigger_client_event(
            response, "gate-decided", {"gateId": gate.id, "status": gate.status, "actor": _decider(gate)}
        )
    return response


def _decider(gate: Gate) -> str | None:
    """Who decided, as the operator reads it: the authenticated ``decided_by``, never the
    caller's free-text ``actor`` (except for gates decided before ``decided_by`` existed)."""
    return principal(gate.decided_by) if gate.decided_by else gate.actor


def _conflict_text(gate: Gate, *, already: bool, refusal: str) -> str:
    """Why a decision was not recorded, from the gate as it now is: decided first by someone
    else (``already``: ``Already decided by alice (approved).``), or refused (``refusal``, the
    error's message)."""
    actor = _decider(gate)
    if already:
        decided = f"Already decided by {actor} ({gate.status})" if actor else f"Gate already {gate.status} by someone"
    else:
        decided = f"Already decided by {actor}" if actor else f"{refusal[:1].upper()}{refusal[1:]}"
    return f"{decided}. Your decision was not recorded."
