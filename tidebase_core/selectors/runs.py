from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from tidebase_core import wire
from tidebase_core.db import EVENT_JSON, STEP_JSON, Row, fetch_rows
from tidebase_core.exceptions import RunNotFound
from tidebase_core.models import (
    Channel,
    ChannelDelivery,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    StateStream,
    StateVersion,
    UsageRecord,
)


def run_list(*, limit: int = 100) -> QuerySet[Run]:
    """The newest runs first (§6.3; the official client's tests read ``runs[0]``)."""
    return Run.objects.order_by("-created_at", "-id")[:limit]


def step_list(*, run_id: str, status: str | None = None) -> list[Row]:
    if status:
        sql, params = (
            "SELECT * FROM tb_step WHERE run_id = %s AND status = %s ORDER BY created_at, id",
            [run_id, status],
        )
    else:
        sql, params = "SELECT * FROM tb_step WHERE run_id = %s ORDER BY created_at, id", [run_id]
    return fetch_rows(sql, params, STEP_JSON)


def events_after(*, run_id: str, after: int, limit: int = 500) -> list[Row]:
    return fetch_rows(
        "SELECT * FROM tb_event WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s",
        [run_id, after, limit],
        EVENT_JSON,
    )


def state_versions(*, run_id: str, stream: str | None = None, labeled: bool = False) -> QuerySet[StateVersion]:
    qs = StateVersion.objects.filter(run_id=run_id)
    if stream is not None:
        qs = qs.filter(stream__name=stream)
    if labeled:
        qs = qs.filter(label__isnull=False)
    return qs.order_by("stream__name", "version")


def snapshots(*, run_id: str) -> QuerySet[StateVersion]:
    return StateVersion.objects.filter(run_id=run_id, label__isnull=False).order_by("-created_at", "-version")


def run_detail(*, run_id: str, show_tokens: bool) -> dict[str, Any]:
    """Everything about one run (§6.4), in the documented orders."""
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        raise RunNotFound()
    edges = list(RunEdge.objects.filter(parent_run_id=run_id).select_related("child_run").order_by("created_at", "id"))
    state = RunState.objects.filter(run_id=run_id).first()
    return {
        "run": wire.run_out(run),
        "steps": [wire.step_out(s) for s in step_list(run_id=run_id)],
        "state": wire.state_out(state) if state else None,
        "stateStreams": [wire.stream_out(s) for s in StateStream.objects.filter(run_id=run_id).order_by("created_at")],
        "stateVersions": [wire.version_out(v) for v in state_versions(run_id=run_id)],
        "runEdges": [wire.edge_out(e) for e in edges],
        "childRuns": [wire.run_out(e.child_run) for e in edges],
        "recoveryAttempts": [
            wire.recovery_out(a) for a in RecoveryAttempt.objects.filter(run_id=run_id).order_by("-created_at")
        ],
        "channels": [wire.channel_out(c) for c in Channel.objects.filter(run_id=run_id).order_by("created_at")],
        "channelDeliveries": [
            wire.delivery_out(d, show_token=show_tokens)
            for d in ChannelDelivery.objects.filter(run_id=run_id).order_by("-created_at")[:100]
        ],
        "gates": [
            wire.gate_out(g, show_token=show_tokens) for g in Gate.objects.filter(run_id=run_id).order_by("created_at")
        ],
        "usage": [wire.usage_out(u) for u in UsageRecord.objects.filter(run_id=run_id).order_by("created_at")],
        "events": [
            wire.event_out(e)
            for e in fetch_rows("SELECT * FROM tb_event WHERE run_id = %s ORDER BY seq", [run_id], EVENT_JSON)
        ],
    }
