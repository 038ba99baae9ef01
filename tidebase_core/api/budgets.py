"""Budgets on the wire (additive routes; docs/decisions.md, "Budgets that park a run").

- ``POST /runs/:id/budget/check`` (agent): may the run send a request that will cost about
  ``projectedUsd``? ``{"action": "proceed", "budgets", "remainingUsd"}``, or the run is parked:
  ``{"action": "parked", "gate", "budget"}`` (with ``onBudget: "error"``, 409 ``budget_parked``).
  ``TidebaseDurability`` asks before every model request, so the request that would cross a
  budget is not sent.
- ``GET /budgets`` (operator): the shared budgets with their spend in the current period, and
  the latest versions. Budgets are changed in the dashboard, by admins.
"""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import wire
from tidebase_core.api.common import seg
from tidebase_core.api.schemas import BudgetCheckIn
from tidebase_core.exceptions import BudgetParked
from tidebase_core.services import budgets as services

router = Router(tags=["budgets"])
runs_router = Router(tags=["budgets"])


@runs_router.post("/{run_id}/budget/check", operation_id="check_budget")
def check_budget(request: HttpRequest, run_id: str, payload: BudgetCheckIn) -> HttpResponse:
    state, parked = services.budget_check(
        run_id=seg(run_id), projected=Decimal(repr(payload.projectedUsd)), step=payload.step
    )
    if parked is None:
        return wire.json_response(
            {
                "action": "proceed",
                "budgets": [b.out() for b in state.budgets],
                "remainingUsd": wire.num(state.remaining_usd),
            }
        )
    answer = services.parked_answer(parked)
    if payload.onBudget == "error":
        raise BudgetParked("the run is parked at its budget", gate=answer["gate"], budget=answer["budget"])
    return wire.json_response(answer)


@router.get("", operation_id="list_budgets")
def list_budgets(request: HttpRequest) -> HttpResponse:
    versions = [services.version_out(v) for v in services.budget_versions(limit=50)]
    return wire.json_response({"budgets": services.budget_list(), "versions": versions})
