"""Usage and cost: the usage page and its CSV, read from the rollups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import DecimalField, F, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from tidebase_core.models import UsageDaily


def record_tokens() -> Any:
    """Total tokens of a record: ``total_tokens``, else input + output."""
    return Coalesce("total_tokens", Coalesce("input_tokens", 0) + Coalesce("output_tokens", 0))


def zero_cost() -> Value:
    return Value(Decimal(0), output_field=DecimalField(max_digits=20, decimal_places=10))


@dataclass
class UsageReport:
    since: dt.datetime
    until: dt.datetime
    days: Sequence[Mapping[str, Any]]
    by_model: Sequence[Mapping[str, Any]]
    by_workflow: Sequence[Mapping[str, Any]]
    top_runs: Sequence[Mapping[str, Any]]

    @property
    def last_day(self) -> dt.datetime:
        return self.until - dt.timedelta(days=1)

    @property
    def total_cost(self) -> Decimal:
        return sum((d["cost"] for d in self.days), Decimal(0))

    @property
    def total_tokens(self) -> int:
        return sum(d["tokens"] for d in self.days)

    @property
    def records(self) -> int:
        return sum(d["records"] for d in self.days)

    def series(self) -> dict[str, Any]:
        """The chart data: plain JSON (floats for money are fine for drawing; tables and CSV
        keep the Decimals)."""
        labels = [d["day"].date().isoformat() for d in self.days]
        index = {label: i for i, label in enumerate(labels)}
        models: dict[str, list[int]] = {}
        for row in self.by_model:
            key = f"{row['provider'] or 'unknown'} / {row['model'] or 'unknown'}"
            values = models.setdefault(key, [0] * len(labels))
            values[index[row["day"].date().isoformat()]] += int(row["tokens"])
        return {
            "days": labels,
            "cost": [float(d["cost"]) for d in self.days],
            "tokens": [int(d["tokens"]) for d in self.days],
            "tokensByModel": [{"label": k, "data": v} for k, v in models.items()],
            "workflows": [w["workflow"] for w in self.by_workflow],
            "workflowCost": [float(w["cost"]) for w in self.by_workflow],
            "topRuns": [f"{r['run_id'][:12]}… {r['workflow']}" for r in self.top_runs],
            "topRunCost": [float(r["cost"]) for r in self.top_runs],
        }


def _days(since: dt.datetime, until: dt.datetime) -> tuple[dt.date, dt.date]:
    """The UTC days a range covers, as [first, end): the rollups are per day, so a range that
    does not start or end at midnight UTC is widened to whole days (the form only makes whole
    days)."""
    first = since.astimezone(dt.UTC)
    last = until.astimezone(dt.UTC)
    end = last.date() if last.time() == dt.time.min else last.date() + dt.timedelta(days=1)
    return first.date(), end


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


#: Per-workflow totals from the daily rollup, and the top runs by cost from the per-run totals,
#: in one statement. Top runs are the runs with usage in the range (first usage before its end,
#: last usage at or after its start), ranked by their whole cost: the inner query walks
#: tb_usage_run_cost_idx from the highest cost, filters on the first/last times the index
#: carries, and stops after N matches (an empty range never walks it: the one-time EXISTS).
_WORKFLOWS_AND_TOP_RUNS_SQL = """
(SELECT 'workflow' AS part, workflow, NULL AS run_id, SUM(cost_usd) AS cost, SUM(total_tokens) AS tokens,
        SUM(runs) AS runs, NULL::timestamptz AS first, NULL::timestamptz AS last
 FROM tb_usage_daily WHERE day >= %(first)s AND day < %(end)s
 GROUP BY workflow ORDER BY SUM(cost_usd) DESC, workflow LIMIT %(workflows)s)
