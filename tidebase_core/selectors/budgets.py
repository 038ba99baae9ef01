"""Budget reads for the dashboard's budgets page: the shared budgets with their spend in the
current period, their version history, and the runs parked at a budget now."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from tidebase_core.db import fetch_rows
from tidebase_core.models import BudgetVersion, Gate
from tidebase_core.models.budgets import BudgetScope
from tidebase_core.services.budgets import GATE_PREFIX, period_sql

_CURRENT_SQL = f"""
SELECT l.scope, l.workflow, l.limit_usd, l.version, l.updated_by, l.updated_at, p.period,
       COALESCE(s.spent_usd, 0) AS spent_usd
FROM tb_budget_limit l
CROSS JOIN LATERAL (SELECT {period_sql("l.scope", "(now() AT TIME ZONE 'UTC')::date")} AS period) p
LEFT JOIN tb_budget_spend s ON s.scope = l.scope AND s.workflow = l.workflow AND s.period = p.period
ORDER BY l.scope, l.workflow
"""


@dataclass
class CurrentBudget:
    scope: str
    workflow: str
    limit: Decimal | None
    version: int
    updated_by: str
    updated_at: dt.datetime
    period: dt.date
    spent: Decimal

    @property
    def scope_label(self) -> str:
        return BudgetScope(self.scope).label

    @property
    def period_label(self) -> str:
        return self.period.strftime("%Y-%m") if self.scope == BudgetScope.WORKFLOW_MONTH else self.period.isoformat()

    @property
    def percent(self) -> int | None:
        if self.limit is None:
            return None
        return min(int(self.spent * 100 / self.limit), 999) if self.limit > 0 else 100

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


def current_budgets() -> list[CurrentBudget]:
    """Every shared budget ever set (removed ones with ``limit`` None), with this period's spend."""
    return [
        CurrentBudget(
            r.scope, r.workflow, r.limit_usd, r.version, r.updated_by, r.updated_at, r.period, Decimal(r.spent_usd)
        )
        for r in fetch_rows(_CURRENT_SQL, [])
    ]


def budget_history(*, limit: int = 100) -> list[BudgetVersion]:
    return list(BudgetVersion.objects.order_by("-created_at", "-id")[:limit])


def parked_runs(*, limit: int = 100) -> list[Gate]:
    """Pending budget gates, oldest first (each is a run parked at a budget)."""
    gates = Gate.objects.filter(status="pending", name__startswith=GATE_PREFIX).select_related("run")
    pending = gates.order_by("created_at")[:limit]
    return [g for g in pending if isinstance(g.data, dict) and g.data.get("kind") == "budget"]
