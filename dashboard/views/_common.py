"""What every dashboard view shares: the request type, permission checks, small helpers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Concatenate, ParamSpec, cast

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


P = ParamSpec("P")
View = Callable[Concatenate[HtmxHttpRequest, P], HttpResponseBase]


def permission(codename: str) -> Callable[[View[P]], View[P]]:
    """Login required (anonymous → the login page; an htmx request is told to redirect the
    whole page), then ``dashboard.<codename>`` required (→ 403, never a redirect loop)."""

    def decorator(view: View[P]) -> View[P]:
        @wraps(view)
        def wrapped(request: HtmxHttpRequest, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
            if not request.user.is_authenticated:
                if request.htmx:
                    from django.conf import settings

                    return HttpResponseClientRedirect(settings.LOGIN_URL)
                return redirect_to_login(request.get_full_path())
            if not request.user.has_perm(f"dashboard.{codename}"):
                raise PermissionDenied(f"you need the {codename.replace('_', ' ')} permission")
            return view(request, *args, **kwargs)

        return cast("View[P]", wrapped)

    return decorator


def htmx_target(request: HtmxHttpRequest) -> str | None:
    """The id of the element an htmx request will swap, if any (``hx-target``)."""
    return request.htmx.target if request.htmx else None


def querystring(params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in params.items() if v not in (None, "")})
