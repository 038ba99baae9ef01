"""Budgets on the wire, against a live server: ``budgetUsd`` on run creation, the ``parked``
answer of steps/begin (with ``onBudget: "park"``) and the 409 ``budget_parked`` for clients that
know no such action (the official client), on the hot path and the framework path alike; the
budget check route; reserved gate names; ``GET /budgets``; and the SDK side (``tidebase._budget``):
a parked run waits at its budget gate and goes on when an operator raises the limit, or stops with
``BudgetExceeded`` when the gate is rejected."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.live import detail, encoded, pending_gate, shape, wait_for
from tidebase import Tidebase
from tidebase._budget import BudgetExceeded, BudgetParked
from tidebase._protocol import StepSpec
from tidebase._sync_budget import begin_step
from tidebase_core.services import budgets

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def spent_run(api: httpx.Client, budget: float, cost: float, workflow: str = "wf") -> tuple[str, str]:
    """A begun run with a budget that has recorded ``cost`` in its first step."""
    run = api.post(f"/runs/{workflow}", json={"budgetUsd": budget}).json()["run"]
    assert run["budgetUsd"] == budget
    owner = api.post(f"/runs/{run['id']}/begin").json()["leaseOwner"]
    step = api.post(f"/runs/{run['id']}/steps/begin", json={"name": "a", "inputHash": "h", "leaseOwner": owner})
    step_id = step.json()["step"]["id"]
    assert api.post(f"/runs/{run['id']}/usage", json={"stepId": step_id, "costUsd": cost}).status_code == 200
    assert api.post(f"/runs/{run['id']}/steps/{step_id}/complete", json={"leaseOwner": owner}).status_code == 200
    return run["id"], owner


def test_parked_answers_on_the_hot_and_framework_paths(api: httpx.Client) -> None:
    answers = {}
    for label, encode in (("hot", str), ("framework", encoded)):
        run_id, owner = spent_run(api, budget=1, cost=1.5)
        path = f"/runs/{encode(run_id)}/steps/begin"
        body = {"name": "b", "inputHash": "h", "leaseOwner": owner}
        refused = api.post(path, json=body)  # what the official client sends
        parked = api.post(path, json={**body, "onBudget": "park"})
        replay = api.post(path, json={**body, "name": "a"})
        assert refused.status_code == 409
        assert refused.json()["code"] == "budget_parked"
        assert parked.status_code == 200
        assert parked.json()["action"] == "parked"
        assert parked.json()["gate"]["id"] == refused.json()["gate"]["id"]  # one gate, joined
        assert parked.json()["gate"]["resolveToken"] is None  # an agent never gets to approve its spending
        assert parked.json()["budget"] == {
            "scope": "run",
            "workflow": None,
            "period": None,
            "spentUsd": 1.5,
            "limitUsd": 1,
            "askedUsd": 2,  # the overshoot (0.5) and a request like the largest (1.5)
            "runSpentUsd": 1.5,
            "projectedUsd": None,
            "step": "b",
        }
        assert replay.json()["action"] == "return"  # a finished step always replays
        answers[label] = [shape(r.json()) for r in (refused, parked, replay)]
    assert answers["hot"] == answers["framework"]


def test_approve_and_reject_over_http(api: httpx.Client) -> None:
    run_id, owner = spent_run(api, budget=0.1, cost=0.2)
    body = {"name": "b", "inputHash": "h", "leaseOwner": owner, "onBudget": "park"}
    gate = api.post(f"/runs/{run_id}/steps/begin", json=body).json()["gate"]
    token = pending_gate(str(api.base_url), run_id)["resolveToken"]  # type: ignore[index]
    approved = api.post(f"/runs/{run_id}/gates/{gate['id']}/resolve", json={"token": token, "decision": "approved"})
    assert approved.status_code == 200
    assert api.post(f"/runs/{run_id}/steps/begin", json=body).json()["action"] == "execute"
    assert api.get(f"/runs/{run_id}").json()["run"]["budgetUsd"] == pytest.approx(0.4)  # 0.1 + 0.1 + 0.2

    run_id, owner = spent_run(api, budget=0.1, cost=0.2)
    body["leaseOwner"] = owner
    gate = api.post(f"/runs/{run_id}/steps/begin", json=body).json()["gate"]
    token = pending_gate(str(api.base_url), run_id)["resolveToken"]  # type: ignore[index]
    api.post(f"/runs/{run_id}/gates/{gate['id']}/resolve", json={"token": token, "decision": "rejected"})
    stopped = api.post(f"/runs/{run_id}/steps/begin", json=body)
    assert (stopped.status_code, stopped.json()["code"]) == (409, "budget_exceeded")
    run = api.get(f"/runs/{run_id}").json()["run"]
    assert (run["status"], run["failureClass"]) == ("failed", "budget_exceeded")
    assert run["error"]["code"] == "budget_exceeded"


def test_budget_check_route(api: httpx.Client) -> None:
    run_id, _ = spent_run(api, budget=1, cost=0.25)
    ok = api.post(f"/runs/{run_id}/budget/check", json={"projectedUsd": 0.75})
    assert ok.json() == {
        "action": "proceed",
        "budgets": [
            {"scope": "run", "workflow": None, "period": None, "spentUsd": 0.25, "limitUsd": 1, "remainingUsd": 0.75}
        ],
        "remainingUsd": 0.75,
    }
    over = api.post(f"/runs/{run_id}/budget/check", json={"projectedUsd": 0.8, "step": "model:x:1"})
    assert over.json()["action"] == "parked"
    assert over.json()["budget"]["askedUsd"] == pytest.approx(0.05)
    refused = api.post(f"/runs/{run_id}/budget/check", json={"projectedUsd": 0.8, "onBudget": "error"})
    assert (refused.status_code, refused.json()["code"]) == (409, "budget_parked")
    assert api.post(f"/runs/{run_id}/budget/check", json={"projectedUsd": -1}).status_code == 400
    assert api.post("/runs/run_nope/budget/check", json={"projectedUsd": 1}).status_code == 404


def test_reserved_gate_names_and_listing(api: httpx.Client) -> None:
    run_id, _ = spent_run(api, budget=10, cost=0.1)
    forged = api.post(f"/runs/{run_id}/gates/begin", json={"name": "budget:run:9", "prompt": "free money?"})
    assert (forged.status_code, forged.json()["code"], forged.json()["field"]) == (400, "invalid_request", "name")
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("50"), by="user:root", note="first")
    listed = api.get("/budgets").json()
    assert [(b["scope"], b["workflow"], b["limitUsd"], b["version"], b["spentUsd"]) for b in listed["budgets"]] == [
        ("workflow_day", "wf", 50, 1, 0.1)
    ]
    assert [(v["version"], v["createdBy"], v["note"]) for v in listed["versions"]] == [(1, "user:root", "first")]
    created = api.post("/runs/wf", json={"budgetUsd": -1})
    assert created.status_code == 400
    enqueued = api.post("/queues/q-budget/enqueue", json={"workflowName": "wf", "budgetUsd": 2.5})
    assert enqueued.json()["run"]["budgetUsd"] == 2.5


# ---- the SDK side -------------------------------------------------------------------------------


def sdk_run(url: str, run_id: str, outcome: list[Any], *, on_budget: str = "wait") -> threading.Thread:
    """A sync workflow: step ``a`` spends 1 USD, then step ``b`` begins through ``_budget``."""

    def workflow(run: Any, input: Any) -> Any:
        run.step("a", lambda: run.usage.record(kind="llm", cost_usd=1.0) and "spent")
        answer = begin_step(run, StepSpec.build("b"), on_budget=on_budget)  # type: ignore[arg-type]
        return answer["action"]

    def main() -> None:
        with Tidebase(url) as tide:
            try:
                outcome.append(tide.run("wf", workflow, run_id=run_id))
            except Exception as error:
                outcome.append(error)

    thread = threading.Thread(target=main)
    thread.start()
    return thread


def test_the_sdk_waits_at_the_budget_and_goes_on_when_the_limit_is_raised(live_server_url: str) -> None:
    run_id = httpx.post(f"{live_server_url}/runs/wf", json={"budgetUsd": 0.5}).json()["run"]["id"]
    outcome: list[Any] = []
    thread = sdk_run(live_server_url, run_id, outcome)
    wait_for(lambda: pending_gate(live_server_url, run_id))
    assert outcome == []  # waiting at the gate
    budgets.run_budget_set(run_id=run_id, budget_usd=Decimal("5"), by="user:alice")
    thread.join(60)
    assert outcome == ["execute"]
    gate = detail(live_server_url, run_id)["gates"][0]
    assert (gate["status"], gate["decidedBy"]) == ("approved", "user:alice")


def test_the_sdk_stops_with_budget_exceeded_after_a_rejection(live_server_url: str) -> None:
    run_id = httpx.post(f"{live_server_url}/runs/wf", json={"budgetUsd": 0.5}).json()["run"]["id"]
    outcome: list[Any] = []
    thread = sdk_run(live_server_url, run_id, outcome)
    gate = wait_for(lambda: pending_gate(live_server_url, run_id))
    httpx.post(
        f"{live_server_url}/runs/{run_id}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": "rejected"},
    ).raise_for_status()
    thread.join(60)
    assert len(outcome) == 1
    assert isinstance(outcome[0], BudgetExceeded)
    assert outcome[0].code == "budget_exceeded"
    assert detail(live_server_url, run_id)["run"]["error"]["code"] == "budget_exceeded"


def test_the_sdk_can_choose_not_to_wait(live_server_url: str) -> None:
    run_id = httpx.post(f"{live_server_url}/runs/wf", json={"budgetUsd": 0.5}).json()["run"]["id"]
    outcome: list[Any] = []
    sdk_run(live_server_url, run_id, outcome, on_budget="raise").join(60)
    assert len(outcome) == 1
    assert isinstance(outcome[0], BudgetParked)
    assert outcome[0].gate["name"] == "budget:run:1"
    assert outcome[0].budget["askedUsd"] == 1.5


def test_a_rerun_after_a_rejection_is_not_asked_for_again(live_server_url: str) -> None:
    """``on_budget="raise"``, an operator rejects, the run is invoked again with its run id (as the
    SDK's docs suggest): its budget stops it with ``BudgetExceeded``, and no second gate opens."""
    run_id = httpx.post(f"{live_server_url}/runs/wf", json={"budgetUsd": 0.5}).json()["run"]["id"]
    outcome: list[Any] = []
    sdk_run(live_server_url, run_id, outcome, on_budget="raise").join(60)
    gate = pending_gate(live_server_url, run_id)
    assert gate is not None
    httpx.post(
        f"{live_server_url}/runs/{run_id}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": "rejected"},
    ).raise_for_status()
    for _ in range(2):  # the first re-run's client reports its own failure: the rejected gate still counts
        sdk_run(live_server_url, run_id, outcome, on_budget="raise").join(60)
    assert len(outcome) == 3
    assert all(isinstance(o, BudgetExceeded) for o in outcome[1:]), outcome
    assert [g["name"] for g in detail(live_server_url, run_id)["gates"]] == ["budget:run:1"]


def test_grants_past_what_the_budget_column_holds_are_approved(api: httpx.Client) -> None:
    """Ten rounds of: the run spends 10^9 USD, parks, an operator grants 10^9 more. The tenth
    grant would take its budget past tb_run's numeric(20, 10): the budget stops at the cap and the
    approval holds (it failed with numeric overflow, and the decision was rolled back)."""
    run_id, owner = spent_run(api, budget=0.1, cost=0.2)
    body = {"name": "b", "inputHash": "h", "leaseOwner": owner, "onBudget": "park"}
    for n in range(1, 11):
        gate = api.post(f"/runs/{run_id}/steps/begin", json=body).json()["gate"]
        assert gate["name"] == f"budget:run:{n}"
        token = pending_gate(str(api.base_url), run_id)["resolveToken"]  # type: ignore[index]
        approved = api.post(
            f"/runs/{run_id}/gates/{gate['id']}/resolve",
            json={"token": token, "decision": "approved", "payload": {"amountUsd": 1e9}},
        )
        assert approved.status_code == 200, (n, approved.text)
        assert api.post(f"/runs/{run_id}/usage", json={"costUsd": 1e9}).status_code == 200
    assert api.get(f"/runs/{run_id}").json()["run"]["budgetUsd"] == 9999999999
