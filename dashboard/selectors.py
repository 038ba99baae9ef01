"""Dashboard-only reads. Every function issues a fixed number of queries, whatever the number of
rows (no N+1); lists are bounded and runs page by keyset on ``(created_at, id)``."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, DecimalField, F, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from tidebase_core.models import (
    ApiKey,
    ChannelDelivery,
    Event,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    Schedule,
    StateStream,
    StateVersion,
    Step,
    UsageDaily,
    UsageRecord,
)
from tidebase_core.models.runs import TERMINAL_STATUSES, RunStatus

INBOX_LIMIT = 200
HISTORY_LIMIT = 50
RUNS_PAGE = 50
EVENTS_TAIL = 200

# ---- approvals -------------------------------------------------------------------------------


def pending_gates(*, limit: int = INBOX_LIMIT) -> list[Gate]:
    """Pending gates, oldest first (tb_gate_pending_idx), with their run, in one query."""
    return list(
        Gate.objects.filter(status="pending")
        .select_related("run")
        .annotate(db_now=Now())
        .order_by("created_at", "id")[:limit]
    )


def pending_gate_count() -> int:
    return Gate.objects.filter(status="pending").count()


def decided_gates(*, limit: int = HISTORY_LIMIT) -> list[Gate]:
    """The latest decisions, newest first, with their run, in one query."""
    return list(
        Gate.objects.exclude(status="pending")
        .select_related("run")
        .order_by(F("resolved_at").desc(nulls_last=True), "-id")[:limit]
    )


def gate_card(*, gate_id: str) -> Gate | None:
    return Gate.objects.select_related("run").annotate(db_now=Now()).filter(id=gate_id).first()


# ---- runs ------------------------------------------------------------------------------------


@dataclass
class RunFilters:
    status: str = ""
    workflow: str = ""
    queue: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    run_id: str = ""

    def apply(self, qs: QuerySet[Run], *, with_status: bool = True) -> QuerySet[Run]:
        if self.run_id:
            qs = qs.filter(id__startswith=self.run_id)
        if with_status and self.status:
            qs = qs.filter(status=self.status)
        if self.workflow:
            qs = qs.filter(workflow_name=self.workflow)
        if self.queue:
            qs = qs.filter(queue=self.queue)
        if self.since:
            qs = qs.filter(created_at__gte=self.since)
        if self.until:
            qs = qs.filter(created_at__lt=self.until)
        return qs


#: Status counts are exact up to this many runs per status, then shown as "10,000+": counting a
#: million rows exactly is a scan of a million index entries on every page view.
COUNT_CAP = 10_000


@dataclass
class RunPage:
    runs: list[Run]
    next_cursor: str | None
    counts: dict[str, int] = field(default_factory=dict)
    #: statuses whose count reached COUNT_CAP (the real number is at least that)
    capped: frozenset[str] = frozenset()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def encode_cursor(created_at: dt.datetime, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, run_id = raw.split("|", 1)
        return dt.datetime.fromisoformat(stamp), run_id
    except (ValueError, UnicodeDecodeError):
        return None


def run_page(*, filters: RunFilters, cursor: str = "", limit: int = RUNS_PAGE) -> RunPage:
    """One page of runs, newest first, by keyset: ``(created_at, id) < cursor`` walks
    tb_run_created_idx (or tb_run_status_idx with a status) without OFFSET, so page 10,000 of a
    million runs costs what page 1 does. Two queries: the page and the status counts."""
    qs = filters.apply(Run.objects.all())
    position = decode_cursor(cursor) if cursor else None
    if position is not None:
        # A row comparison, so Postgres can use the (created_at DESC, id DESC) index as a range;
        # the redundant ``created_at <=`` bounds the (status, created_at DESC) index the same way.
        qs = qs.extra(
            where=["tb_run.created_at <= %s AND (tb_run.created_at, tb_run.id) < (%s, %s)"],
            params=[position[0], *position],
        )
    rows = list(
        qs.order_by("-created_at", "-id").only(
            "id",
            "workflow_name",
            "status",
            "queue",
            "attempt",
            "created_at",
            "updated_at",
            "completed_at",
            "failure_class",
        )[: limit + 1]
    )
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    counts, capped = status_counts(filters=filters)
    return RunPage(runs=rows[:limit], next_cursor=next_cursor, counts=counts, capped=capped)


def status_counts(*, filters: RunFilters, cap: int = COUNT_CAP) -> tuple[dict[str, int], frozenset[str]]:
    """Runs per status under the other filters, each counted up to ``cap``, in one statement:
    a UNION ALL of one ``LIMIT cap`` branch per status, each a bounded index(-only) scan of
    tb_run_status_idx (or of the filters' index), never a full scan of tb_run. Returns the
    counts and the statuses that reached the cap."""
    statuses = [s.value for s in RunStatus]
    branches = [
        filters.apply(Run.objects.filter(status=status), with_status=False).order_by().values("status")[:cap]
        for status in statuses
    ]
    sql, params = branches[0].union(*branches[1:], all=True).query.sql_with_params()
    counts = dict.fromkeys(statuses, 0)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status, count(*) FROM ({sql}) AS bounded GROUP BY status", params)
        for status, n in cursor.fetchall():
            counts[status] = int(n)
    return counts, frozenset(s for s, n in counts.items() if n >= cap)


@dataclass
class RunDetail:
    run: Run
    steps: list[Step]
    gates: list[Gate]
    state: RunState | None
    streams: list[StateStream]
    versions: list[StateVersion]
    children: list[RunEdge]
    parents: list[RunEdge]
    deliveries: list[ChannelDelivery]
    recoveries: list[RecoveryAttempt]
    events: list[Event]
    usage: Sequence[Mapping[str, Any]]
    usage_total: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.run.status in TERMINAL_STATUSES

    @property
    def snapshots(self) -> list[StateVersion]:
        return [v for v in self.versions if v.label]


def run_live(*, run_id: str) -> Run | None:
    """The run row alone: what the live poll checks before re-rendering anything."""
    return Run.objects.filter(id=run_id).annotate(db_now=Now()).first()


def run_detail(*, run: Run) -> RunDetail:
    """Everything on the run page, one query per section (12 queries, whatever the sizes)."""
    run_id = run.id
    steps = list(Step.objects.filter(run_id=run_id).order_by("created_at", "id"))
    gates = list(Gate.objects.filter(run_id=run_id).order_by("created_at", "id"))
    state = RunState.objects.filter(run_id=run_id).first()
    streams = list(StateStream.objects.filter(run_id=run_id).order_by("created_at"))
    versions = list(
        StateVersion.objects.filter(run_id=run_id).select_related("stream").order_by("-created_at", "-version")[:100]
    )
    children = list(
        RunEdge.objects.filter(parent_run_id=run_id).select_related("child_run").order_by("created_at", "id")[:200]
    )
    parents = list(RunEdge.objects.filter(child_run_id=run_id).select_related("parent_run")[:10])
    deliveries = list(ChannelDelivery.objects.filter(run_id=run_id).order_by("-created_at")[:100])
    recoveries = list(RecoveryAttempt.objects.filter(run_id=run_id).order_by("-created_at")[:100])
    events = list(Event.objects.filter(run_id=run_id).order_by("-seq")[:EVENTS_TAIL])
    events.reverse()
    usage = list(
        UsageRecord.objects.filter(run_id=run_id)
        .values("provider", "model", "kind")
        .annotate(
            records=Count("id"),
            sum_input=Coalesce(Sum("input_tokens"), 0),
            sum_output=Coalesce(Sum("output_tokens"), 0),
            sum_tokens=Coalesce(Sum(_tokens()), 0),
            cost=Coalesce(Sum("cost_usd"), _zero()),
        )
        .order_by("-cost", "provider", "model")
    )
    total = {
        "records": sum(u["records"] for u in usage),
        "total_tokens": sum(u["sum_tokens"] for u in usage),
        "cost": sum((u["cost"] for u in usage), Decimal(0)),
    }
    return RunDetail(
        run=run,
        steps=steps,
        gates=gates,
        state=state,
        streams=streams,
        versions=versions,
        children=children,
        parents=parents,
        deliveries=deliveries,
        recoveries=recoveries,
        events=events,
        usage=usage,
        usage_total=total,
    )


# ---- usage and cost --------------------------------------------------------------------------


def _tokens() -> Any:
    """Total tokens of a record: ``total_tokens``, else input + output."""
    return Coalesce("total_tokens", Coalesce("input_tokens", 0) + Coalesce("output_tokens", 0))


def _zero() -> Value:
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


# ---- webhooks --------------------------------------------------------------------------------


@dataclass
class Delivery:
    """A row of the webhook log: a channel delivery or a recovery (run.resume/run.invoke) attempt."""

    kind: str  # "channel" | "recovery"
    id: str
    run_id: str
    workflow: str
    event_type: str
    url: str
    status: str
    attempts: int
    http_status: int | None
    error_text: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    latency_ms: int | None

    @property
    def dead(self) -> bool:
        return self.status == "failed"

    @classmethod
    def of(cls, kind: str, row: Any, *, event_type: str, url: str) -> Delivery:
        """From an outbox row (``ChannelDelivery`` or ``RecoveryAttempt``: the ``OutboxRow``
        fields), its run loaded."""
        return cls(
            kind=kind,
            id=row.id,
            run_id=row.run_id,
            workflow=row.run.workflow_name,
            event_type=event_type,
            url=url,
            status=row.status,
            attempts=row.attempts,
            http_status=row.http_status,
            error_text=row.error_text,
            created_at=row.created_at,
            completed_at=row.completed_at,
            next_attempt_at=row.next_attempt_at,
            latency_ms=None,
        )


def _last_attempts(ids: list[str]) -> dict[tuple[str, str], Any]:
    """The latest HTTP attempt of each listed delivery from the webhooks app's attempt log, in
    one query (DISTINCT ON over the (kind, delivery_id, number) unique index)."""
    try:
        from webhooks.models import DeliveryAttempt
    except ImportError:
        return {}
    if not ids:
        return {}
    rows = (
        DeliveryAttempt.objects.filter(delivery_id__in=ids)
        .order_by("kind", "delivery_id", "-number")
        .distinct("kind", "delivery_id")
        .only("kind", "delivery_id", "number", "latency_ms")
    )
    return {(r.kind, r.delivery_id): r for r in rows}


def deliveries(*, status: str = "", kind: str = "", limit: int = 100) -> list[Delivery]:
    """The newest deliveries of both kinds, merged (two queries, each bounded)."""
    out: list[Delivery] = []
    if kind in ("", "channel"):
        qs = ChannelDelivery.objects.select_related("run").defer("payload", "secret", "response_body", "run__input")
        if status:
            qs = qs.filter(status=status)
        out += [
            Delivery.of("channel", d, event_type=d.event_type, url=d.url) for d in qs.order_by("-created_at")[:limit]
        ]
    if kind in ("", "recovery"):
        rq = RecoveryAttempt.objects.select_related("run").defer("response_body", "run__input")
        if status:
            rq = rq.filter(status=status)
        out += [
            Delivery.of("recovery", a, event_type=a.type, url=a.webhook_url) for a in rq.order_by("-created_at")[:limit]
        ]
    out.sort(key=lambda d: d.created_at, reverse=True)
    out = out[:limit]
    attempts = _last_attempts([d.id for d in out])
    for row in out:
        last = attempts.get((row.kind, row.id))
        if last is not None:
            row.latency_ms = last.latency_ms
    return out


def delivery_counts() -> dict[str, int]:
    counts = {"pending": 0, "delivered": 0, "failed": 0}
    for model in (ChannelDelivery, RecoveryAttempt):
        for row in model.objects.values("status").annotate(n=Count("id")):
            counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
    return counts


# ---- API keys --------------------------------------------------------------------------------


def api_keys() -> list[ApiKey]:
    return list(ApiKey.objects.order_by(F("revoked_at").desc(nulls_first=True), "-created_at"))


def default_range(days: int = 30) -> tuple[dt.datetime, dt.datetime]:
    today = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1)


# --- queues and schedules -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    name: str
    queued: int
    running: int
    failed: int
    completed: int
    cancelled: int
    concurrency: int | None
    rate_per_minute: int | None
    invoke_url: str | None
    paused: bool
    recent_failures: list[Run]


def queue_overview(*, failures_per_queue: int = 3) -> list[QueueRow]:
    """Depth and caps per queue (one aggregate query) plus each queue's latest failed runs (one
    query per queue, bounded by the number of queues, which is small)."""
    from tidebase_core.services.queues import queue_stats

    rows = []
    for q in queue_stats():
        config = q["config"] or {}
        failures = (
            list(
                Run.objects.filter(queue=q["name"], status="failed")
                .only("id", "workflow_name", "error", "failure_class", "updated_at", "status")
                .order_by("-updated_at")[:failures_per_queue]
            )
            if q["failed"]
            else []
        )
        rows.append(
            QueueRow(
                name=q["name"],
                queued=q["queued"],
                running=q["running"],
                failed=q["failed"],
                completed=q["completed"],
                cancelled=q["cancelled"],
                concurrency=config.get("concurrency"),
                rate_per_minute=config.get("ratePerMinute"),
                invoke_url=config.get("invokeUrl"),
                paused=bool(config.get("paused")),
                recent_failures=failures,
            )
        )
    return rows


def schedule_list() -> list[Schedule]:
    return list(Schedule.objects.order_by("name"))
