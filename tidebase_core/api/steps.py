from __future__ import annotations

import uuid

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import metrics, wire
from tidebase_core.api.common import seg
from tidebase_core.api.schemas import StepBeginIn, StepCompleteIn, StepFailIn
from tidebase_core.exceptions import BudgetParked
from tidebase_core.selectors import runs as selectors
from tidebase_core.services import budgets
from tidebase_core.services import steps as services

router = Router(tags=["steps"])


@router.post("/{run_id}/steps/begin", operation_id="begin_step")
def begin_step(request: HttpRequest, run_id: str, payload: StepBeginIn) -> HttpResponse:
    return wire.json_response(begin_body(seg(run_id), payload))


def begin_body(run_id: str, payload: StepBeginIn) -> dict[str, object]:
    """Begin (or replay) a step and shape the answer; shared with the WSGI hot path."""
    result = services.step_begin(
        run_id=run_id,
        name=payload.name,
        input_hash=payload.inputHash,
        input=payload.input,
        options=payload.options,
        owner=payload.leaseOwner or str(uuid.uuid4()),
        explicit_owner=payload.leaseOwner is not None,
    )
    if result.action == "parked":
        assert result.parked is not None
        answer = budgets.parked_answer(result.parked)
        if payload.onBudget == "park":
            return answer
        raise BudgetParked(
            f"the run is parked at its budget ({result.parked.budget.get('scope')}): "
            "an operator must approve its budget gate or raise the limit",
            gate=answer["gate"],
            budget=answer["budget"],
        )
    body: dict[str, object] = {"action": result.action}
    if result.step is not None:
        body["step"] = wire.step_out(result.step)
    if result.action == "execute":
        body["leaseOwner"] = result.lease_owner
    elif result.action == "return":
        body["output"] = result.step.output if result.step is not None else None
    elif result.action == "input_mismatch":
        body["expectedInputHash"] = result.expected_hash
        body["actualInputHash"] = payload.inputHash
    return body


@router.get("/{run_id}/steps", operation_id="list_steps")
def list_steps(request: HttpRequest, run_id: str, status: str | None = None) -> HttpResponse:
    """Additive: every step of a run (or those with ``status``), in creation order. Our SDK
    loads completed checkpoints with one request when it resumes a run."""
    steps = selectors.step_list(run_id=seg(run_id), status=status)
    return wire.json_response({"steps": [wire.step_out(s) for s in steps]})


@router.post("/{run_id}/steps/{step_id}/complete", operation_id="complete_step")
def complete_step(request: HttpRequest, run_id: str, step_id: str, payload: StepCompleteIn) -> HttpResponse:
    return wire.json_response(complete_body(seg(run_id), seg(step_id), payload))


def complete_body(run_id: str, step_id: str, payload: StepCompleteIn) -> dict[str, object]:
    """Checkpoint a step's output and shape the answer; shared with the WSGI hot path."""
    step = services.step_complete(run_id=run_id, step_id=step_id, owner=payload.leaseOwner, output=payload.output)
    metrics.step_completed(step)
    return {"step": wire.step_out(step)}


@router.post("/{run_id}/steps/{step_id}/fail", operation_id="fail_step")
def fail_step(request: HttpRequest, run_id: str, step_id: str, payload: StepFailIn) -> HttpResponse:
    step = services.step_fail(
        run_id=seg(run_id),
        step_id=seg(step_id),
        owner=payload.leaseOwner,
        error=payload.error,
        retryable=payload.retryable,
        resume_decision=payload.resumeDecision,
    )
    return wire.json_response({"step": wire.step_out(step)})
