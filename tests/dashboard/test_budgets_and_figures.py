"""The budgets page (admins change budgets, each change a version; everyone with the dashboard
reads them), the run page's budget and cost figures, and the usage page's cost figures, each
driven by real writes through the services (usage records, failures, resumes, approvals)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from tidebase_core.models import BudgetLimit, BudgetVersion, CostDaily, Gate, Run, UsageRunTotal
from tidebase_core.selectors import cost_figures
from tidebase_core.services import budgets, gates, runs, steps, usage
from tidebase_core.services.time import db_now

pytestmark = pytest.mark.django_db(transaction=True)


def paid_step(run_id: str, name: str, cost: str, kind: str = "llm") -> str:
    began = steps.step_begin(run_id=run_id, name=name, input_hash="h", input={}, options={}, owner="w")
    assert began.action == "execute"
    assert began.step is not None
    usage.usage_record(run_id=run_id, step_id=began.step.id, kind=kind, cost_usd=Decimal(cost))
    steps.step_complete(run_id=run_id, step_id=began.step.id, owner="w", output=name)
    return str(began.step.id)


def started(workflow: str = "triage", budget: str | None = None) -> Run:
    run = runs.run_create(workflow_name=workflow, budget_usd=None if budget is None else Decimal(budget))
    runs.run_begin(run_id=run.id, owner="w")
    return run


def test_admins_set_budget_versions_and_others_read_them(clients: dict[str, Client]) -> None:
    page = reverse("dashboard:budgets")
    form = {"scope": "workflow_day", "workflow": "triage", "limit_usd": "12.5", "note": "launch week"}
    assert clients["viewer"].post(reverse("dashboard:budget-set"), form).status_code == 403
    assert clients["approver"].post(reverse("dashboard:budget-set"), form).status_code == 403
    assert clients["admin"].post(reverse("dashboard:budget-set"), form).status_code == 302
    assert clients["admin"].post(reverse("dashboard:budget-set"), {**form, "limit_usd": "20"}).status_code == 302
    assert clients["admin"].post(reverse("dashboard:budget-set"), {**form, "workflow": ""}).status_code == 422
    assert list(BudgetVersion.objects.order_by("version").values_list("version", "limit_usd", "created_by")) == [
        (1, Decimal("12.5"), "user:admin"),
        (2, Decimal("20"), "user:admin"),
    ]
    assert BudgetLimit.objects.get().limit_usd == Decimal("20")
    body = clients["viewer"].get(page).content.decode()
    assert "launch week" in body
    assert "$20.00" in body
    assert "Save version" not in body  # no form for non-admins
    assert "Save version" in clients["admin"].get(page).content.decode()
    assert clients["nobody"].get(page).status_code == 403


def test_the_budgets_page_lists_parked_runs_and_raising_lets_them_go(clients: dict[str, Client]) -> None:
    budgets.budget_set(scope="workflow_day", workflow="triage", limit_usd=Decimal("1"), by="user:root")
    run = started()
    paid_step(run.id, "model:triage:1", "1.5")
    assert steps.step_begin(run_id=run.id, name="next", input_hash="h", input={}, options={}, owner="w").action == (
        "parked"
    )
    body = clients["viewer"].get(reverse("dashboard:budgets")).content.decode()
    assert run.id[:12] in body
    clients["admin"].post(
        reverse("dashboard:budget-set"), {"scope": "workflow_day", "workflow": "triage", "limit_usd": "5"}
    )
    gate = Gate.objects.get(run_id=run.id)
    assert (gate.status, gate.decided_by) == ("approved", "user:admin")


def test_run_page_shows_budget_and_cost_per_step(clients: dict[str, Client]) -> None:
    run = started(budget="2")
    first = paid_step(run.id, "model:triage:1", "0.5")
    paid_step(run.id, "tool:search:call_1", "0.25", kind="tool")
    figures = cost_figures.run_figures(run_id=run.id)
    assert figures is not None
    assert figures.by_step[first] == Decimal("0.5")
    assert (figures.cost, figures.budget, figures.budget_percent) == (Decimal("0.75"), Decimal("2"), 37)
    assert [(g.name, g.cost) for g in figures.groups] == [
        ("model:triage", Decimal("0.5")),
        ("tool:search", Decimal("0.25")),
    ]
    assert [(name, running) for name, _cost, running in figures.timeline] == [
        ("model:triage:1", Decimal("0.5")),
        ("tool:search:call_1", Decimal("0.75")),
    ]
    page = reverse("dashboard:run", args=[run.id])
    body = clients["viewer"].get(page).content.decode()
    assert "Most expensive steps and tools" in body
    assert "$0.50" in body
    assert "run-budget-usd" not in body  # the form is for admins
    assert "run-budget-usd" in clients["admin"].get(page).content.decode()
    assert (
        clients["viewer"].post(reverse("dashboard:run-budget", args=[run.id]), {"budget_usd": "9"}).status_code == 403
    )
    assert clients["admin"].post(reverse("dashboard:run-budget", args=[run.id]), {"budget_usd": "9"}).status_code == 302
    assert Run.objects.get(id=run.id).budget_usd == Decimal("9")


def test_usage_page_figures_follow_failures_resumes_approvals_and_steps(clients: dict[str, Client]) -> None:
    today = db_now().astimezone(dt.UTC).date()
    # a run fails after spending 1.00, is begun again (its completed model step is a saving), and
    # fails again: its cost counts once, on the day it failed last
    failing = started()
    paid_step(failing.id, "model:triage:1", "1.00")
    runs.run_fail(run_id=failing.id, error={"m": "x"})
    assert CostDaily.objects.get(kind="failed").cost_usd == Decimal("1.00")
    runs.run_begin(run_id=failing.id, owner="w2")  # a resume
    assert CostDaily.objects.filter(kind="failed").get().records == 0
    assert UsageRunTotal.objects.get(run_id=failing.id).saved_usd == Decimal("1.00")
    runs.run_fail(run_id=failing.id, error={"m": "again"})
    cancelled = started("support")
    paid_step(cancelled.id, "plan", "0.30")
    runs.run_cancel(run_id=cancelled.id, reason="stop")
    approved = started("support")
    paid_step(approved.id, "draft:v1", "0.40")
    gate, _ = gates.gate_begin(run_id=approved.id, name="ship", prompt="ship?")
    gates.gate_resolve(
        run_id=approved.id, gate_id=gate.id, decision="approved", token=None, actor=None, payload=None,
        decided_by="user:alice", require_token=False,
    )  # fmt: skip
    budgets.budget_set(scope="workflow_month", workflow="triage", limit_usd=Decimal("10"), by="user:root")

    figures = cost_figures.usage_figures(
        first=today - dt.timedelta(days=6), end=today + dt.timedelta(days=1), today=today
    )
    assert (figures.failed_cost, figures.failed_runs) == (Decimal("1.00"), 1)
    assert (figures.cancelled_cost, figures.cancelled_runs) == (Decimal("0.30"), 1)
    assert (figures.replay_saved, figures.resumes) == (Decimal("1.00"), 1)
    assert (figures.approvals, figures.cost_per_approval) == (1, Decimal("0.4000"))
    assert [(g.name, g.cost) for g in figures.steps] == [
        ("model:triage", Decimal("1.00")),
        ("draft", Decimal("0.40")),
        ("plan", Decimal("0.30")),
    ]
    (burn,) = figures.burn_downs
    assert (burn.scope, burn.limit, burn.current, burn.percent) == (
        "workflow_month",
        Decimal("10"),
        Decimal("1.00"),
        10,
    )

    body = clients["viewer"].get(reverse("dashboard:usage") + "?days=7").content.decode()
    assert "Saved by replay" in body
    assert "Budget burn-down: triage · per month" in body
    assert "model:triage" in body

    # the rebuild recomputes what it can from the tables, and keeps what only the moment knew
    before = {(c.kind, c.day, c.workflow, c.name): (c.records, c.cost_usd) for c in CostDaily.objects.all()}
    usage.usage_rollups_rebuild()
    after = {(c.kind, c.day, c.workflow, c.name): (c.records, c.cost_usd) for c in CostDaily.objects.all()}
    assert {k: v for k, v in after.items() if v[0]} == {k: v for k, v in before.items() if v[0]}
