"""The usage rollups (tb_usage_daily, tb_usage_run) always equal a GROUP BY over tb_usage: across
UTC days, models and workflows (NULL provider/model included), after idempotent retries, after a
rebuild, and under real concurrency (16 writers with their own connections on one daily row and
one run, no deadlock). ``expected_*`` compute the GROUP BY with the ORM, independently of the SQL
that maintains or rebuilds the rollups."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Count, DecimalField, F, Max, Min, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from tests.core.test_probes import in_threads
from tidebase_core.models import Run, UsageDaily, UsageRecord, UsageRunTotal
from tidebase_core.services import runs, usage
from tidebase_core.services.usage import usage_rollups_check, usage_rollups_rebuild

Key = tuple[Any, ...]


def _tokens() -> Any:
    return Coalesce("total_tokens", Coalesce("input_tokens", 0) + Coalesce("output_tokens", 0))


def _zero() -> Value:
    return Value(Decimal(0), output_field=DecimalField(max_digits=30, decimal_places=10))


def _sums() -> dict[str, Any]:
    return {
        "records": Count("id"),
        "input": Coalesce(Sum("input_tokens"), 0),
        "output": Coalesce(Sum("output_tokens"), 0),
        "tokens": Coalesce(Sum(_tokens()), 0),
        "cost": Coalesce(Sum("cost_usd"), _zero()),
    }


def expected_daily() -> dict[Key, tuple[int, int, int, int, int, Decimal]]:
    """(day, workflow, provider, model) -> (records, runs, input, output, tokens, cost); a run
    counts in the row of its first record."""
    firsts: dict[str, Key] = {}
    for rec in UsageRecord.objects.select_related("run").order_by("created_at", "id"):
        key = (rec.created_at.astimezone(dt.UTC).date(), rec.run.workflow_name, rec.provider, rec.model)
        firsts.setdefault(rec.run_id, key)
    first_counts: dict[Key, int] = {}
    for key in firsts.values():
        first_counts[key] = first_counts.get(key, 0) + 1
    rows = (
        UsageRecord.objects.annotate(day=TruncDate("created_at", tzinfo=dt.UTC), workflow=F("run__workflow_name"))
        .values("day", "workflow", "provider", "model")
        .annotate(**_sums())
    )
    out = {}
    for r in rows:
        key = (r["day"], r["workflow"], r["provider"], r["model"])
        out[key] = (r["records"], first_counts.get(key, 0), r["input"], r["output"], r["tokens"], r["cost"])
    return out


def actual_daily() -> dict[Key, tuple[int, int, int, int, int, Decimal]]:
    return {
        (d.day, d.workflow, d.provider, d.model): (
            d.records,
            d.runs,
            d.input_tokens,
            d.output_tokens,
            d.total_tokens,
            d.cost_usd,
        )
        for d in UsageDaily.objects.all()
    }


def expected_runs() -> dict[str, tuple[Any, ...]]:
    rows = UsageRecord.objects.values("run_id", workflow=F("run__workflow_name")).annotate(
        lo=Min("created_at"), hi=Max("created_at"), **_sums()
    )
    return {
        r["run_id"]: (r["workflow"], r["lo"], r["hi"], r["records"], r["input"], r["output"], r["tokens"], r["cost"])
        for r in rows
    }


def actual_runs() -> dict[str, tuple[Any, ...]]:
    return {
        t.run_id: (
            t.workflow,
            t.first_at,
            t.last_at,
            t.records,
            t.input_tokens,
            t.output_tokens,
            t.total_tokens,
            t.cost_usd,
        )
        for t in UsageRunTotal.objects.all()
    }


def assert_consistent() -> None:
    assert actual_daily() == expected_daily()
    assert actual_runs() == expected_runs()
    assert usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 0}


class Clock:
    """Records land on chosen instants: ``timezone.now`` for ``auto_now_add`` (a record written
    around ``usage_record``), and ``at=clock.at`` for ``usage_record``, which otherwise stamps
    with the database's clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
        monkeypatch.setattr(timezone, "now", lambda: self.at)


