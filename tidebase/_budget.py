"""Cost budgets, client side: a run parked at its budget, met like a gate.

The server parks a run whose budget is reached (docs/decisions.md, "Budgets that park a run"):
``steps/begin`` sent with ``"onBudget": "park"`` answers ``{"action": "parked", "gate", "budget"}``
instead of beginning the step, and ``POST /runs/:id/budget/check`` parks a run whose next request
would cost more than is left. The run then waits on its budget gate like on any gate:

* ``on_budget="wait"`` (the default): block until an operator decides. Approved (or the limit
  raised): the step is begun again and runs. Rejected: :class:`BudgetExceeded` (the server has
  failed the run with code ``budget_exceeded``).
* ``on_budget="raise"``: :class:`BudgetParked` at once, carrying the gate; the caller ends the
  invocation and runs the workflow again (same ``run_id``) once the gate is decided.

This module holds what both flavours share. The waiting itself (``begin_step``, ``check``,
``wait_parked``) is written once, for asyncio, in ``_async_budget.py``; ``_sync_budget.py`` is
generated from it (scripts/unasync.py). Both take a run handle and use only its client's
low-level ``request``: the clients call ``begin_step`` for every step and :func:`with_budget`
for the run-creation bodies; ``tidebase.pydantic_ai`` calls ``check`` before each model request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ._exceptions import Conflict, TidebaseError

__all__ = [
    "PARK",
    "BudgetExceeded",
    "BudgetParked",
    "OnBudget",
    "on_budget_of",
    "with_budget",
]

OnBudget = Literal["wait", "raise"]

PARK = {"onBudget": "park"}
"""Added to every ``steps/begin`` body: answer a reached budget with the ``parked`` action (the
default, for clients that know no such action, is 409 ``budget_parked``)."""

WAIT_MS_MAX = 20_000  # a gate long-poll stays under the clients' default 30 s request timeout


class BudgetParked(Conflict):
    """The run is parked at its budget and the call chose not to wait. ``gate`` is the budget gate
    (``id``, ``name``, ``prompt``, ``data``), ``budget`` what it stopped at (``scope``,
    ``spentUsd``, ``limitUsd``, ``askedUsd``, ...). Run the workflow again once it is decided."""

    def __init__(self, message: str, *, gate: Mapping[str, Any], budget: Mapping[str, Any], path: str | None = None):
        super().__init__(message, status=200, code="budget_parked", body={"gate": gate, "budget": budget}, path=path)
        self.gate = dict(gate)
        self.budget = dict(budget)


class BudgetExceeded(TidebaseError):
    """The run was stopped at its budget: an operator rejected its budget gate (the server failed
    the run with code ``budget_exceeded``), or the gate was cancelled (timed out)."""

    def __init__(self, message: str, *, gate: Mapping[str, Any] | None = None, path: str | None = None):
        super().__init__(message, status=409, code="budget_exceeded", body={"gate": gate}, path=path)
        self.gate = dict(gate or {})


def with_budget(body: dict[str, Any], budget_usd: float | None) -> dict[str, Any]:
    """A run-creation body (create, enqueue, child) with the run's own budget in USD."""
    if budget_usd is not None:
        if budget_usd < 0:
            raise ValueError("budget_usd must be >= 0")
        body["budgetUsd"] = float(budget_usd)
    return body


def on_budget_of(run: Any, on_budget: OnBudget | None = None) -> OnBudget:
    """The choice for this call: the argument, else the run handle's ``on_budget`` attribute
    (set by the client from ``tide.run(..., on_budget=...)``), else ``"wait"``."""
    choice = on_budget or getattr(run, "on_budget", None) or "wait"
    if choice not in ("wait", "raise"):
        raise ValueError(f"on_budget must be 'wait' or 'raise', not {choice!r}")
    return choice


def parked_error(run: Any, answer: Mapping[str, Any], path: str) -> BudgetParked:
    gate, budget = answer.get("gate") or {}, answer.get("budget") or {}
    return BudgetParked(
        f"run {run.run_id} is parked at its {budget.get('scope')} budget "
        f"(spent {budget.get('spentUsd')} of {budget.get('limitUsd')} USD, asks {budget.get('askedUsd')} more): "
        f"gate {gate.get('name')!r} waits for an operator",
        gate=gate,
        budget=budget,
        path=path,
    )


def decided(run: Any, gate: Mapping[str, Any], path: str) -> None:
    """Return when the budget gate lets the run go on; raise when it stops it."""
    if gate.get("decision") == "approved":
        return
    raise BudgetExceeded(
        f"run {run.run_id} was stopped at its budget: gate {gate.get('name')!r} was {gate.get('decision')}"
        + (f" by {gate['actor']}" if gate.get("actor") else ""),
        gate=gate,
        path=path,
    )


def budget_error(error: Conflict) -> BaseException:
    """The typed error for a 409 answer about budgets (older clients map it to ``Conflict``)."""
    body = error.body if isinstance(error.body, Mapping) else {}
    if error.code == "budget_exceeded":
        return BudgetExceeded(str(error), gate=body.get("gate"), path=error.path)
    return error
