from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import Router

from tidebase_core import wire
from tidebase_core.api.common import channels_in, principal, seg
from tidebase_core.api.schemas import GateBeginIn, GateResolveIn
from tidebase_core.auth import TOKEN_ONLY
from tidebase_core.exceptions import Forbidden, InvalidRequest
from tidebase_core.models import Gate, GateStatus, RunStatus
from tidebase_core.selectors import gates as selectors
from tidebase_core.services import approvals, policies
from tidebase_core.services import gates as services
from tidebase_core.services.budgets import GATE_PREFIX as BUDGET_GATE_PREFIX
from tidebase_core.waiting import Parked, Poll, long_poll

router = Router(tags=["gates"])


@router.post("/{run_id}/gates/begin", operation_id="begin_gate")
def begin_gate(request: HttpRequest, run_id: str, payload: GateBeginIn) -> HttpResponse:
    if payload.name.startswith(BUDGET_GATE_PREFIX):
        # budget gates are opened by the server: approving one grants money, so no agent may forge one
        raise InvalidRequest(f"gate names starting with {BUDGET_GATE_PREFIX!r} are reserved", field="name")
    gate, _created = services.gate_begin(
        run_id=seg(run_id),
        name=payload.name,
        prompt=payload.prompt,
        data=payload.data,
        channels=channels_in(request, payload.channels),
        capability=payload.capability,
        timeout_ms=payload.timeoutMs,
    )
    return wire.json_response(
        {
            "action": "wait" if gate.status == GateStatus.PENDING else "return",
            "gate": wire.gate_out(gate, show_token=principal(request).can_resolve),
        }
    )


@router.get("/{run_id}/gates/{gate_id}", operation_id="get_gate")
def get_gate(request: HttpRequest, run_id: str, gate_id: str, waitMs: int = 0) -> HttpResponse:
    """Poll a gate. Additive: ``?waitMs=N`` long-polls, answering as soon as the gate is decided
    or the run is cancelled (woken by the event NOTIFY), or after N ms (max
    ``TIDEBASE_GATE_WAIT_MAX_MS``) with the still-pending gate."""
    rid, gid = seg(run_id), seg(gate_id)
    if waitMs < 0:
        raise InvalidRequest("waitMs must be >= 0", field="waitMs")

    def check() -> Poll[tuple[Gate, str]]:
        gate, run_status, db_now = selectors.gate_get(run_id=rid, gate_id=gid)
        if services.gate_expire_if_due(gate=gate, now=db_now):
            gate, run_status, db_now = selectors.gate_get(run_id=rid, gate_id=gid)
        done = gate.status != GateStatus.PENDING or run_status == RunStatus.CANCELLED
        due = None if gate.timeout_at is None else max((gate.timeout_at - db_now).total_seconds(), 0) + 0.05
        return Poll((gate, run_status), done, recheck_s=due)  # wake up to report a timeout when due

    answer = long_poll(request, [rid], waitMs, check)
    if isinstance(answer, Parked):
        return answer
    gate, run_status = answer
    return wire.json_response(
        {
            "gate": wire.gate_out(gate, show_token=principal(request).can_resolve),
            "runStatus": run_status,
        }
    )


@router.post("/{run_id}/gates/{gate_id}/resolve", operation_id="resolve_gate")
def resolve_gate(request: HttpRequest, run_id: str, gate_id: str, payload: GateResolveIn) -> HttpResponse:
    """Decide a gate. Operators, admins and the env key may decide by key; anyone holding the
    gate's resolve token may decide that gate without a key (it is the capability handed out in
    ``resolveUrl`` payloads), unless its approval policy refuses tokens. Agent keys may not
    decide at all. Under a policy with a quorum, a vote that does not complete it answers the
    gate still ``pending`` with ``quorum`` (additive)."""
    who = principal(request)
    if who is not TOKEN_ONLY and not who.can_resolve:
        raise Forbidden("agent keys may not resolve gates", scope=who.scope)
    if who is TOKEN_ONLY and not payload.token:
        raise InvalidRequest("token is required", field="token")
    decision = approvals.gate_decide(
        run_id=seg(run_id),
        gate_id=seg(gate_id),
        decision=payload.decision,
        voter=policies.voter_for_principal(who, actor=payload.actor),
        payload=payload.payload,
        token=payload.token,
        comment=payload.comment,
    )
    body: dict[str, object] = {"gate": wire.gate_out(decision.gate, show_token=who.can_resolve)}
    if decision.tally is not None:
        body["quorum"] = decision.tally.as_json()
    return wire.json_response(body)
