"""The cost figures of the usage page (a range of UTC days) and of one run (its page).

Range figures read ``tb_cost_daily`` (models.costs) and ``tb_usage_daily``, never tb_usage: each
query is a range scan of a rollup's unique key (kind, day, ...) or (day, ...), whatever the number
of runs and usage records (``scripts/dashboard_scale.py`` EXPLAINs them at 1M runs / 5M records).
A run's figures read its own usage records (tb_usage by run), steps and gates.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tidebase_core.db import fetch_one, fetch_rows
from tidebase_core.models.budgets import BudgetScope

ZERO = Decimal(0)

_TOTALS_SQL = """
SELECT kind, day, sum(records) AS records, sum(cost_usd) AS cost
FROM tb_cost_daily
WHERE kind IN ('replay_saved', 'failed', 'cancelled', 'approval') AND day >= %(first)s AND day < %(end)s
GROUP BY kind, day
"""

_GROUPS_SQL = """
SELECT name, sum(records) AS records, sum(cost_usd) AS cost
FROM tb_cost_daily
WHERE kind = 'step' AND day >= %(first)s AND day < %(end)s
GROUP BY name
ORDER BY sum(cost_usd) DESC, name
LIMIT 200
"""

# Spend per day and workflow for the burn-down of every budget with a limit: one range scan of the
# daily rollup from the earliest day a chart needs (the first of the month, for monthly budgets).
_SPEND_SQL = """
SELECT day, workflow, sum(cost_usd) AS cost
FROM tb_usage_daily
WHERE day >= %(first)s AND day < %(end)s
GROUP BY day, workflow
"""

_LIMITS_SQL = """
SELECT scope, workflow, limit_usd, version FROM tb_budget_limit WHERE limit_usd IS NOT NULL ORDER BY scope, workflow
"""


@dataclass
class Group:
    name: str
    records: int
    cost: Decimal


@dataclass
class BurnDown:
    """One budget against its limit: ``days`` with the spend of that day (daily budgets) or the
    month's running total (monthly), over the range (daily) or the current month (monthly)."""

    scope: str
    workflow: str
    limit: Decimal
    version: int
    days: list[tuple[dt.date, Decimal]]

    @property
    def label(self) -> str:
        who = "all workflows" if self.scope == BudgetScope.GLOBAL_DAY else self.workflow
        period = "per month" if self.scope == BudgetScope.WORKFLOW_MONTH else "per day"
        return f"{who} · {period}"

    @property
    def current(self) -> Decimal:
        return self.days[-1][1] if self.days else ZERO

    @property
    def percent(self) -> int:
        return int(self.current * 100 / self.limit) if self.limit > 0 else (100 if self.current > 0 else 0)


@dataclass
class UsageFigures:
    replay_saved: Decimal = ZERO
    resumes: int = 0
    failed_cost: Decimal = ZERO
    failed_runs: int = 0
    cancelled_cost: Decimal = ZERO
    cancelled_runs: int = 0
    approval_cost: Decimal = ZERO
    approvals: int = 0
    steps: list[Group] = field(default_factory=list)
    tools: list[Group] = field(default_factory=list)
    burn_downs: list[BurnDown] = field(default_factory=list)
    by_day: dict[str, list[float]] = field(default_factory=dict)

    @property
    def cost_per_approval(self) -> Decimal | None:
        return (self.approval_cost / self.approvals).quantize(Decimal("0.0001")) if self.approvals else None

    def series(self, days: list[str]) -> dict[str, Any]:
        """Chart data (floats are fine for drawing; the tables keep Decimals)."""
        return {
            "figureDays": days,
            "savedByDay": self.by_day.get("replay_saved", [0.0] * len(days)),
            "failedByDay": self.by_day.get("failed", [0.0] * len(days)),
            "cancelledByDay": self.by_day.get("cancelled", [0.0] * len(days)),
            "topSteps": [g.name for g in self.steps],
            "topStepCost": [float(g.cost) for g in self.steps],
            "topTools": [g.name for g in self.tools],
            "topToolCost": [float(g.cost) for g in self.tools],
            "burnDowns": [
                {
                    "label": b.label,
                    "limit": float(b.limit),
                    "days": [d.isoformat() for d, _ in b.days],
                    "spent": [float(v) for _, v in b.days],
                }
                for b in self.burn_downs
            ],
        }


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def usage_figures(*, first: dt.date, end: dt.date, today: dt.date, top: int = 10) -> UsageFigures:
    """The figures for the UTC days [first, end): four small range scans of the rollups."""
    out = UsageFigures()
    days = [first + dt.timedelta(days=i) for i in range((end - first).days)]
    index = {d: i for i, d in enumerate(days)}
    for row in fetch_rows(_TOTALS_SQL, {"first": first, "end": end}):
        records, cost = int(row.records), Decimal(row.cost)
        series = out.by_day.setdefault(row.kind, [0.0] * len(days))
        if row.day in index:
            series[index[row.day]] += float(cost)
        if row.kind == "replay_saved":
            out.replay_saved += cost
            out.resumes += records
        elif row.kind == "failed":
            out.failed_cost += cost
            out.failed_runs += records
        elif row.kind == "cancelled":
            out.cancelled_cost += cost
            out.cancelled_runs += records
        else:
            out.approval_cost += cost
            out.approvals += records
    for row in fetch_rows(_GROUPS_SQL, {"first": first, "end": end}):
        group = Group(row.name, int(row.records), Decimal(row.cost))
        target = out.tools if row.name.startswith("tool:") else out.steps
        if len(target) < top:
            target.append(group)
    out.burn_downs = burn_downs(first=first, end=end, today=today)
    return out