# The many shapes a record takes: NULL provider/model, tokens as input/output or total only, no
# cost, a cost at the tenth decimal place.
SHAPES: list[dict[str, Any]] = [
    {"provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 20, "cost_usd": Decimal("0.01")},
    {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 7, "cost_usd": Decimal("0.0000000001")},
    {"provider": "anthropic", "model": None, "total_tokens": 500, "cost_usd": Decimal("1.2345678901")},
    {"provider": None, "model": None, "kind": "tool", "quantity": Decimal(1), "cost_usd": Decimal("0.005")},
    {"provider": None, "model": "local", "output_tokens": 3},
    {"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, "total_tokens": 99},
]


@pytest.mark.django_db
def test_rollups__equal_a_group_by_across_days_models_workflows_and_nulls(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    made = [runs.run_create(workflow_name=w, input={}) for w in ("triage", "triage", "review", "report")]
    shapes = itertools.cycle(SHAPES)
    # around midnight UTC and across a week: 23:59:59.999999 and 00:00 are different days
    instants = [
        dt.datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2025, 3, 2, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2025, 3, 2, 13, 5, tzinfo=dt.UTC),
        dt.datetime(2025, 3, 8, 1, 0, tzinfo=dt.UTC),
    ]
    for i in range(60):  # in time order, as one clock writes them
        clock.at = instants[i * len(instants) // 60] + dt.timedelta(microseconds=i)
        usage.usage_record(run_id=made[i % 3].id, at=clock.at, **next(shapes))
    assert UsageRecord.objects.count() == 60
    assert UsageDaily.objects.filter(provider__isnull=True, model__isnull=True).exists()
    assert_consistent()
    assert sum(d.runs for d in UsageDaily.objects.all()) == 3  # the fourth run has no usage
    assert UsageDaily.objects.values("day").distinct().count() == 3


@pytest.mark.django_db
def test_rollups__an_idempotent_retry_counts_once() -> None:
    run = runs.run_create(workflow_name="triage", input={})
    fields: dict[str, Any] = {"provider": "openai", "model": "gpt-4o", "input_tokens": 5, "cost_usd": Decimal("0.5")}
    first = usage.usage_record(run_id=run.id, idempotency=("app", "usage-1"), **fields)
    again = usage.usage_record(run_id=run.id, idempotency=("app", "usage-1"), **fields)
    assert again.id == first.id
    usage.usage_record(run_id=run.id, idempotency=("app", "usage-2"), **fields)
    daily = UsageDaily.objects.get()
    assert (daily.records, daily.runs, daily.cost_usd) == (2, 1, Decimal("1.0"))
    assert UsageRunTotal.objects.get(run_id=run.id).records == 2
    assert_consistent()


@pytest.mark.django_db
def test_rollups__deleting_a_run_drops_its_totals_and_keeps_the_daily_ledger() -> None:
    keep, gone = (runs.run_create(workflow_name="triage", input={}) for _ in range(2))
    for run in (keep, gone):
        usage.usage_record(run_id=run.id, provider="openai", model="gpt-4o", cost_usd=Decimal("2"))
    Run.objects.filter(id=gone.id).delete()
    assert list(UsageRunTotal.objects.values_list("run_id", flat=True)) == [keep.id]
    daily = UsageDaily.objects.get()
    assert (daily.records, daily.runs, daily.cost_usd) == (2, 2, Decimal("4"))  # what was spent
    assert usage_rollups_check()["tb_usage_daily"] == 1  # differs from the remaining records...
    usage_rollups_rebuild()  # ...until a rebuild recomputes the ledger from them
    assert_consistent()


@pytest.mark.django_db
def test_rebuild__recomputes_from_a_day_on_and_check_finds_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    run = runs.run_create(workflow_name="triage", input={})
    other = runs.run_create(workflow_name="review", input={})
    for day in (1, 2, 3):
        clock.at = dt.datetime(2025, 3, day, 10, tzinfo=dt.UTC)
        usage.usage_record(run_id=run.id, provider="p", model="m", input_tokens=day, cost_usd=Decimal(day), at=clock.at)
        usage.usage_record(run_id=other.id, provider=None, model=None, cost_usd=Decimal("0.1"), at=clock.at)
    assert_consistent()
    before = actual_daily()
    # drift: a record written around usage_record, and a damaged rollup row
    clock.at = dt.datetime(2025, 3, 3, 11, tzinfo=dt.UTC)
    UsageRecord.objects.create(run=run, provider="p", model="m", input_tokens=100, cost_usd=Decimal("9"))
    UsageDaily.objects.filter(day=dt.date(2025, 3, 2), provider="p").update(records=99)
    assert usage_rollups_check() == {"tb_usage_run": 1, "tb_usage_daily": 2}  # the run; March 2nd and 3rd
    with pytest.raises(Exception, match="differ"):
        call_command("tidebase_usage_rollups", "check", verbosity=0)
    # a rebuild from March 3rd fixes that day and the runs with usage on it, not March 2nd
    usage_rollups_rebuild(since=dt.date(2025, 3, 3))
    assert usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 1}
    assert usage_rollups_check(since=dt.date(2025, 3, 3)) == {"tb_usage_run": 0, "tb_usage_daily": 0}
    call_command("tidebase_usage_rollups", "rebuild", verbosity=0)
    assert_consistent()
    after = actual_daily()
    assert after[(dt.date(2025, 3, 1), "triage", "p", "m")] == before[(dt.date(2025, 3, 1), "triage", "p", "m")]
    assert after[(dt.date(2025, 3, 3), "triage", "p", "m")][0] == 2


# --- real concurrency ---------------------------------------------------------------------------

WRITERS = 16
PER_WRITER = 6


@pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])
def test_rollups__16_concurrent_writers_on_one_daily_row_and_one_run_stay_exact() -> None:
    """Every writer records into the same (day, workflow, provider, model) row, alternating
    between one shared run (serialized by its run row lock) and a run of its own (only the daily
    row is shared). Each transaction locks run row, daily row, run-total row in that order, so
    none deadlocks; the sums are exact to the tenth decimal place."""
    shared = runs.run_create(workflow_name="hot", input={})
    own = [runs.run_create(workflow_name="hot", input={}) for _ in range(WRITERS)]
    cost = Decimal("0.0000000123")

    def writer(i: int) -> int:
        for k in range(PER_WRITER):
            run_id = shared.id if k % 2 == 0 else own[i].id
            usage.usage_record(
                run_id=run_id, provider="openai", model="gpt-4o", input_tokens=i, output_tokens=k, cost_usd=cost
            )
        # a retried request: two threads, two attempts each, with one key; it counts once
        for _ in range(2):
            usage.usage_record(
                run_id=shared.id,
                provider="openai",
                model="gpt-4o",
                input_tokens=1,
                cost_usd=cost,
                idempotency=("probe", f"retry-{i // 2}"),
            )
        return i

    results = in_threads(WRITERS, writer)

    assert results == list(range(WRITERS)), [r for r in results if isinstance(r, Exception)]
    retried = WRITERS // 2
    total = WRITERS * PER_WRITER + retried
    assert UsageRecord.objects.count() == total
    daily = UsageDaily.objects.get()
    assert daily.records == total
    assert daily.runs == WRITERS + 1
    assert daily.cost_usd == cost * total
    assert daily.input_tokens == PER_WRITER * sum(range(WRITERS)) + retried
    assert daily.output_tokens == WRITERS * sum(range(PER_WRITER))
    assert daily.total_tokens == daily.input_tokens + daily.output_tokens
    shared_total = UsageRunTotal.objects.get(run_id=shared.id)
    assert shared_total.records == WRITERS * (PER_WRITER // 2) + retried
    assert shared_total.cost_usd == cost * shared_total.records
    assert all(t.records == PER_WRITER // 2 for t in UsageRunTotal.objects.exclude(run_id=shared.id))
    assert_consistent()
