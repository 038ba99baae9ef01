from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import wire
from tidebase_core.api.common import idempotency, seg
from tidebase_core.api.schemas import SnapshotIn, StateSaveIn, StateWriteIn, UsageIn
from tidebase_core.selectors import runs as selectors
from tidebase_core.services import state as services
from tidebase_core.services.usage import usage_record

router = Router(tags=["state"])


def state_body(run_id: str, payload: StateWriteIn, *, merge: bool) -> dict[str, object]:
    """Set (PUT) or merge (PATCH) the live state and shape the answer; shared with the WSGI hot
    path."""
    live = services.state_write(
        run_id=run_id,
        value=payload.value,
        merge=merge,
        stream=payload.stream,
        label=payload.label,
        reason=payload.reason,
        importance=payload.importance,
        metadata=payload.metadata,
        created_by=payload.createdBy,
    )
    return {"state": wire.state_out(live)}


@router.put("/{run_id}/state", operation_id="set_state")
def set_state(request: HttpRequest, run_id: str, payload: StateWriteIn) -> HttpResponse:
    return wire.json_response(state_body(seg(run_id), payload, merge=False))


@router.patch("/{run_id}/state", operation_id="patch_state")
def patch_state(request: HttpRequest, run_id: str, payload: StateWriteIn) -> HttpResponse:
    return wire.json_response(state_body(seg(run_id), payload, merge=True))


@router.post("/{run_id}/state/save", operation_id="save_state")
def save_state(request: HttpRequest, run_id: str, payload: StateSaveIn) -> HttpResponse:
    version = services.state_save(
        run_id=seg(run_id),
        label=payload.label,
        stream=payload.stream,
        reason=payload.reason,
        importance=payload.importance,
        metadata=payload.metadata,
        created_by=payload.createdBy,
    )
    return wire.json_response({"stateVersion": wire.version_out(version)})


@router.get("/{run_id}/state/versions", operation_id="list_state_versions")
def list_state_versions(
    request: HttpRequest, run_id: str, stream: str | None = None, labeled: str | None = None
) -> HttpResponse:
    versions = selectors.state_versions(run_id=seg(run_id), stream=stream, labeled=labeled == "true")
    return wire.json_response({"stateVersions": [wire.version_out(v) for v in versions]})


@router.post("/{run_id}/snapshots", operation_id="create_snapshot")
def create_snapshot(request: HttpRequest, run_id: str, payload: SnapshotIn) -> HttpResponse:
    version = services.snapshot_create(
        run_id=seg(run_id),
        label=payload.label,
        state=payload.state,
        target_type=payload.target.type if payload.target else None,
        target_id=payload.target.id if payload.target else None,
        reason=payload.reason,
        metadata=payload.metadata,
        created_by=payload.createdBy,
    )
    return wire.json_response({"snapshot": wire.version_out(version)})


@router.get("/{run_id}/snapshots", operation_id="list_snapshots")
def list_snapshots(request: HttpRequest, run_id: str) -> HttpResponse:
    return wire.json_response({"snapshots": [wire.version_out(v) for v in selectors.snapshots(run_id=seg(run_id))]})


@router.post("/{run_id}/usage", operation_id="record_usage", tags=["usage"])
def record_usage(request: HttpRequest, run_id: str, payload: UsageIn) -> HttpResponse:
    return wire.json_response(usage_body(seg(run_id), payload, idempotency(request, USAGE_IDEMPOTENCY)))


USAGE_IDEMPOTENCY = "usage_record"
"""The route name in the scope of a usage record's ``Idempotency-Key`` (``common.idempotency``)."""


def usage_body(run_id: str, payload: UsageIn, key: tuple[str, str] | None) -> dict[str, object]:
    """Record usage (``key``: ``common.idempotency``'s scope and key) and shape the answer;
    shared with the WSGI hot path."""
    record = usage_record(
        run_id=run_id,
        step_id=payload.stepId,
        kind=payload.kind,
        provider=payload.provider,
        model=payload.model,
        label=payload.label,
        unit=payload.unit,
        quantity=Decimal(repr(payload.quantity)) if payload.quantity is not None else None,
        input_tokens=payload.inputTokens,
        output_tokens=payload.outputTokens,
        total_tokens=payload.totalTokens,
        cost_usd=Decimal(repr(payload.costUsd)) if payload.costUsd is not None else None,
        metadata=payload.metadata,
        idempotency=key,
    )
    return {"usage": wire.usage_out(record)}
