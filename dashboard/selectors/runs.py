"""The runs list (keyset pages, capped status counts) and the run page."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce, Now

from dashboard.selectors.usage import record_tokens, zero_cost
from tidebase_core.models import (
    ChannelDelivery,
    Event,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    StateStream,
    StateVersion,
    Step,
    UsageRecord,
)
from tidebase_core.models.runs import TERMINAL_STATUSES, RunStatus

RUNS_PAGE = 50
EVENTS_TAIL = 200


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
            sum_tokens=Coalesce(Sum(record_tokens()), 0),
            cost=Coalesce(Sum("cost_usd"), zero_cost()),
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
