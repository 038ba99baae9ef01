"""Approval policies: who may decide which gates, how many must agree, the SLA, where operators
are told. Everyone with the dashboard may read them (an approver should know why a gate is not
theirs); admins (``tidebase_core.manage_policies``) create, edit, enable and disable them. Every
change goes through ``services.policies.policy_save``, which keeps the whole new version and
appends it to the audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from dashboard.forms import PolicyForm
from dashboard.selectors import policies as selectors
from dashboard.views._common import HtmxHttpRequest, permission
from tidebase_core.exceptions import DomainError, NotFound
from tidebase_core.models import ApprovalPolicy
from tidebase_core.services import audit
from tidebase_core.services.policies import BODY_FIELDS, policy_save

MANAGE = "tidebase_core.manage_policies"
LIST_TEMPLATE = "dashboard/policies/index.html"
DETAIL_TEMPLATE = "dashboard/policies/detail.html"


def _require_manage(request: HtmxHttpRequest) -> None:
    if not request.user.has_perm(MANAGE):
        raise PermissionDenied("you need the manage policies permission")


def _who(request: HtmxHttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def _form(data: Any = None, *, policy: ApprovalPolicy | None = None) -> PolicyForm:
    initial = PolicyForm.initial_for(policy) if policy is not None else None
    return PolicyForm(data, initial=initial, groups=selectors.group_names(), keys=selectors.key_names())


def _list_page(request: HtmxHttpRequest, form: PolicyForm, *, status: int = 200) -> HttpResponse:
    context = {
        "policies": selectors.policy_list(),
        "form": form,
        "can_manage": request.user.has_perm(MANAGE),
    }
    return render(request, LIST_TEMPLATE, context, status=status)


def _detail_page(
    request: HtmxHttpRequest, policy: ApprovalPolicy, form: PolicyForm, *, status: int = 200
) -> HttpResponse:
    fields = [(selectors.LABELS[n], selectors.show(n, getattr(policy, n))) for n in BODY_FIELDS]
    context = {
        "policy": policy,
        "fields": fields,
        "history": selectors.policy_history(policy_id=policy.id),
        "form": form,
        "can_manage": request.user.has_perm(MANAGE),
    }
    return render(request, DETAIL_TEMPLATE, context, status=status)


def _policy_or_404(policy_id: int) -> ApprovalPolicy:
    policy = selectors.policy_get(policy_id=policy_id)
    if policy is None:
        raise Http404("approval policy not found")
    return policy


def _save(request: HtmxHttpRequest, form: PolicyForm, *, policy_id: int | None) -> ApprovalPolicy | None:
    """``policy_save`` with the form's body; its refusals (a bad combination, a taken name)
    become form errors on the field they name (None returned)."""
    try:
        return policy_save(policy_id=policy_id, body=form.body(), actor=_who(request), channel=audit.DASHBOARD)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except DomainError as exc:
        name = exc.extra.get("field")
        form.add_error(name if name in form.fields else None, exc.message)
        return None


@require_GET
@permission("view_dashboard")
def policy_list(request: HtmxHttpRequest) -> HttpResponse:
    return _list_page(request, _form())


@require_POST
@permission("view_dashboard")
def policy_create(request: HtmxHttpRequest) -> HttpResponseBase:
    _require_manage(request)
    form = _form(request.POST)
    policy = _save(request, form, policy_id=None) if form.is_valid() else None
    if policy is None:
        return _list_page(request, form, status=422)
    messages.success(request, f"Policy “{policy.name}” created (v{policy.version}).")
    return redirect("dashboard:policy", policy_id=policy.id)


@require_GET
@permission("view_dashboard")
def policy_detail(request: HtmxHttpRequest, policy_id: int) -> HttpResponse:
    policy = _policy_or_404(policy_id)
    return _detail_page(request, policy, _form(policy=policy))


@require_POST
@permission("view_dashboard")
def policy_update(request: HtmxHttpRequest, policy_id: int) -> HttpResponseBase:
    _require_manage(request)
    policy = _policy_or_404(policy_id)
    form = _form(request.POST, policy=policy)
    saved = _save(request, form, policy_id=policy.id) if form.is_valid() else None
    if saved is None:
        return _detail_page(request, policy, form, status=422)
    messages.success(request, f"Policy “{saved.name}” saved as v{saved.version}.")
    return redirect("dashboard:policy", policy_id=saved.id)


@require_POST
@permission("view_dashboard")
def policy_enable(request: HtmxHttpRequest, policy_id: int) -> HttpResponseBase:
    """Enable (``enabled=1``) or disable (``enabled=0``) a policy: a new version like any edit.
    A disabled policy matches no new gate; gates already under it keep it."""
    _require_manage(request)
    policy = _policy_or_404(policy_id)
    value = request.POST.get("enabled")
    if value not in ("0", "1"):
        messages.error(request, "Say enabled=1 or enabled=0.")
        return _detail_page(request, policy, _form(policy=policy), status=422)
    try:
        saved = policy_save(policy_id=policy.id, body={"enabled": value == "1"}, actor=_who(request))
    except NotFound as exc:
        raise Http404(exc.message) from exc
    state = "enabled" if saved.enabled else "disabled"
    messages.success(request, f"Policy “{saved.name}” {state} (v{saved.version}).")
    return redirect("dashboard:policy", policy_id=saved.id)
