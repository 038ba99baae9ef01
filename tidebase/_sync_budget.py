# generated from tidebase/_async_budget.py by scripts/unasync.py; do not edit (make sdk-sync)
"""Waiting at a reached budget (see ``_budget.py``), written once for asyncio; the blocking
twin ``_sync_budget.py`` is generated from this file by scripts/unasync.py."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import _budget as shared
from . import _sync_primitives as flavour
from ._exceptions import Conflict, NotFound
from ._protocol import gate_poll_answer


def wait_parked(
    run: Any, answer: Mapping[str, Any], *, on_budget: shared.OnBudget | None = None, timeout_s: float | None = None
) -> None:
    """Wait on the budget gate of a ``parked`` answer until it is decided (``on_budget="wait"``),
    or raise :class:`~tidebase.BudgetParked` at once (``"raise"``), or after ``timeout_s``."""
    path = f"/runs/{run.run_id}/gates/{(answer.get('gate') or {}).get('id')}"
    if shared.on_budget_of(run, on_budget) == "raise":
        raise shared.parked_error(run, answer, path)
    gate: Mapping[str, Any] = answer["gate"]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while gate.get("status") == "pending":
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise shared.parked_error(run, answer, path)
        wait_ms = shared.WAIT_MS_MAX if left is None else max(1, min(shared.WAIT_MS_MAX, int(left * 1000)))
        started = time.monotonic()
        polled = run._client.request("GET", path, params={"waitMs": str(wait_ms)}, safe=True)
        gate = gate_poll_answer(polled, run.run_id)
        if gate.get("status") == "pending" and time.monotonic() - started < wait_ms / 2000:
            flavour.sleep(min(1.0, wait_ms / 1000))  # a server that does not long-poll: poll each second
    shared.decided(run, gate, path)


def begin_step(run: Any, spec: Any, *, on_budget: shared.OnBudget | None = None) -> Mapping[str, Any]:
    """``steps/begin`` for ``spec`` (a ``_protocol.StepSpec``), meeting a reached budget like a
    gate: returns the answer of a begin that was not parked (``execute``, ``return``, ...)."""
    path = f"/runs/{run.run_id}/steps/begin"
    body = {**spec.begin_body(run.lease_owner), **shared.PARK}
    while True:
        try:
            answer: Mapping[str, Any] = run._client.request("POST", path, body, safe=True)
        except Conflict as error:
            raise shared.budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        wait_parked(run, answer, on_budget=on_budget)


def check(
    run: Any, projected_usd: float, *, step: str | None = None, on_budget: shared.OnBudget | None = None
) -> Mapping[str, Any] | None:
    """Before a request that will cost about ``projected_usd``: returns once the run may send it
    (waiting at its budget gate if it must), with the server's ``proceed`` answer (``budgets``,
    ``remainingUsd``); None from a server without budgets."""
    path = f"/runs/{run.run_id}/budget/check"
    body: dict[str, Any] = {"projectedUsd": max(0.0, float(projected_usd)), **shared.PARK}
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
            raise shared.budget_error(error) from error
        if answer.get("action") != "parked":
            return answer
        wait_parked(run, answer, on_budget=on_budget)
