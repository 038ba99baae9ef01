"""The dashboard's Storage page (admins): what the data takes per workflow, what the retention
policy would delete now, and the policy rows. Mounted under /dashboard/storage/."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from retention import selectors, services
from retention.forms import LABELS, PolicyForm
from retention.models import RetentionPolicy
from retention.policy import FIELDS, Policy

TEMPLATE = "retention/storage.html"
PERMISSION = "retention.manage_retention"

CATEGORY_LABELS = {
    "completed": "Completed runs",
    "failed": "Failed runs",
    "cancelled": "Cancelled runs",
    "usage": "Raw usage records",
    "rollups": "Daily usage rollup rows",
    "deliveries": "Webhook deliveries",
    "state": "State versions",
}


def admin_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Login required (else the login page), then the Storage permission (else 403)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.has_perm(PERMISSION):
            raise PermissionDenied("you need the manage retention permission")
        return view(request, *args, **kwargs)

    return wrapped


def _context(form: PolicyForm) -> dict[str, Any]:
    policy = Policy.load()
    counts = selectors.deletions(policy)
    defaults = policy.effective("")  # a workflow no exact name or literal pattern matches
    return {
        "form": form,
        "storage": selectors.storage(policy),
        "deletions": [(CATEGORY_LABELS[c], count) for c, count in counts.items()],
        "cap": selectors.COUNT_CAP,
        "policies": [(p, [getattr(p, f) for f in FIELDS]) for p in selectors.policies()],
        "field_labels": [LABELS[f] for f in FIELDS],
        "defaults": [(LABELS[f], defaults.values[f], defaults.sources[f]) for f in FIELDS],
        "enabled": any(policy.active(f) for f in FIELDS),
        "interval_s": settings.TIDEBASE_RETENTION_INTERVAL_S,
        "usage_mark": services.usage_pruned_through(),
    }


@require_GET
@admin_required
def storage(request: HttpRequest) -> HttpResponse:
    form = PolicyForm()
    edit = request.GET.get("edit", "")
    if edit.isdigit():
        row = RetentionPolicy.objects.filter(id=int(edit)).first()
        if row is not None:
            form = PolicyForm(initial={"workflow": row.workflow, **{f: getattr(row, f) for f in FIELDS}})
    return render(request, TEMPLATE, _context(form))


@require_POST
@admin_required
def policy_save(request: HttpRequest) -> HttpResponseBase:
    form = PolicyForm(request.POST)
    if not form.is_valid():
        return render(request, TEMPLATE, _context(form), status=422)
    row = services.policy_save(
        workflow=form.cleaned_data["workflow"], values=form.values(), by=f"user:{request.user.get_username()}"
    )
    messages.success(request, f"Saved the retention policy for “{row.workflow}”. The next pass applies it.")
    return redirect("dashboard:storage")


@require_POST
@admin_required
def policy_delete(request: HttpRequest, policy_id: int) -> HttpResponseBase:
    row = services.policy_delete(policy_id=policy_id)
    if row is None:
        raise Http404("no such retention policy")
    messages.success(request, f"Removed the retention policy for “{row.workflow}”.")
    return redirect("dashboard:storage")
