"""Budgets through the SDK's own calls, both flavours: ``tide.run(..., budget_usd=...)`` gives the
new run its budget, and a ``run.step`` after the budget is spent parks at the budget gate and runs
once the operator raises the limit (``on_budget="wait"``), or raises ``BudgetParked`` without
running the step (``on_budget="raise"``)."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.sdk_live.conftest import detail, pending_gate, wait_for
from tidebase import Tidebase
from tidebase._budget import BudgetParked
from tidebase.aio import AsyncTidebase
from tidebase_core.services import budgets

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def spend_then_work(executed: list[str]) -> Any:
    def workflow(run: Any, input: Any) -> str:
        run.step("spend", lambda: run.usage.record(kind="llm", cost_usd=1.0) and "spent")
        return run.step("work", lambda: executed.append("work") or "done")

    return workflow


def spend_then_work_async(executed: list[str]) -> Any:
    async def workflow(run: Any, input: Any) -> str:
        async def spend() -> str:
            await run.usage.record(kind="llm", cost_usd=1.0)
            return "spent"

        await run.step("spend", spend)
        return await run.step("work", lambda: executed.append("work") or "done")

    return workflow


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_run_parks_at_its_budget_and_goes_on_when_the_operator_raises_it(live_server_url: str, flavour: str) -> None:
    executed: list[str] = []
    outcome: list[Any] = []
    workflow_name = f"budgeted-{flavour}"

    def main() -> None:
        try:
            if flavour == "sync":
                with Tidebase(live_server_url) as tide:
                    outcome.append(tide.run(workflow_name, spend_then_work(executed), budget_usd=0.5))
            else:

                async def go() -> Any:
                    async with AsyncTidebase(live_server_url) as tide:
                        return await tide.run(workflow_name, spend_then_work_async(executed), budget_usd=0.5)

                outcome.append(asyncio.run(go()))
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=main)
    thread.start()
    gate = wait_for(lambda: _pending_gate(live_server_url, workflow_name))
    run_id = gate["runId"]
    assert detail(live_server_url, run_id)["run"]["budgetUsd"] == 0.5
    assert gate["name"].startswith("budget:run")
    assert executed == []  # parked before the step ran
    assert outcome == []
    budgets.run_budget_set(run_id=run_id, budget_usd=Decimal("5"), by="user:alice")
    thread.join(60)
    assert outcome == ["done"]
    assert executed == ["work"]


def test_on_budget_raise_leaves_the_step_unrun(live_server_url: str) -> None:
    executed: list[str] = []
    with Tidebase(live_server_url) as tide, pytest.raises(BudgetParked):
        tide.run("budgeted-raise", spend_then_work(executed), budget_usd=0.5, on_budget="raise")
    assert executed == []


def _pending_gate(url: str, workflow_name: str) -> dict[str, Any] | None:
    runs = httpx.get(f"{url}/runs", params={"workflowName": workflow_name}, timeout=30).json()["runs"]
    for run in runs:
        gate = pending_gate(url, run["id"])
        if gate:
            return {**gate, "runId": run["id"]}
    return None
