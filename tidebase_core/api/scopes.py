"""Which key scope may call which protocol route: one table, checked in one place.

Every ninja operation is wrapped by ``guard`` (installed once on the NinjaAPI with
``api.add_decorator(guard, mode="view")``, so it runs before the body is parsed); a route with
no entry in ``ROUTE_SCOPES`` stops the server from starting. The SSE view uses ``scoped`` and the
WSGI step hot path asks ``allows`` with the same operation ids. ``docs/auth.md`` prints the table
and a test keeps the two equal.

- ``agent``: a run's own calls, what a worker needs to create, execute and finish runs (steps,
  state, usage, gates opened and polled, children, enqueue and claim).
- ``operator``: decisions and configuration: resolve gates, cancel runs, fire recovery webhooks,
  configure queues (``invokeUrl``, ``paused``, caps) and schedules, and list everything.
- ``admin``: everything an operator may, plus managing keys (dashboard and ``tidebase_key``;
  no protocol route manages keys).

Scopes are ranked (agent < operator < admin). The env key and the open principal (no key
configured) are ``admin``. A resolve token without any key opens exactly one route, its gate's
resolve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from tidebase_core.auth import Principal
from tidebase_core.exceptions import DomainError, Forbidden, Unauthorized
from tidebase_core.metrics import ROUTE_ENVIRON
from tidebase_core.wire import error_response

PUBLIC = None

ROUTE_SCOPES: dict[str, str | None] = {
    # operation id: the lowest scope that may call it (None: no key needed)
    "health": PUBLIC,
    "ready": PUBLIC,
    # runs
    "create_run": "agent",
    "list_runs": "operator",
    "get_run": "agent",
    "begin_run": "agent",
    "heartbeat_run": "agent",
    "complete_run": "agent",
    "fail_run": "agent",
    "cancel_run": "operator",
    "recover_run": "operator",
    "create_child_run": "agent",
    "run_events": "agent",
    # steps (begin_step and complete_step are also served by the WSGI hot path)
    "begin_step": "agent",
    "list_steps": "agent",
    "complete_step": "agent",
    "fail_step": "agent",
    # gates
    "begin_gate": "agent",
    "get_gate": "agent",
    "resolve_gate": "operator",  # or the gate's resolve token, with no key at all
    # state, snapshots, usage
    "set_state": "agent",
    "patch_state": "agent",
    "save_state": "agent",
    "list_state_versions": "agent",
    "create_snapshot": "agent",
    "list_snapshots": "agent",
    "record_usage": "agent",
    # queues and schedules
    "enqueue_run": "agent",
    "claim_runs": "agent",
    "list_queues": "operator",
    "configure_queue": "operator",
    "list_schedules": "operator",
    "set_schedule": "operator",
    "delete_schedule": "operator",
    # budgets (changed in the dashboard, by admins)
    "check_budget": "agent",
    "list_budgets": "operator",
    # operations
    "metrics": "operator",  # GET /metrics: Prometheus figures of every run, queue and webhook
}

TOKEN_ROUTES = frozenset({"resolve_gate"})
"""Routes a bare resolve token (no key) may reach; the view then checks the token."""


def allows(who: Principal, operation_id: str) -> bool:
    """Whether ``who`` may call the route. Raises KeyError for a route missing from the table."""
    need = ROUTE_SCOPES[operation_id]
    if need is None:
        return True
    if who.kind == "token":
        return operation_id in TOKEN_ROUTES
    return who.has(need)


def refusal(request: HttpRequest, operation_id: str) -> DomainError | None:
    """The error to answer instead of calling the route, or None. Fails closed: a request that
    did not pass the authentication middleware has no principal and is refused."""
    need = ROUTE_SCOPES[operation_id]
    if need is None:
        return None
    who: Principal | None = getattr(request, "tb_principal", None)
    if who is None:
        return Unauthorized("unauthorized")
    if allows(who, operation_id):
        return None
    if who.kind == "token":
        return Unauthorized("unauthorized")  # a resolve token is no key anywhere else
    return Forbidden(
        f"this API key ({who.scope}) may not call {operation_id}: it needs {need} scope",
        scope=who.scope,
        required=need,
    )


def _operation_id(run: Any) -> str:
    operation = getattr(run, "__self__", None)
    operation_id = getattr(operation, "operation_id", None)
    if not isinstance(operation_id, str):
        raise ImproperlyConfigured(f"scopes.guard must wrap a ninja Operation.run, got {run!r}")
    if operation_id not in ROUTE_SCOPES:
        raise ImproperlyConfigured(f"route {operation_id!r} has no entry in tidebase_core.api.scopes.ROUTE_SCOPES")
    return operation_id


def guard(run: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """NinjaAPI view decorator: check the route's scope before the body is parsed."""
    return scoped(_operation_id(run))(run)


def scoped(operation_id: str) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """The same check for a plain Django view of the protocol URLconf (the SSE stream)."""
    if operation_id not in ROUTE_SCOPES:
        raise ImproperlyConfigured(f"route {operation_id!r} has no entry in tidebase_core.api.scopes.ROUTE_SCOPES")

    def decorate(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            request.META[ROUTE_ENVIRON] = operation_id  # the gateway's route label (tidebase_core.metrics)
            refused = refusal(request, operation_id)
            if refused is not None:
                return error_response(refused)
            return view(request, *args, **kwargs)

        checked.tb_operation_id = operation_id  # type: ignore[attr-defined]
        return checked

    return decorate
