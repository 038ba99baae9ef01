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

These functions take a run handle (``RunContext``/``AsyncRunContext``) and use only its client's
low-level ``request``; the clients call :func:`begin_step` / :func:`abegin_step` for every step
and :func:`with_budget` for the run-creation bodies. ``tidebase.pydantic_ai`` calls
:func:`check` / :func:`acheck` before each model request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

from ._exceptions import Conflict, NotFound, TidebaseError
from ._protocol import gate_poll_answer

__all__ = [
    "PARK",
    "BudgetExceeded",
    "BudgetParked",
    "OnBudget",
    "abegin_step",
    "acheck",
    "await_parked",
    "begin_step",
    "check",
    "on_budget_of",
    "wait_parked",
    "with_budget",
]

OnBudget = Literal["wait", "raise"]

PARK = {"onBudget": "park"}
"""Added to every ``steps/begin`` body: answer a reached budget with the ``parked`` action (the
default, for clients that know no such action, is 409 ``budget_parked``)."""

_WAIT_MS_MAX = 20_000  # a gate long-poll stays under the clients' default 30 s request timeout


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


def _parked(run: Any, answer: Mapping[str, Any], path: str) -> BudgetParked:
    gate, budget = answer.get("gate") or {}, answer.get("budget") or {}
    return BudgetParked(
        f"run {run.run_id} is parked at its {budget.get('scope')} budget "
        f"(spent {budget.get('spentUsd')} of {budget.get('limitUsd')} USD, asks {budget.get('askedUsd')} more): "
        f"gate {gate.get('name')!r} waits for an operator",
        gate=gate,
        budget=budget,
        path=path,
    )


def _decided(run: Any, gate: Mapping[str, Any], path: str) -> None:
    """Return when the budget gate lets the run go on; raise when it stops it."""
    if gate.get("decision") == "approved":
        return
    raise BudgetExceeded(
        f"run {run.run_id} was stopped at its budget: gate {gate.get('name')!r} was {gate.get('decision')}"
        + (f" by {gate['actor']}" if gate.get("actor") else ""),
        gate=gate,
        path=path,
    )


def _budget_error(error: Conflict) -> BaseException:
    """The typed error for a 409 answer about budgets (older clients map it to ``Conflict``)."""
    body = error.body if isinstance(error.body, Mapping) else {}
    if error.code == "budget_exceeded":
        return BudgetExceeded(str(error), gate=body.get("gate"), path=error.path)
    return error


# ---- sync ---------------------------------------------------------------------------------------


def wait_parked(
    run: Any, answer: Mapping[str, Any], *, on_budget: OnBudget | None = None, timeout_s: float | None = None
) -> None:
    """Wait on the budget gate of a ``parked`` answer until it is decided (``on_budget="wait"``),
    or raise :class:`BudgetParked` at once (``"raise"``), or after ``timeout_s``."""
    path = f"/runs/{run.run_id}/gates/{(answer.get('gate') or {}).get('id')}"
    if on_budget_of(run, on_budget) == "raise":
        raise _parked(run, answer, path)
    gate: Mapping[str, Any] = answer["gate"]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while gate.get("status") == "pending":
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _parked(run, answer, path)
        wait_ms = _WAIT_MS_MAX if left is None else max(1, min(_WAIT_MS_MAX, int(left * 1000)))
        started = time.monotonic()
        polled = run._client.request("GET", path, params={"waitMs": str(wait_ms)}, safe=True)
        gate = gate_poll_answer(polled, run.run_id)
        if gate.get("status") == "pending" and time.monotonic() - started < wait_ms / 2000:
            time.sleep(min(1.0, wait_ms / 1000))  # a server that does not long-poll: poll each second
    _decided(run, gate, path)


def begin_step(run: Any, spec: Any, *, on_budget: OnBudget | None = None) -> Mapping[str, Any]:
    """``steps/begin`` for ``spec`` (a ``_protocol.StepSpec``), meeting a reached budget like a
    gate: returns the answer of a begin that was not parked (``execute``, ``return``, ...)."""
    path = f"/runs/{run.run_id}/steps/begin"
    body = {**spec.begin_body(run.lease_owner), **PARK}
    while True:
        try:
            answer: Mapping[str, Any] = run._client.request("POST", path, body, safe=True)
        except Conflict as error:
            raise _budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        wait_parked(run, answer, on_budget=on_budget)


def check(
    run: Any, projected_usd: float, *, step: str | None = None, on_budget: OnBudget | None = None
) -> Mapping[str, Any] | None:
    """Before a request that will cost about ``projected_usd``: returns once the run may send it
    (waiting at its budget gate if it must), with the server's ``proceed`` answer (``budgets``,
    ``remainingUsd``); None from a server without budgets."""
    path = f"/runs/{run.run_id}/budget/check"
    body: dict[str, Any] = {"projectedUsd": max(0.0, float(projected_usd)), **PARK}
    if step:
        body["step"] = step
    while True:
        try:
            answer: Mapping[str, Any] = run._client.request("POST", path, body, safe=True)
        except NotFound as error:
            if error.code == "not_found" and "run" in str(error).lower():
                raise
            return None  # a server that predates budgets
        except Conflict as error:
            raise _budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        wait_parked(run, answer, on_budget=on_budget)


# ---- async --------------------------------------------------------------------------------------


async def await_parked(
    run: Any, answer: Mapping[str, Any], *, on_budget: OnBudget | None = None, timeout_s: float | None = None
) -> None:
    """:func:`wait_parked` for ``AsyncRunContext``."""
    path = f"/runs/{run.run_id}/gates/{(answer.get('gate') or {}).get('id')}"
    if on_budget_of(run, on_budget) == "raise":
        raise _parked(run, answer, path)
    gate: Mapping[str, Any] = answer["gate"]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while gate.get("status") == "pending":
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _parked(run, answer, path)
        wait_ms = _WAIT_MS_MAX if left is None else max(1, min(_WAIT_MS_MAX, int(left * 1000)))
        started = time.monotonic()
        polled = await run._client.request("GET", path, params={"waitMs": str(wait_ms)}, safe=True)
        gate = gate_poll_answer(polled, run.run_id)
        if gate.get("status") == "pending" and time.monotonic() - started < wait_ms / 2000:
            await asyncio.sleep(min(1.0, wait_ms / 1000))
    _decided(run, gate, path)


async def abegin_step(run: Any, spec: Any, *, on_budget: OnBudget | None = None) -> Mapping[str, Any]:
    """:func:`begin_step` for ``AsyncRunContext``."""
    path = f"/runs/{run.run_id}/steps/begin"
    body = {**spec.begin_body(run.lease_owner), **PARK}
    while True:
        try:
            answer: Mapping[str, Any] = await run._client.request("POST", path, body, safe=True)
        except Conflict as error:
            raise _budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        await await_parked(run, answer, on_budget=on_budget)


async def acheck(
    run: Any, projected_usd: float, *, step: str | None = None, on_budget: OnBudget | None = None
) -> Mapping[str, Any] | None:
    """:func:`check` for ``AsyncRunContext``."""
    path = f"/runs/{run.run_id}/budget/check"
    body: dict[str, Any] = {"projectedUsd": max(0.0, float(projected_usd)), **PARK}
    if step:
        body["step"] = step
    while True:
        try:
            answer: Mapping[str, Any] = await run._client.request("POST", path, body, safe=True)
        except NotFound as error:
            if error.code == "not_found" and "run" in str(error).lower():
                raise
            return None
        except Conflict as error:
            raise _budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        await await_parked(run, answer, on_budget=on_budget)
