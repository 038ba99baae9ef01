"""The approvals inbox: pending gates and the latest decisions."""

from __future__ import annotations

from django.db.models import F
from django.db.models.functions import Now

from tidebase_core.models import Gate, GateStatus

INBOX_LIMIT = 200
HISTORY_LIMIT = 50


def pending_gates(*, limit: int = INBOX_LIMIT) -> list[Gate]:
    """Pending gates, oldest first (tb_gate_pending_idx), with their run, in one query."""
    return list(
        Gate.objects.filter(status=GateStatus.PENDING)
        .select_related("run")
        .annotate(db_now=Now())
        .order_by("created_at", "id")[:limit]
    )


def pending_gate_count() -> int:
    return Gate.objects.filter(status=GateStatus.PENDING).count()


def decided_gates(*, limit: int = HISTORY_LIMIT) -> list[Gate]:
    """The latest decisions, newest first, with their run, in one query."""
    return list(
        Gate.objects.exclude(status=GateStatus.PENDING)
        .select_related("run")
        .order_by(F("resolved_at").desc(nulls_last=True), "-id")[:limit]
    )


def gate_card(*, gate_id: str) -> Gate | None:
    return Gate.objects.select_related("run").annotate(db_now=Now()).filter(id=gate_id).first()
