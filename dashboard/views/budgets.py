"""Budgets: the shared budgets (per workflow per day and month, global per day) with their spend
and version history, the runs parked at a budget, and, for admins (``manage_budgets``), a new
version of a budget or a run's own budget. Every change is a new version row; raising a limit
lets the runs parked at it go on (services.budgets)."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from dashboard.views._common import HtmxHttpRequest, permission
from tidebase_core.exceptions import DomainError
from tidebase_core.models.budgets import SHARED_SCOPES, BudgetScope
from tidebase_core.selectors import budgets as selectors
from tidebase_core.services import budgets as services

TEMPLATE = "dashboard/budgets/index.html"
MANAGE = "tidebase_core.manage_budgets"
MONEY = {"min_value": Decimal(0), "max_value": Decimal(999_999_999), "max_digits": 19, "decimal_places": 10}


class BudgetForm(forms.Form):
    scope = forms.ChoiceField(choices=[(s.value, BudgetScope(s).label) for s in SHARED_SCOPES])
    workflow = forms.CharField(required=False, max_length=1000, help_text="Empty for the global budget.")
    limit_usd = forms.DecimalField(
        label="Limit (USD)",
        required=False,
        help_text="Empty removes the budget.",
        **MONEY,  # type: ignore[arg-type]
    )
    note = forms.CharField(required=False, max_length=500)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("scope") != BudgetScope.GLOBAL_DAY and not (data.get("workflow") or "").strip():
            self.add_error("workflow", "A workflow budget needs the workflow's name.")
        return data


class RunBudgetForm(forms.Form):
    budget_usd = forms.DecimalField(
        label="Run budget (USD)",
        required=False,
        help_text="Empty removes it.",
        **MONEY,  # type: ignore[arg-type]
    )


def _who(request: HtmxHttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def _context(request: HtmxHttpRequest, form: BudgetForm) -> dict[str, object]:
    return {
        "form": form,
        "budgets": selectors.current_budgets(),
        "history": selectors.budget_history(),
        "parked": selectors.parked_runs(),
        "can_manage": request.user.has_perm(MANAGE),
    }


@require_GET
@permission("view_dashboard")
def budget_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, TEMPLATE, _context(request, BudgetForm()))


@require_POST
@permission("view_dashboard")
def budget_set(request: HtmxHttpRequest) -> HttpResponseBase:
    if not request.user.has_perm(MANAGE):
        raise PermissionDenied("you need the manage budgets permission")
    form = BudgetForm(request.POST)
    if not form.is_valid():
        return render(request, TEMPLATE, _context(request, form), status=422)
    data = form.cleaned_data
    try:
        version = services.budget_set(
            scope=data["scope"],
            workflow=data["workflow"],
            limit_usd=data["limit_usd"],
            by=_who(request),
            note=data["note"] or "",
        )
    except DomainError as exc:
        form.add_error(None, exc.message)
        return render(request, TEMPLATE, _context(request, form), status=422)
    what = "removed" if version.limit_usd is None else f"set to ${version.limit_usd.normalize():f}"
    messages.success(request, f"{BudgetScope(version.scope).label} budget {what} (version {version.version}).")
    return redirect("dashboard:budgets")


@require_POST
@permission("view_dashboard")
def run_budget_set(request: HtmxHttpRequest, run_id: str) -> HttpResponseBase:
    if not request.user.has_perm(MANAGE):
        raise PermissionDenied("you need the manage budgets permission")
    form = RunBudgetForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("dashboard:run", run_id=run_id)
    try:
        services.run_budget_set(run_id=run_id, budget_usd=form.cleaned_data["budget_usd"], by=_who(request))
    except DomainError as exc:
        if exc.status_code == 404:
            raise Http404(exc.message) from exc
        messages.error(request, exc.message)
        return redirect("dashboard:run", run_id=run_id)
    messages.success(request, "Run budget saved.")
    return redirect("dashboard:run", run_id=run_id)
