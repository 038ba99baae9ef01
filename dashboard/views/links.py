"""One-click Approve/Reject links from approval emails (``services.links``).

The link is its recipient's capability, so no login is needed; but a browser signed in as
someone else is refused (``link_other_user``) rather than deciding for either of them. A GET
never decides, because mail scanners and link previews fetch every URL in a message: it shows the
gate, the decision and "as alice", with a POST form (CSRF-protected like every dashboard form)
that decides. Every answer is the same page with the outcome's code in ``data-code`` and the
status of the error it shows.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from dashboard.views._common import HtmxHttpRequest
from tidebase_core.exceptions import CommentRequired, DomainError, InvalidRequest
from tidebase_core.services import links

TEMPLATE = "dashboard/links/decide.html"


class LinkConfirmForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000, strip=True)


@never_cache
@require_http_methods(["GET", "POST"])
def gate_link(request: HtmxHttpRequest, token: str) -> HttpResponse:
    """GET: what the link will do (``links.link_open``), or why it cannot. POST: decide
    (``links.link_decide``) and show the outcome; a comment that is too long (400), or missing where
    the policy requires one (422), shows the form again with the error."""
    if request.method == "GET":
        return _confirm(request, token, LinkConfirmForm())
    form = LinkConfirmForm(request.POST)
    if not form.is_valid():
        message = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        return _confirm(request, token, form, error=InvalidRequest(message, field="comment"))
    try:
        decision = links.link_decide(token=token, signed_in=request.user, comment=form.cleaned_data["comment"])
    except CommentRequired as exc:
        return _confirm(request, token, form, error=exc)
    except DomainError as exc:
        return _page(request, exc.code, message=exc.message, status=exc.status_code)
    return _page(request, "decided" if decision.final else "counted", result=decision)


def _confirm(
    request: HtmxHttpRequest, token: str, form: LinkConfirmForm, error: DomainError | None = None
) -> HttpResponse:
    """The confirmation form (with ``error`` when a POST was refused for its input), or why the
    link cannot decide."""
    try:
        offer = links.link_open(token=token, signed_in=request.user)
    except DomainError as exc:
        return _page(request, exc.code, message=exc.message, status=exc.status_code)
    if error is not None:
        return _page(request, error.code, message=error.message, status=error.status_code, offer=offer, form=form)
    return _page(request, "confirm", offer=offer, form=form)


def _page(request: HtmxHttpRequest, code: str, *, status: int = 200, **context: Any) -> HttpResponse:
    return render(request, TEMPLATE, {"code": code, **context}, status=status)
