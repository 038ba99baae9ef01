"""Cost budgets that park a run (services.budgets), against real Postgres: a run parks at its next
step once recorded cost reaches a budget, continues when an operator approves or raises the
limit, fails with ``budget_exceeded`` when the gate is rejected; finished steps still replay; the
shared budgets (workflow per day and month, global per day) are versioned and their spend follows
the ledger; concurrent runs of one workflow overshoot its budget by at most the requests in
flight (threads with their own connections)."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.core.test_probes import in_threads
from tests.live import wait_for
from tidebase_core.exceptions import BudgetExceeded
from tidebase_core.models import BudgetLimit, BudgetSpend, BudgetVersion, Event, Gate, Run, UsageRecord
from tidebase_core.services import budgets, gates, runs, steps, usage
from tidebase_core.services.time import db_now

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def begin(run_id: str, name: str, owner: str = "w1") -> steps.BeginResult:
    return steps.step_begin(run_id=run_id, name=name, input_hash="h", input={}, options={}, owner=owner)


def spend(run_id: str, cost: str, step_id: str | None = None, at: dt.datetime | None = None) -> None:
    usage.usage_record(run_id=run_id, step_id=step_id, kind="llm", input_tokens=10, cost_usd=Decimal(cost), at=at)


def paid_step(run_id: str, name: str, cost: str, owner: str = "w1") -> steps.BeginResult:
    """A step that runs and records one model request of ``cost`` USD inside it."""
    result = begin(run_id, name, owner)
    assert result.action == "execute", result
    assert result.step is not None
    spend(run_id, cost, result.step.id)
    steps.step_complete(run_id=run_id, step_id=result.step.id, owner=owner, output={"ok": name})
    return result


def started(workflow: str = "wf", budget: str | None = None) -> Run:
    run = runs.run_create(workflow_name=workflow, budget_usd=None if budget is None else Decimal(budget))
    runs.run_begin(run_id=run.id, owner="w1")
    return run


def resolve(gate: Gate, decision: str, **payload: Any) -> Gate:
    return gates.gate_resolve(
        run_id=gate.run_id,
        gate_id=gate.id,
        decision=decision,
        token=None,
        actor="alice",
        payload=payload or None,
        decided_by="user:alice",
        require_token=False,
    )


# ---- a run's own budget -------------------------------------------------------------------------


def test_a_run_parks_at_its_budget_and_continues_after_the_limit_is_raised() -> None:
    run = started(budget="1.00")
    paid_step(run.id, "a", "0.60")
    paid_step(run.id, "b", "0.60")  # began at 0.60 < 1.00: it runs and checkpoints (never cut off)

    parked = begin(run.id, "c")
    assert parked.action == "parked"
    assert parked.parked is not None
    gate = parked.parked.gate
    assert (gate.name, gate.status) == ("budget:run:1", "pending")
    assert gate.data == {
        "kind": "budget",
        "scope": "run",
        "workflow": None,
        "period": None,
        "spentUsd": 1.2,
        "limitUsd": 1,
        "askedUsd": 0.8,  # the overshoot (0.20) and one more request like the largest (0.60)
        "runSpentUsd": 1.2,
        "projectedUsd": None,
        "step": "c",
    }
    assert "1.20" in gate.prompt
    assert "$0.8" in gate.prompt
    assert not Run.objects.get(id=run.id).steps.filter(name="c").exists()
    assert begin(run.id, "a").action == "return"  # finished steps still replay
    assert begin(run.id, "c").parked.gate.id == gate.id  # type: ignore[union-attr]  # parked again: same gate

    budgets.run_budget_set(run_id=run.id, budget_usd=Decimal("5"), by="user:alice")
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by, gate.decision_payload["reason"]) == ("approved", "user:alice", "limit_raised")
    assert begin(run.id, "c").action == "execute"
    assert Run.objects.get(id=run.id).budget_usd == Decimal("5")  # nothing granted beyond the new limit


def test_approving_raises_the_run_budget_by_what_was_asked() -> None:
    run = started(budget="0.50")
    paid_step(run.id, "a", "0.50")
    gate = begin(run.id, "b").parked.gate  # type: ignore[union-attr]
    resolve(gate, "approved")
    assert Run.objects.get(id=run.id).budget_usd == Decimal("1.00")  # 0.50 + asked 0.50
    assert [e.payload["budgetUsd"] for e in Event.objects.filter(run_id=run.id, type="budget.approved")] == [1]
    paid_step(run.id, "b", "0.50")
    again = begin(run.id, "c")
    assert again.action == "parked"
    assert again.parked.gate.name == "budget:run:2"  # type: ignore[union-attr]
    resolve(again.parked.gate, "approved", amountUsd=3)  # type: ignore[union-attr]  # the approver grants more
    assert Run.objects.get(id=run.id).budget_usd == Decimal("4.00")


def test_rejecting_fails_the_run_with_budget_exceeded() -> None:
    run = started(budget="0.10")
    paid_step(run.id, "a", "0.25")
    gate = begin(run.id, "b").parked.gate  # type: ignore[union-attr]
    resolve(gate, "rejected")
    failed = Run.objects.get(id=run.id)
    assert (failed.status, failed.failure_class) == ("failed", "budget_exceeded")
    assert failed.error["code"] == "budget_exceeded"
    assert (failed.error["budget"]["scope"], failed.error["gateId"]) == ("run", gate.id)
    assert Event.objects.filter(run_id=run.id, type="run.failed").count() == 1
    # the client that waited reports its own failure afterwards: the code stays
    runs.run_fail(run_id=run.id, error={"name": "BudgetExceeded", "message": "x"})
    assert Run.objects.get(id=run.id).error["code"] == "budget_exceeded"
    with pytest.raises(BudgetExceeded):  # no new gate for a run an operator stopped
        begin(run.id, "b")
    assert Gate.objects.filter(run_id=run.id).count() == 1


def test_a_run_without_budgets_never_parks() -> None:
    run = started()
    for i in range(3):
        paid_step(run.id, f"s{i}", "1000")
    assert budgets.verdict(run_id=run.id).budgets == []


# ---- shared budgets -----------------------------------------------------------------------------


def test_workflow_day_budget_counts_todays_spend_and_is_versioned() -> None:
    earlier = started("triage")
    paid_step(earlier.id, "a", "0.70")  # before the budget exists: read from the daily rollup
    other = started("other")
    paid_step(other.id, "a", "9")  # another workflow's spend does not count

    budgets.budget_set(scope="workflow_day", workflow="triage", limit_usd=Decimal("1"), by="user:root")
    run = started("triage")
    paid_step(run.id, "a", "0.20")  # 0.90 < 1
    paid_step(run.id, "b", "0.20")  # began at 0.90: runs; now 1.10
    parked = begin(run.id, "c").parked
    assert parked is not None
    assert parked.gate.name == "budget:workflow_day:1"
    assert (parked.budget["scope"], parked.budget["workflow"]) == ("workflow_day", "triage")
    assert (parked.budget["spentUsd"], parked.budget["limitUsd"]) == (1.1, 1)
    assert parked.budget["period"] == db_now().astimezone(dt.UTC).date().isoformat()
    assert begin(other.id, "b").action == "execute"  # other workflows go on

    budgets.budget_set(scope="workflow_day", workflow="triage", limit_usd=Decimal("1.05"), by="user:root")
    parked.gate.refresh_from_db()
    assert parked.gate.status == "pending"  # still over 1.05: raising that little lifts nothing
    budgets.budget_set(scope="workflow_day", workflow="triage", limit_usd=Decimal("2"), by="user:root", note="more")
    parked.gate.refresh_from_db()
    assert (parked.gate.status, parked.gate.decision_payload["version"]) == ("approved", 3)
    assert begin(run.id, "c").action == "execute"
    assert list(BudgetVersion.objects.order_by("version").values_list("version", "limit_usd", "note")) == [
        (1, Decimal("1"), ""),
        (2, Decimal("1.05"), ""),
        (3, Decimal("2"), "more"),
    ]
    assert BudgetLimit.objects.get(scope="workflow_day", workflow="triage").version == 3


def test_approving_a_shared_budget_gives_that_run_an_allowance() -> None:
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("0.30"), by="user:root")
    one, two = started(), started()
    paid_step(one.id, "a", "0.40")
    gate = begin(one.id, "b").parked.gate  # type: ignore[union-attr]
    assert gate.data["askedUsd"] == 0.4  # one more request like its largest
    assert begin(two.id, "a").action == "parked"
    resolve(gate, "approved")
    assert Run.objects.get(id=one.id).budget_allowance_usd == Decimal("0.80")  # its spend + asked
    paid_step(one.id, "b", "0.30")  # 0.70 < 0.80: allowed
    paid_step(one.id, "c", "0.30")  # began at 0.70 < 0.80
    assert begin(one.id, "d").action == "parked"  # 1.00 >= 0.80: the allowance is spent
    assert begin(two.id, "a").action == "parked"  # the other run never got one


def test_global_and_monthly_budgets() -> None:
    now = db_now()
    budgets.budget_set(scope="global_day", workflow=None, limit_usd=Decimal("1"), by="user:root")
    run = started("a")
    paid_step(run.id, "s1", "0.5")
    paid_step(started("b").id, "s1", "0.6")
    parked = begin(run.id, "s2").parked
    assert parked is not None
    assert (parked.budget["scope"], parked.budget["spentUsd"]) == ("global_day", 1.1)
    budgets.budget_set(scope="global_day", workflow=None, limit_usd=None, by="user:root")  # removed: lifts
    parked.gate.refresh_from_db()
    assert parked.gate.status == "approved"

    first_of_month = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=1)
    monthly = started("m")
    spend(monthly.id, "2", at=first_of_month)  # earlier this month: counts in the month's budget
    budgets.budget_set(scope="workflow_month", workflow="m", limit_usd=Decimal("2.5"), by="user:root")
    assert begin(monthly.id, "s1").action == "execute"
    spend(monthly.id, "0.5")
    assert begin(monthly.id, "s2").parked.budget["period"] == first_of_month.strftime("%Y-%m")  # type: ignore[union-attr]
    row = BudgetSpend.objects.get(scope="workflow_month", workflow="m")
    assert (row.period, row.spent_usd) == (first_of_month.date(), Decimal("2.5"))


def test_a_gate_of_an_ended_day_is_lifted_by_the_reconciler() -> None:
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("0.1"), by="user:root")
    run = started()
    paid_step(run.id, "a", "0.2")
    gate = begin(run.id, "b").parked.gate  # type: ignore[union-attr]
    assert budgets.lift_ended_periods() == 0
    yesterday = (db_now().astimezone(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    Gate.objects.filter(id=gate.id).update(data={**gate.data, "period": yesterday})
    assert budgets.lift_ended_periods() == 1
    gate.refresh_from_db()
    assert (gate.status, gate.decision_payload["reason"]) == ("approved", "period_ended")


# ---- projected cost -----------------------------------------------------------------------------


def test_a_request_whose_projected_cost_would_cross_the_budget_is_not_sent() -> None:
    run = started(budget="1")
    paid_step(run.id, "a", "0.7")
    state, parked = budgets.budget_check(run_id=run.id, projected=Decimal("0.3"))
    assert parked is None  # lands exactly on the limit: allowed
    assert state.remaining_usd == Decimal("0.3")
    state, parked = budgets.budget_check(run_id=run.id, projected=Decimal("0.31"), step="model:x:2")
    assert parked is not None
    assert parked.budget["askedUsd"] == pytest.approx(0.01)
    assert parked.budget["projectedUsd"] == 0.31
    assert parked.budget["step"] == "model:x:2"
    resolve(parked.gate, "approved")
    assert budgets.budget_check(run_id=run.id, projected=Decimal("0.31"))[1] is None


# ---- concurrency --------------------------------------------------------------------------------


def test_concurrent_runs_overshoot_a_workflow_budget_by_at_most_the_requests_in_flight() -> None:
    """N writers, each a run of one workflow on its own connection, each looping: begin a step
    (the budget check), record one request of cost c inside it, complete it; until parked. The
    spend ends at or past the limit and at most N x c past it (each writer has at most one request
    in flight, and none begins once the spend reached the limit). The bound is the documented one,
    ``budgets.OVERSHOOT_BOUND``."""
    n, cost, limit = 8, Decimal("0.25"), Decimal("10")
    budgets.budget_set(scope="workflow_day", workflow="crowd", limit_usd=limit, by="user:root")
    runs_ = [started("crowd") for _ in range(n)]

    def writer(i: int) -> int:
        done = 0
        while done < 200:  # bounds a run that never parks (the test then fails below)
            result = begin(runs_[i].id, f"s{done}")
            if result.action == "parked":
                return done
            assert result.action == "execute"
            assert result.step is not None
            spend(runs_[i].id, str(cost), result.step.id)
            steps.step_complete(run_id=runs_[i].id, step_id=result.step.id, owner="w1", output=done)
            done += 1
        return -1

    counts = in_threads(n, writer)
    assert all(isinstance(c, int) and c >= 0 for c in counts), counts
    spent = BudgetSpend.objects.get(scope="workflow_day", workflow="crowd").spent_usd
    assert spent == sum(counts) * cost  # the budget's spend is the ledger's
    assert limit <= spent <= limit + n * cost, (spent, counts)
    assert Gate.objects.filter(name__startswith="budget:workflow_day:", status="pending").count() == n
    with connection.cursor() as cur:
        cur.execute("SELECT sum(cost_usd) FROM tb_usage WHERE run_id = ANY(%s)", [[r.id for r in runs_]])
        assert cur.fetchone()[0] == spent  # type: ignore[index]


def test_the_spend_of_a_budget_survives_a_rollup_rebuild() -> None:
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("100"), by="user:root")
    run = started()
    paid_step(run.id, "a", "1.5")
    BudgetSpend.objects.update(spent_usd=0)  # drifted (e.g. usage written around the statement)
    usage.usage_rollups_rebuild()
    assert BudgetSpend.objects.get(scope="workflow_day", workflow="wf").spent_usd == Decimal("1.5")


# ---- review fixes -------------------------------------------------------------------------------


def test_a_rejection_stands_when_the_run_is_begun_again() -> None:
    """Re-invoking the run (runs/begin sets it running again, as the SDK's ``on_budget="raise"``
    suggests) asks no one again: while a budget stops it, steps/begin and budget/check raise
    BudgetExceeded, also after a later failure of another class; raising the limit lets it go on."""
    run = started(budget="0.10")
    paid_step(run.id, "a", "0.25")
    gate = begin(run.id, "b").parked.gate  # type: ignore[union-attr]
    resolve(gate, "rejected")
    runs.run_begin(run_id=run.id, owner="w1")
    assert Run.objects.get(id=run.id).status == "running"
    with pytest.raises(BudgetExceeded):
        begin(run.id, "b")
    with pytest.raises(BudgetExceeded):
        budgets.budget_check(run_id=run.id, projected=Decimal("0.01"))
    runs.run_fail(run_id=run.id, error={"name": "Crash", "message": "x"}, failure_class="crash")
    runs.run_begin(run_id=run.id, owner="w1")  # failureClass is now "crash": the rejected gate still counts
    with pytest.raises(BudgetExceeded):
        begin(run.id, "b")
    assert list(Gate.objects.filter(run_id=run.id).values_list("name", flat=True)) == ["budget:run:1"]
    budgets.run_budget_set(run_id=run.id, budget_usd=Decimal("5"), by="user:alice")
    assert begin(run.id, "b").action == "execute"


def test_concurrent_parks_of_one_run_open_one_gate() -> None:
    """A step begin stopped by the workflow's day budget and budget checks stopped by the run's own
    budget (its projection crosses it), all at once on their own connections: one pending budget
    gate, which every one of them joins."""
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("0.50"), by="user:root")
    run = started(budget="1.00")
    paid_step(run.id, "a", "0.90")  # the day budget is reached; the run's is not

    def park(i: int) -> str:
        if i % 2:
            parked = begin(run.id, f"s{i}").parked  # workflow_day
        else:
            parked = budgets.budget_check(run_id=run.id, projected=Decimal("0.20"))[1]  # run
        assert parked is not None
        return str(parked.gate.id)

    ids = in_threads(6, park)
    pending = list(Gate.objects.filter(run_id=run.id, status="pending").values_list("id", flat=True))
    assert len(pending) == 1, Gate.objects.filter(run_id=run.id).values_list("name", flat=True)
    assert ids == [pending[0]] * 6, ids


def test_grants_past_what_a_run_budget_column_holds_are_capped() -> None:
    run = started(budget="0.10")
    paid_step(run.id, "a", "0.25")
    gate = begin(run.id, "b").parked.gate  # type: ignore[union-attr]
    Run.objects.filter(id=run.id).update(budget_usd=Decimal("9500000000"))  # as grants of 10^9 leave it
    resolve(gate, "approved", amountUsd=1e9)
    assert Run.objects.get(id=run.id).budget_usd == budgets.MAX_RUN_USD

    budgets.budget_set(scope="workflow_day", workflow="big", limit_usd=Decimal("0.10"), by="user:root")
    shared = started("big")
    paid_step(shared.id, "a", "0.25")
    gate = begin(shared.id, "b").parked.gate  # type: ignore[union-attr]
    Run.objects.filter(id=shared.id).update(budget_allowance_usd=Decimal("9500000000"))
    with connection.cursor() as cur:  # a run that spent that much: its allowance is spend + grant
        cur.execute("UPDATE tb_usage_run SET cost_usd = 9500000000 WHERE run_id = %s", [shared.id])
    resolve(gate, "approved", amountUsd=1e9)
    assert Run.objects.get(id=shared.id).budget_allowance_usd == budgets.MAX_RUN_USD


def test_the_reconciler_reads_only_ended_gates_and_no_budgets_for_them() -> None:
    parked = []
    for workflow in ("w0", "w1", "w2"):
        budgets.budget_set(scope="workflow_day", workflow=workflow, limit_usd=Decimal("0.1"), by="user:root")
        run = started(workflow)
        paid_step(run.id, "a", "0.2")
        parked.append(begin(run.id, "b").parked.gate)  # type: ignore[union-attr]
    yesterday = (db_now().astimezone(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    ended = parked[1]
    Gate.objects.filter(id=ended.id).update(data={**ended.data, "period": yesterday})
    with CaptureQueriesContext(connection) as queries:
        assert budgets.lift_ended_periods(limit=5) == 1
    sql = [q["sql"] for q in queries.captured_queries]
    listing = next(s for s in sql if s.startswith('SELECT "tb_gate"'))
    assert "'period'" in listing, listing  # the period filter in SQL,
    assert "LIMIT 5" in listing, listing  # and the limit
    assert not any("tb_budget_limit" in s for s in sql)  # an ended period lifts without reading budgets
    assert list(Gate.objects.filter(status="approved").values_list("id", flat=True)) == [ended.id]


def test_a_rollup_add_locks_rows_in_the_usage_record_order() -> None:
    """``usage_rollup_add`` locks budget-spend row, run-total row, daily row in that order, as the
    usage-record statement does (no two usage writers wait on each other in a cycle): while it
    waits for a row another transaction holds, the rows before it in that order are locked and
    the ones after it are not."""
    budgets.budget_set(scope="workflow_day", workflow="wf", limit_usd=Decimal("100"), by="user:root")
    run = started()
    spend(run.id, "0.1")  # the spend, run-total and daily rows exist
    rows = {
        "spend": "SELECT 1 FROM tb_budget_spend WHERE scope = 'workflow_day' AND workflow = 'wf' FOR UPDATE {}",
        "total": f"SELECT 1 FROM tb_usage_run WHERE run_id = '{run.id}' FOR UPDATE {{}}",
        "daily": "SELECT 1 FROM tb_usage_daily WHERE workflow = 'wf' FOR UPDATE {}",
    }

    def adding(usage_id: str, pid: list[int], failed: list[BaseException]) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pid.append(cur.fetchone()[0])
                Run.objects.select_for_update(no_key=True).get(id=run.id)  # the caller holds the run lock
                usage.usage_rollup_add(usage_id=usage_id)
        except BaseException as exc:
            failed.append(exc)
        finally:
            connection.close()

    def waiting(cur: Any, pid: list[int]) -> bool:
        if not pid:
            return False
        cur.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND NOT granted)", [pid[0]])
        return bool(cur.fetchone()[0])

    for held, before, after in (("spend", [], ["total", "daily"]), ("total", ["spend"], ["daily"])):
        record = UsageRecord.objects.create(run_id=run.id, kind="llm", cost_usd=Decimal("0.2"))
        pid: list[int] = []
        failed: list[BaseException] = []
        writer = threading.Thread(target=adding, args=(record.id, pid, failed))
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(rows[held].format(""))
            writer.start()

            wait_for(functools.partial(waiting, cur, pid))
            free = {}
            for name in before + after:  # SKIP LOCKED: no row when the writer holds it
                cur.execute(rows[name].format("SKIP LOCKED"))
                free[name] = cur.fetchone() is not None
        writer.join(60)
        assert not writer.is_alive()
        assert not failed, failed
        assert free == {**dict.fromkeys(before, False), **dict.fromkeys(after, True)}, (held, free)
    assert usage.usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 0}  # and the sums are right