UNION ALL
(SELECT 'run', t.workflow, t.run_id, t.cost_usd, t.total_tokens, 1, t.first_at, t.last_at
 FROM (SELECT run_id FROM tb_usage_run
       WHERE first_at < %(until)s AND last_at >= %(since)s
         AND EXISTS (SELECT 1 FROM tb_usage_daily WHERE day >= %(first)s AND day < %(end)s)
       ORDER BY cost_usd DESC, run_id LIMIT %(runs)s) top
 JOIN tb_usage_run t ON t.run_id = top.run_id
 ORDER BY t.cost_usd DESC, t.run_id)
"""


def usage_report(*, since: dt.datetime, until: dt.datetime) -> UsageReport:
    """Two queries on the usage rollups (maintained with every usage record, so current to the
    last commit; see docs/decisions.md, "Usage rollups"), whatever the number of usage records:
    day x provider x model from tb_usage_daily (a range scan of its unique key; the daily totals
    are summed from it here), and the per-workflow breakdown plus the top runs. Every day of the
    range is present, with zeros, so charts have an axis. By workflow, ``runs`` counts the runs
    whose first usage record is in the range."""
    first, end = _days(since, until)
    rows = (
        UsageDaily.objects.filter(day__gte=first, day__lt=end)
        .values("day", "provider", "model")
        .annotate(
            records=Sum("records"),
            sum_input=Sum("input_tokens"),
            sum_output=Sum("output_tokens"),
            tokens=Sum("total_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by("day", "provider", "model")
    )
    # days as UTC midnights (datetimes), as the template and the chart series expect
    by_model: list[dict[str, Any]] = [{**row, "day": _midnight(row["day"])} for row in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            _WORKFLOWS_AND_TOP_RUNS_SQL,
            {
                "first": first,
                "end": end,
                "since": _midnight(first),
                "until": _midnight(end),
                "workflows": 20,
                "runs": 10,
            },
        )
        totals = cursor.fetchall()
    days: dict[dt.datetime, dict[str, Any]] = {}
    for row in by_model:
        day = days.setdefault(row["day"], {"day": row["day"], "cost": Decimal(0), "tokens": 0, "records": 0})
        day["cost"] += row["cost"]
        day["tokens"] += int(row["tokens"])
        day["records"] += int(row["records"])
    filled = []
    cursor_day = _midnight(first)
    while cursor_day < _midnight(end):
        filled.append(days.get(cursor_day, {"day": cursor_day, "cost": Decimal(0), "tokens": 0, "records": 0}))
        cursor_day += dt.timedelta(days=1)
    by_workflow = [
        {"workflow": workflow, "cost": cost, "tokens": int(tokens), "runs": int(runs)}
        for part, workflow, _run, cost, tokens, runs, _first, _last in totals
        if part == "workflow"
    ]
    top_runs = [
        {
            "run_id": run_id,
            "workflow": workflow,
            "cost": cost,
            "tokens": int(tokens),
            "first": first_at,
            "last": last_at,
        }
        for part, workflow, run_id, cost, tokens, _runs, first_at, last_at in totals
        if part == "run"
    ]
    return UsageReport(
        since=since, until=until, days=filled, by_model=by_model, by_workflow=by_workflow, top_runs=top_runs
    )


def usage_csv_rows(*, since: dt.datetime, until: dt.datetime) -> QuerySet[Any, Any]:
    """The finest grain the charts use: day x workflow x provider x model, which is one row of
    tb_usage_daily each (read in its unique key's order). ``day`` is a date."""
    first, end = _days(since, until)
    return (
        UsageDaily.objects.filter(day__gte=first, day__lt=end)
        .values(
            "day",
            "workflow",
            "provider",
            "model",
            "records",
            sum_input=F("input_tokens"),
            sum_output=F("output_tokens"),
            sum_tokens=F("total_tokens"),
            sum_cost=F("cost_usd"),
        )
        .order_by("day", "workflow", "provider", "model")
    )


def default_range(days: int = 30) -> tuple[dt.datetime, dt.datetime]:
    today = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1)
