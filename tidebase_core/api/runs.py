from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import wire
from tidebase_core.api.common import channels_in, idempotency, optional_body, principal, seg, usd
from tidebase_core.api.schemas import (
    ChildCreateIn,
    HeartbeatIn,
    RunCancelIn,
    RunCompleteIn,
    RunCreateIn,
    RunFailIn,
    RunRecoverIn,
)
from tidebase_core.auth import Principal
from tidebase_core.exceptions import InvalidRequest
from tidebase_core.selectors import runs as selectors
from tidebase_core.services import runs as services

router = Router(tags=["runs"])


@router.post("/{run_id}", operation_id="create_run")
def create_run(request: HttpRequest, run_id: str, payload: RunCreateIn) -> HttpResponse:
    """``POST /runs/:workflowName``. The segment is the workflow name; it shares its URL
    pattern with ``GET /runs/:runId``, which Django needs spelled identically."""
    return wire.json_response(create_body(seg(run_id), payload, request))


def create_body(workflow_name: str, payload: RunCreateIn, request: HttpRequest) -> dict[str, object]:
    """Create a run and shape the answer; shared with the WSGI hot path (``request`` gives the
    caller's scope for the channels and the ``Idempotency-Key`` header)."""
    run = services.run_create(
        workflow_name=workflow_name,
        input=payload.input,
        metadata=payload.metadata,
        recovery_webhook=str(payload.recoveryWebhook) if payload.recoveryWebhook else None,
        channels=channels_in(request, payload.channels),
        idempotency=idempotency(request, "run_create"),
        budget_usd=usd(payload.budgetUsd),
        started_by=principal(request).label,
    )
    return {"run": wire.run_out(run)}


@router.get("", operation_id="list_runs")
def list_runs(request: HttpRequest) -> HttpResponse:
    return wire.json_response({"runs": [wire.run_out(r) for r in selectors.run_list()]})


@router.get("/{run_id}", operation_id="get_run")
def get_run(request: HttpRequest, run_id: str) -> HttpResponse:
    return wire.json_response(detail_body(seg(run_id), principal(request)))


def detail_body(run_id: str, who: Principal) -> dict[str, object]:
    """Run detail (resolve tokens only for callers that may resolve); shared with the hot path."""
    return selectors.run_detail(run_id=run_id, show_tokens=who.can_resolve)


@router.post("/{run_id}/begin", operation_id="begin_run")
def begin_run(request: HttpRequest, run_id: str) -> HttpResponse:
    return wire.json_response(begin_body(seg(run_id), request.headers.get("x-tidebase-worker") or None))


def begin_body(run_id: str, owner: str | None) -> dict[str, object]:
    """Acquire the run lease (the owner from ``x-tidebase-worker``); shared with the hot path."""
    run, lease_owner = services.run_begin(run_id=run_id, owner=owner)
    return {"run": wire.run_out(run), "leaseOwner": lease_owner}


@router.post("/{run_id}/heartbeat", operation_id="heartbeat_run")
def heartbeat_run(request: HttpRequest, run_id: str, payload: HeartbeatIn) -> HttpResponse:
    if not payload.leaseOwner:
        raise InvalidRequest("leaseOwner is required", field="leaseOwner")
    run = services.run_heartbeat(run_id=seg(run_id), owner=payload.leaseOwner)
    return wire.json_response({"run": wire.run_out(run)})


@router.post("/{run_id}/complete", operation_id="complete_run")
def complete_run(request: HttpRequest, run_id: str, payload: RunCompleteIn) -> HttpResponse:
    return wire.json_response(complete_body(seg(run_id), payload))


def complete_body(run_id: str, payload: RunCompleteIn) -> dict[str, object]:
    """Finish a run and shape the answer; shared with the hot path."""
    return {"run": wire.run_out(services.run_complete(run_id=run_id, result=payload.result))}


@router.post("/{run_id}/fail", operation_id="fail_run")
def fail_run(request: HttpRequest, run_id: str, payload: RunFailIn) -> HttpResponse:
    return wire.json_response(fail_body(seg(run_id), payload))


def fail_body(run_id: str, payload: RunFailIn) -> dict[str, object]:
    """Report a run failure and shape the answer; shared with the hot path."""
    run, requeued = services.run_fail(run_id=run_id, error=payload.error, failure_class=payload.failureClass)
    return {"run": wire.run_out(run), "requeued": requeued}


@router.post("/{run_id}/cancel", operation_id="cancel_run")
def cancel_run(request: HttpRequest, run_id: str) -> HttpResponse:
    who = principal(request)
    body = optional_body(request, RunCancelIn)
    actor = body.actor if body.actor is not None else (None if who.kind == "open" else who.label)
    run = services.run_cancel(run_id=seg(run_id), reason=body.reason, actor=actor)
    return wire.json_response({"run": wire.run_out(run)})


@router.post("/{run_id}/recover", operation_id="recover_run")
def recover_run(request: HttpRequest, run_id: str) -> HttpResponse:
    body = optional_body(request, RunRecoverIn)
    attempt = services.run_recover(run_id=seg(run_id), reason=body.reason or "manual")
    return wire.json_response({"recoveryAttempt": wire.recovery_out(attempt)})


@router.post("/{run_id}/children", operation_id="create_child_run")
def create_child_run(request: HttpRequest, run_id: str, payload: ChildCreateIn) -> HttpResponse:
    child, edge, created = services.child_create(
        parent_run_id=seg(run_id),
        name=payload.name,
        workflow_name=payload.workflowName,
        input=payload.input,
        metadata=payload.metadata,
        recovery_webhook=str(payload.recoveryWebhook) if payload.recoveryWebhook else None,
        channels=channels_in(request, payload.channels),
        edge_type=payload.edgeType or "child",
        edge_metadata=payload.edgeMetadata,
        budget_usd=usd(payload.budgetUsd),
    )
    return wire.json_response({"run": wire.run_out(child), "edge": wire.edge_out(edge), "created": created})
