"""Approvals inbox: pending gates oldest first, decisions in place, history.

Each card says which policy the gate is under, how far its quorum is, its SLA countdown (read
from the database clock and refreshed by the 3 s poll) and whether the signed-in user may decide
it; ``?mine=1`` keeps only the gates they may approve. Decisions go through
``services.approvals.gate_decide``, the one path every channel uses, so the policy the card
describes is the one the server applies."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from dashboard.forms import GateDecisionForm
from dashboard.selectors import approvals as selectors
from dashboard.selectors.approvals import Viewer
from dashboard.templatetags.dashboard import principal
from dashboard.views._common import HtmxHttpRequest, htmx_target, permission
from tidebase_core.exceptions import DomainError, GateAlreadyResolved
from tidebase_core.models import Gate, GateStatus
from tidebase_core.services import approvals, audit
from tidebase_core.services.approvals import Decision

TEMPLATE = "dashboard/inbox/index.html"


def _viewer(request: HtmxHttpRequest) -> Viewer:
    return selectors.viewer_for(
        request.user, can_resolve=request.user.has_perm("dashboard.resolve_gate"), channel=audit.DASHBOARD
    )


@require_GET
@permission("view_dashboard")
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    """The landing page. Polled every 3 s by ``#inbox-rows`` (pending) and refreshed on
    ``gate-decided`` by ``#history-rows``: each poll renders only its partial. ``?mine=1``: only
    the gates the signed-in user may approve (the poll keeps the filter)."""
    target = htmx_target(request)
    if target == "history-rows":
        return render(request, f"{TEMPLATE}#history-rows", {"history": selectors.decided_gates()})
    mine = request.GET.get("mine") == "1"
    cards = selectors.pending_cards(viewer=_viewer(request), mine=mine)
    if target == "inbox-rows":
        return render(request, f"{TEMPLATE}#inbox-rows", {"cards": cards, "only_mine": mine})
    context = {"cards": cards, "only_mine": mine, "history": selectors.decided_gates()}
    return render(request, TEMPLATE, context)


@require_POST
@permission("resolve_gate")
def gate_decide(request: HtmxHttpRequest, gate_id: str) -> HttpResponse:
    """Approve or reject through ``gate_decide``, the service the API uses. A vote that counts
    towards a quorum answers 200 with "Your approval is counted: 1 of 2"; a refusal of the policy
    (403, 422, 409 already voted) and a losing concurrent decision (409, "already decided by …")
    answer with the card as it now is and the reason."""
    viewer = _viewer(request)
    card = selectors.gate_card(gate_id=gate_id, viewer=viewer)
    if card is None:
        raise Http404("gate not found")
    form = GateDecisionForm(request.POST)
    status, refusal, already, counted = 200, "", False, ""
    if not form.is_valid():
        status = 422
    else:
        assert viewer.voter is not None  # the resolve_gate permission was checked
        try:
            decided = approvals.gate_decide(
                run_id=card.gate.run_id,
                gate_id=card.gate.id,
                decision=form.cleaned_data["decision"],
                voter=viewer.voter,
                payload=form.decision_payload(),
            )
            counted = _counted_text(decided, form.cleaned_data["decision"])
        except GateAlreadyResolved:
            status, already = 409, True
        except DomainError as exc:
            status, refusal = exc.status_code, exc.message
        card = selectors.gate_card(gate_id=gate_id, viewer=viewer) or card
    gate = card.gate
    conflict = _conflict_text(gate, already=already, refusal=refusal) if already or refusal else ""
    if not request.htmx:
        if conflict:
            messages.error(request, conflict)
        elif counted:
            messages.success(request, counted)
        elif status == 200:
            messages.success(request, f"{gate.status.capitalize()} “{gate.name}”.")
        else:
            messages.error(request, "; ".join(str(e) for errs in form.errors.values() for e in errs))
        return redirect("dashboard:inbox")
    context = {"card": card, "gate": gate, "form": form, "conflict": conflict, "counted": counted}
    response = render(request, f"{TEMPLATE}#gate-card", {**context, "mine": status == 200}, status=status)
    if status in (200, 409):
        event = {"gateId": gate.id, "status": gate.status, "actor": _decider(gate)}
        trigger_client_event(response, "gate-decided", {**event, "message": counted} if counted else event)
    return response


def _counted_text(decided: Decision, decision: str) -> str:
    """What the voter is told when their vote did not decide the gate: ``Your approval is
    counted: 1 of 2.`` ("" when it decided). A rejection counts only under a policy whose
    rejections need the quorum too."""
    if decided.final or decided.tally is None:
        return ""
    t = decided.tally
    if decision == GateStatus.APPROVED:
        return f"Your approval is counted: {t.text()}."
    return f"Your rejection is counted: {t.rejections} of {t.needed}."


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