def burn_downs(*, first: dt.date, end: dt.date, today: dt.date) -> list[BurnDown]:
    """Every shared budget with a limit against its spend: daily budgets over [first, end) (the
    spend of each day), monthly ones over the current month (its running total)."""
    limits = fetch_rows(_LIMITS_SQL, [])
    if not limits:
        return []
    month = _month_start(today)
    spend: dict[tuple[dt.date, str], Decimal] = defaultdict(Decimal)
    for row in fetch_rows(_SPEND_SQL, {"first": min(first, month), "end": max(end, today + dt.timedelta(days=1))}):
        spend[(row.day, row.workflow)] += Decimal(row.cost)
    totals: dict[dt.date, Decimal] = defaultdict(Decimal)
    for (day, _workflow), cost in spend.items():
        totals[day] += cost
    out = []
    for limit in limits:
        if limit.scope == BudgetScope.WORKFLOW_MONTH:
            running, points = ZERO, []
            for i in range((today - month).days + 1):
                day = month + dt.timedelta(days=i)
                running += spend.get((day, limit.workflow), ZERO)
                points.append((day, running))
        else:
            points = [
                (
                    day,
                    totals.get(day, ZERO)
                    if limit.scope == BudgetScope.GLOBAL_DAY
                    else spend.get((day, limit.workflow), ZERO),
                )
                for day in (first + dt.timedelta(days=i) for i in range((end - first).days))
            ]
        out.append(BurnDown(limit.scope, limit.workflow, Decimal(limit.limit_usd), limit.version, points))
    return out


# ---- one run ------------------------------------------------------------------------------------

_RUN_STEPS_SQL = """
SELECT u.step_id, s.name, tb_usage_group(s.name, u.kind, u.label, u.provider) AS grp,
       count(*) AS records, COALESCE(sum(u.cost_usd), 0) AS cost, min(u.created_at) AS first_at
FROM tb_usage u LEFT JOIN tb_step s ON s.id = u.step_id
WHERE u.run_id = %s
GROUP BY u.step_id, s.name, grp
ORDER BY min(u.created_at)
"""

_RUN_SQL = """
SELECT r.budget_usd, r.budget_allowance_usd, t.cost_usd, t.saved_usd,
       (SELECT count(*) FROM tb_gate g WHERE g.run_id = r.id AND g.status IN ('approved', 'rejected')
          AND g.name NOT LIKE 'budget:%%') AS approvals
FROM tb_run r LEFT JOIN tb_usage_run t ON t.run_id = r.id
WHERE r.id = %s
"""


@dataclass
class RunFigures:
    cost: Decimal
    budget: Decimal | None
    allowance: Decimal | None
    saved: Decimal
    approvals: int
    by_step: dict[str, Decimal]
    groups: list[Group]
    timeline: list[tuple[str, Decimal, Decimal]]  # (step or group, cost, running total)

    @property
    def budget_percent(self) -> int | None:
        if self.budget is None:
            return None
        return int(self.cost * 100 / self.budget) if self.budget > 0 else 100

    @property
    def cost_per_approval(self) -> Decimal | None:
        return (self.cost / self.approvals).quantize(Decimal("0.0001")) if self.approvals else None


def run_figures(*, run_id: str) -> RunFigures | None:
    run = fetch_one(_RUN_SQL, [run_id])
    if run is None:
        return None
    by_step: dict[str, Decimal] = {}
    groups: dict[str, Group] = {}
    timeline: list[tuple[str, Decimal, Decimal]] = []
    running = ZERO
    for row in fetch_rows(_RUN_STEPS_SQL, [run_id]):
        cost = Decimal(row.cost)
        if row.step_id:
            by_step[row.step_id] = by_step.get(row.step_id, ZERO) + cost
        group = groups.setdefault(row.grp, Group(row.grp, 0, ZERO))
        group.records += int(row.records)
        group.cost += cost
        running += cost
        timeline.append((row.name or row.grp, cost, running))
    return RunFigures(
        cost=Decimal(run.cost_usd or 0),
        budget=run.budget_usd,
        allowance=run.budget_allowance_usd,
        saved=Decimal(run.saved_usd or 0),
        approvals=int(run.approvals),
        by_step=by_step,
        groups=sorted(groups.values(), key=lambda g: (-g.cost, g.name))[:10],
        timeline=timeline,
    )
