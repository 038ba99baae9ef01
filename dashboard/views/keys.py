"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from dashboard.forms import ApiKeyForm
from dashboard.selectors import keys as selectors
from dashboard.services import api_key_create, api_key_revoke
from dashboard.views._common import HtmxHttpRequest, permission
from tidebase_core.auth import access
from tidebase_core.exceptions import Conflict, NotFound

TEMPLATE = "dashboard/keys/index.html"


def _context(**extra: object) -> dict[str, object]:
    """The key list and what the API asks of clients (``TIDEBASE_AUTH``), computed from the list
    itself: any key row, revoked or not, means keys are in use."""
    keys = selectors.api_keys()
    return {"keys": keys, "access": access(keys_in_use=bool(keys)), **extra}


@require_GET
@permission("manage_api_keys")
def key_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, TEMPLATE, _context(form=ApiKeyForm()))


@require_POST
@permission("manage_api_keys")
def key_create(request: HtmxHttpRequest) -> HttpResponse:
    """Renders the page (not a redirect) so the secret is shown exactly once, in this response."""
    form = ApiKeyForm(request.POST)
    created = None
    status = 200
    if form.is_valid():
        try:
            created = api_key_create(name=form.cleaned_data["name"], scope=form.cleaned_data["scope"])
            form = ApiKeyForm()
        except Conflict as exc:
            form.add_error("name", exc.message)
    if not form.is_valid() and created is None:
        status = 422
    response = render(request, TEMPLATE, _context(form=form, created=created), status=status)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@permission("manage_api_keys")
def key_revoke(request: HtmxHttpRequest, key_id: str) -> HttpResponse:
    try:
        key = api_key_revoke(key_id=key_id)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    messages.success(request, f"Revoked “{key.name}”. Agents using it are refused within seconds.")
    keys = selectors.api_keys()
    if all(k.revoked_at is not None for k in keys) and access(keys_in_use=bool(keys)).required:
        messages.warning(
            request,
            "No active key remains. The API stays closed: every client gets 401 until you create a "
            "key (or set TIDEBASE_AUTH=open).",
        )
    return redirect("dashboard:keys")
