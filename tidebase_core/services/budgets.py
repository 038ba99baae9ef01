"""Cost budgets that park a run instead of killing it (docs/decisions.md, "Budgets that park a run").

Budgets, in USD: a run's own (``tb_run.budget_usd``, set when the run is created), and the shared
ones (``tb_budget_limit``): per workflow per UTC day, per workflow per UTC calendar month, and
global per UTC day. Spend is the recorded cost: a run's from its usage total (``tb_usage_run``), a
shared budget's from ``tb_budget_spend``, which the usage-record statement adds to.

- **Reached.** A budget is reached when its spend is at or above its limit. The step-begin
  statement checks every budget of the run before it inserts a step: a reached budget begins
  nothing and the run is *parked* (``budget_park``): a gate ``budget:<scope>:<n>`` opens, whose
  data says what was spent, which budget, and how much more the run asks. A finished step is never
  cut off (the check happens before a step starts; a replay is always answered), and a step that
  is running finishes.
- **Projected.** ``budget_check`` answers whether a request of a projected cost may be sent: not
  when it would take a budget past its limit (``spent + projected > limit``); the run is parked
  the same way, asking for what the request needs.
- **Approve** lets the run continue: for its own budget the budget is raised by the amount asked;
  for a shared budget the run gets a one-off allowance (it may go on past the shared budgets until
  its own spend has grown by the amount asked); the approver may grant another amount
  (``decisionPayload.amountUsd``). **Reject** fails the run with code ``budget_exceeded``.
  **Raising a limit** (a new version of a shared budget, or a new run budget) approves the parked
  gates it lifts, with nothing granted beyond the new limit.
- **Overshoot.** Spend is checked against what is committed, so concurrent runs of one workflow
  may all pass the check just before the spend reaches the limit: the overshoot of a shared budget
  is at most the cost of the requests in flight when it was reached (see ``OVERSHOOT_BOUND``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.db.models.fields.json import KT

from tidebase_core import wire
from tidebase_core.db import fetch_one, fetch_rows
from tidebase_core.exceptions import (
    BudgetExceeded,
    GateAlreadyResolved,
    InvalidRequest,
    InvalidToken,
    NotFound,
    RunCancelled,
    RunNotFound,
)
from tidebase_core.models import BudgetScope, BudgetVersion, Gate, Run
from tidebase_core.models.budgets import GLOBAL, SHARED_SCOPES
from tidebase_core.services import audit
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.lean_sql import compact

logger = logging.getLogger(__name__)

GATE_PREFIX = "budget:"
"""Budget gates are named ``budget:<scope>:<n>``; the API refuses other gates with this prefix."""

MIN_ASK = Decimal("0.01")
"""What a parked run asks for its next request when it has no projection and no recorded cost to
go by (a budget of 0 reached before any usage)."""

OVERSHOOT_BOUND = (
    "A shared budget is overshot by at most the cost of the requests in flight when its spend "
    "reached the limit: each of them passed its check while the spend was below the limit, and no "
    "request begins afterwards. With N concurrent runs each sending one request at a time, at most "
    "N x the largest single request cost."
)

_ORDER = {"run": 0, "workflow_day": 1, "workflow_month": 2, "global_day": 3}

_TODAY = "(now() AT TIME ZONE 'UTC')::date"
_THIS_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"


def period_sql(scope: str, day: str) -> str:
    """The period a record of UTC day ``day`` (an SQL date) counts in, for budget ``scope`` (an
    SQL text): the first day of its month for monthly budgets, the day itself otherwise."""
    return f"CASE WHEN {scope} = 'workflow_month' THEN date_trunc('month', {day}::timestamp)::date ELSE {day} END"


def budgets_sql(run: str, projected: str) -> str:
    """Every budget of the run ``run`` (a row of tb_run in scope: ``id``, ``workflow_name``,
    ``budget_usd``, ``budget_allowance_usd``), with its spend in the current period and whether it
    stops a request of ``projected`` USD (an SQL numeric): ``over`` when the budget is reached
    (spend >= limit) or the request would take it past its limit (spend + projected > limit). A
    shared budget does not stop a run still inside an approved allowance. The run's spend is read
    only when the run has a budget or an allowance, and the shared limits are a few rows."""
    spent = f"COALESCE((SELECT u.cost_usd FROM tb_usage_run u WHERE u.run_id = {run}.id), 0)"
    return f"""
SELECT 'run'::text AS scope, ''::text AS workflow, NULL::date AS period, rs.spent AS spent_usd,
       {run}.budget_usd AS limit_usd, rs.spent AS run_spent_usd,
       (rs.spent >= {run}.budget_usd OR rs.spent + {projected} > {run}.budget_usd) AS over
FROM (SELECT {spent} AS spent) rs
WHERE {run}.budget_usd IS NOT NULL
UNION ALL
SELECT l.scope::text, l.workflow, p.period, COALESCE(s.spent_usd, 0), l.limit_usd, rs.spent,
       (COALESCE(s.spent_usd, 0) >= l.limit_usd OR COALESCE(s.spent_usd, 0) + {projected} > l.limit_usd)
       AND NOT ({run}.budget_allowance_usd IS NOT NULL AND rs.spent < {run}.budget_allowance_usd
                AND rs.spent + {projected} <= {run}.budget_allowance_usd)
FROM tb_budget_limit l
CROSS JOIN LATERAL (SELECT {period_sql("l.scope", _TODAY)} AS period) p
LEFT JOIN tb_budget_spend s ON s.scope = l.scope AND s.workflow = l.workflow AND s.period = p.period
CROSS JOIN LATERAL (SELECT CASE WHEN {run}.budget_allowance_usd IS NOT NULL THEN {spent} END AS spent) rs
WHERE l.limit_usd IS NOT NULL
  AND ((l.scope = 'global_day' AND l.workflow = '') OR (l.scope <> 'global_day' AND l.workflow = {run}.workflow_name))
"""


def reached_sql(run: str) -> str:
    """An SQL boolean: a budget of the run ``run`` is reached (step begin parks)."""
    return f"EXISTS (SELECT 1 FROM ({budgets_sql(run, '0')}) b WHERE b.over)"


VERDICT_SQL = compact(f"""
SELECT r.status AS run_status, r.failure_class, r.workflow_name, b.*
FROM tb_run r
LEFT JOIN LATERAL ({budgets_sql("r", "%(projected)s::numeric")}) b ON true
WHERE r.id = %(run)s
""")


@dataclass
class Budget:
    """One budget of a run as it stands now."""

    scope: str
    workflow: str
    period: dt.date | None
    spent_usd: Decimal
    limit_usd: Decimal
    run_spent_usd: Decimal | None
    over: bool

    def out(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "workflow": self.workflow or None,
            "period": _period_text(self.scope, self.period),
            "spentUsd": wire.num(self.spent_usd),
            "limitUsd": wire.num(self.limit_usd),
            "remainingUsd": wire.num(max(self.limit_usd - self.spent_usd, Decimal(0))),
        }


@dataclass
class Verdict:
    run_status: str
    failure_class: str | None
    workflow: str
    budgets: list[Budget] = field(default_factory=list)

    @property
    def over(self) -> Budget | None:
        """The budget that stops the run (its own first, then the workflow's, then the global)."""
        stopping = [b for b in self.budgets if b.over]
        return min(stopping, key=lambda b: _ORDER[b.scope]) if stopping else None

    @property
    def remaining_usd(self) -> Decimal | None:
        left = [max(b.limit_usd - b.spent_usd, Decimal(0)) for b in self.budgets]
        return min(left) if left else None


def _period_text(scope: str, period: dt.date | None) -> str | None:
    if period is None:
        return None
    return period.strftime("%Y-%m") if scope == BudgetScope.WORKFLOW_MONTH else period.isoformat()


def verdict(*, run_id: str, projected: Decimal = Decimal(0)) -> Verdict:
    """The run's budgets now, and which (if any) stops a request of ``projected`` USD."""
    rows = fetch_rows(VERDICT_SQL, {"run": run_id, "projected": projected})
    if not rows:
        raise RunNotFound()
    first = rows[0]
    out = Verdict(first.run_status, first.failure_class, first.workflow_name)
    for row in rows:
        if row.scope is not None:
            out.budgets.append(
                Budget(
                    row.scope,
                    row.workflow,
                    row.period,
                    row.spent_usd,
                    row.limit_usd,
                    row.run_spent_usd,
                    bool(row.over),
                )
            )
    return out


# ---- parking ------------------------------------------------------------------------------------


@dataclass
class Parked:
    gate: Gate
    budget: dict[str, Any]


def is_budget_gate(gate: Any) -> bool:
    data = gate.data
    return str(gate.name).startswith(GATE_PREFIX) and isinstance(data, dict) and data.get("kind") == "budget"


def _run_spent(run_id: str) -> Decimal:
    row = fetch_one("SELECT cost_usd FROM tb_usage_run WHERE run_id = %s", [run_id])
    return Decimal(row.cost_usd) if row is not None else Decimal(0)


def _next_request_cost(run_id: str, projected: Decimal) -> Decimal:
    """What the run's next request will cost: the projection when the agent sent one, else the
    largest cost the run has recorded for one request, else ``MIN_ASK``."""
    if projected > 0:
        return projected
    row = fetch_one("SELECT max(cost_usd) AS top FROM tb_usage WHERE run_id = %s", [run_id])
    top = row.top if row is not None else None
    return Decimal(top) if top else MIN_ASK


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.01')) if value >= 1 else value.normalize():,}"


def _prompt(budget: Budget, asked: Decimal) -> str:
    if budget.scope == BudgetScope.RUN:
        what = f"This run spent {_money(budget.spent_usd)} of its {_money(budget.limit_usd)} budget"
    elif budget.scope == BudgetScope.GLOBAL_DAY:
        what = f"All workflows spent {_money(budget.spent_usd)} of the {_money(budget.limit_usd)} daily budget"
    else:
        period = "daily" if budget.scope == BudgetScope.WORKFLOW_DAY else "monthly"
        what = (
            f"Workflow {budget.workflow!r} spent {_money(budget.spent_usd)} of its "
            f"{_money(budget.limit_usd)} {period} budget"
        )
    return f"Budget reached: {what}. Allow this run to spend {_money(asked)} more?"


def budget_park(*, run_id: str, projected: Decimal = Decimal(0), step: str | None = None) -> Parked | None:
    """Park the run at its budget: open its budget gate, or return the one already pending (a run
    has at most one pending budget gate; concurrent parks of one run join it). Returns None when
    no budget stops the run any more (a limit was raised meanwhile): the caller goes on.

    Raises RunCancelled, or BudgetExceeded when a budget still stops a run an operator has stopped
    (a rejected budget gate, or ``failureClass`` ``budget_exceeded``), whatever its status: a run
    begun again after the rejection is running, and is not asked for again.

    One transaction that first takes the run row lock (FOR NO KEY UPDATE, the lock every writer of
    the run takes first), then reads the budgets and the run's budget gates and opens the gate:
    parks of one run are serialized (the second finds the first's gate pending and joins it), and
    a decision of its gate (``gate_resolve`` locks the run in ``event_append``, and
    ``on_gate_resolved`` updates it) commits either before the budgets are read here or after this
    park has joined the gate."""
    with transaction.atomic():
        if fetch_one("SELECT 1 AS found FROM tb_run WHERE id = %s FOR NO KEY UPDATE", [run_id]) is None:
            raise RunNotFound()
        state = verdict(run_id=run_id, projected=projected)
        if state.run_status == "cancelled":
            raise RunCancelled("run is cancelled")
        budget = state.over
        if budget is None:
            return None
        taken = list(Gate.objects.filter(run_id=run_id, name__startswith=GATE_PREFIX).order_by("created_at"))
        pending = next((g for g in taken if g.status == "pending" and is_budget_gate(g)), None)
        if pending is not None:
            return Parked(pending, _budget_of(pending))
        if state.failure_class == "budget_exceeded" or any(g.status == "rejected" and is_budget_gate(g) for g in taken):
            raise BudgetExceeded(
                "the run was stopped at its budget (its budget gate was rejected)", budget=budget.out()
            )
        gate = _open_gate(run_id, budget, projected, step, f"{GATE_PREFIX}{budget.scope}:{len(taken) + 1}")
        return Parked(gate, _budget_of(gate))


def _open_gate(run_id: str, budget: Budget, projected: Decimal, step: str | None, name: str) -> Gate:
    """Open budget gate ``name``, in the caller's transaction (``budget_park``'s: the gate must be
    created under its run lock, so ``gates._gate_create`` is called without its durable wrapper)."""
    from tidebase_core.services import gates

    run_spent = budget.run_spent_usd if budget.run_spent_usd is not None else _run_spent(run_id)
    following = _next_request_cost(run_id, projected)
    if budget.scope == BudgetScope.RUN:
        asked = max(budget.spent_usd + projected - budget.limit_usd, Decimal(0))
        asked = asked if projected > 0 else asked + following
    else:
        asked = following
    asked = max(asked, MIN_ASK)
    data = {
        "kind": "budget",
        "scope": budget.scope,
        "workflow": budget.workflow or None,
        "period": _period_text(budget.scope, budget.period),
        "spentUsd": wire.num(budget.spent_usd),
        "limitUsd": wire.num(budget.limit_usd),
        "askedUsd": wire.num(asked),
        "runSpentUsd": wire.num(run_spent),
        "projectedUsd": wire.num(projected) if projected > 0 else None,
        "step": step,
    }
    gate: Gate = gates.gate_insert(
        run_id=run_id,
        name=name,
        prompt=_prompt(budget, asked),
        data=data,
        channels=None,
        capability=None,
        timeout_ms=None,
    )
    return gate


def _budget_of(gate: Gate) -> dict[str, Any]:
    """The ``budget`` object of a parked answer: the gate's data without its ``kind``."""
    data = gate.data if isinstance(gate.data, dict) else {}
    return {k: v for k, v in data.items() if k != "kind"}


def budget_check(*, run_id: str, projected: Decimal, step: str | None = None) -> tuple[Verdict, Parked | None]:
    """May the run send a request of ``projected`` USD? ``(verdict, None)`` when it may, else the
    run is parked and ``(verdict, Parked)``. Raises RunNotFound, RunCancelled, BudgetExceeded."""
    state = verdict(run_id=run_id, projected=projected)
    if state.run_status == "cancelled":
        raise RunCancelled("run is cancelled")
    if state.over is None:
        return state, None
    return state, budget_park(run_id=run_id, projected=projected, step=step)


# ---- decisions ----------------------------------------------------------------------------------

LIMIT_RAISED = "limit_raised"
"""``decisionPayload.reason`` of a budget gate approved because its limit was raised: nothing is
granted beyond the new limit."""

PERIOD_ENDED = "period_ended"
"""``decisionPayload.reason`` of a budget gate approved because its day or month ended."""


MAX_RUN_USD = Decimal("9999999999")
"""The most a run's budget or allowance is raised to by approvals (``tb_run``'s numeric(20, 10)
columns hold less than 10^10): each grant may be up to 10^9 USD, and a sum past the column must
not fail the approval. A budget this large stops nothing in practice."""


def _amount(gate: Gate) -> Decimal:
    payload = gate.decision_payload if isinstance(gate.decision_payload, dict) else {}
    granted = payload.get("amountUsd")
    if isinstance(granted, (int, float)) and not isinstance(granted, bool) and 0 < granted <= 1e9:
        return Decimal(repr(granted))
    asked = (gate.data or {}).get("askedUsd")
    return Decimal(repr(asked)) if isinstance(asked, (int, float)) and asked > 0 else MIN_ASK


def on_gate_resolved(gate: Gate) -> None:
    """Apply a budget gate's decision, inside ``gate_resolve``'s transaction (which has emitted
    ``gate.resolved``). Approved: the run's budget is raised by the amount (its own budget) or it
    gets an allowance of that amount past the shared budgets, either at most ``MAX_RUN_USD``.
    Rejected: the run fails with code ``budget_exceeded``. Canceled (a timeout): nothing; the
    waiting agent gives up."""
    if not is_budget_gate(gate):
        return
    payload = gate.decision_payload if isinstance(gate.decision_payload, dict) else {}
    if gate.decision == "approved":
        if payload.get("reason") in (LIMIT_RAISED, PERIOD_ENDED):
            return
        amount = _amount(gate)
        scope = (gate.data or {}).get("scope")
        if scope == BudgetScope.RUN:
            row = fetch_one(
                """UPDATE tb_run SET budget_usd = LEAST(COALESCE(budget_usd, 0) + %s, %s), updated_at = now()
                   WHERE id = %s RETURNING budget_usd""",
                [amount, MAX_RUN_USD, gate.run_id],
            )
            changed: dict[str, Any] = {"budgetUsd": wire.num(row.budget_usd) if row else None}
        else:
            spent = _run_spent(gate.run_id)
            row = fetch_one(
                """UPDATE tb_run SET budget_allowance_usd = GREATEST(COALESCE(budget_allowance_usd, 0), LEAST(%s, %s)),
                          updated_at = now()
                   WHERE id = %s RETURNING budget_allowance_usd""",
                [spent + amount, MAX_RUN_USD, gate.run_id],
            )
            changed = {"allowanceUsd": wire.num(row.budget_allowance_usd) if row else None}
        event_append(
            run_id=gate.run_id,
            type="budget.approved",
            payload={"gateId": gate.id, "scope": scope, "amountUsd": wire.num(amount), **changed},
        )
    elif gate.decision == "rejected":
        _fail_run(gate)


def _fail_run(gate: Gate) -> None:
    """Fail the run of a rejected budget gate with code ``budget_exceeded`` (also a run its client
    already reported failed after meeting the park: the budget is why). No recovery webhook: an
    operator stopped it. Completed and cancelled runs stay as they are."""
    run = Run.objects.select_for_update(no_key=True).filter(id=gate.run_id).first()
    if run is None or run.status in ("completed", "cancelled"):
        return
    data = gate.data or {}
    error = {
        "code": "budget_exceeded",
        "message": f"budget {data.get('scope')} rejected by {gate.decided_by or gate.actor or 'an operator'}",
        "budget": {k: v for k, v in data.items() if k != "kind"},
        "gateId": gate.id,
    }
    run.status = "failed"
    run.failure_class = "budget_exceeded"
    run.error = error
    run.lease_owner = None
    run.lease_expires_at = None
    run.save(update_fields=["status", "failure_class", "error", "lease_owner", "lease_expires_at", "updated_at"])
    event_append(run_id=run.id, type="run.failed", payload={"error": error, "failureClass": "budget_exceeded"})
    notify_channels(run_id=run.id, event_type="run.failed", payload={"run": wire.run_out(run), "error": error})


def _lift(gates: list[Gate], *, by: str, reason: str, extra: dict[str, Any]) -> int:
    """Approve pending budget gates that no longer stop their run; each its own transaction."""
    from tidebase_core.services.gates import gate_resolve

    lifted = 0
    for gate in gates:
        if reason != PERIOD_ENDED and verdict(run_id=gate.run_id).over is not None:
            continue  # still stopped by this or another budget: leave it to a human
        try:
            gate_resolve(
                run_id=gate.run_id,
                gate_id=gate.id,
                decision="approved",
                token=None,
                actor=by,
                payload={"reason": reason, **extra},
                decided_by=by,
                require_token=False,
            )
            lifted += 1
        except (GateAlreadyResolved, InvalidToken, NotFound):
            continue
    return lifted


def _pending_budget_gates(scope: str, workflow: str | None = None, run_id: str | None = None) -> list[Gate]:
    gates = Gate.objects.filter(status="pending", name__startswith=f"{GATE_PREFIX}{scope}:")
    if run_id is not None:
        gates = gates.filter(run_id=run_id)
    if workflow is not None:
        gates = gates.filter(data__workflow=workflow or None)
    return [g for g in gates.order_by("created_at") if is_budget_gate(g)]


# ---- setting budgets ----------------------------------------------------------------------------

_RECOMPUTE_SQL = f"""
INSERT INTO tb_budget_spend AS s (scope, workflow, period, spent_usd)
SELECT %(scope)s, %(workflow)s, {period_sql("%(scope)s::text", _TODAY)},
       COALESCE((SELECT sum(d.cost_usd) FROM tb_usage_daily d
                 WHERE d.day >= {period_sql("%(scope)s::text", _TODAY)} AND d.day <= {_TODAY}
                   AND (%(scope)s = 'global_day' OR d.workflow = %(workflow)s)), 0)
ON CONFLICT (scope, workflow, period) DO UPDATE SET spent_usd = EXCLUDED.spent_usd
"""


def budget_set(
    *, scope: str, workflow: str | None, limit_usd: Decimal | None, by: str, note: str = ""
) -> BudgetVersion:
    """A new version of a shared budget (``limit_usd`` None removes it), effective at once: the
    current period's spend is computed from the daily usage rollup, then pending budget gates it
    no longer stops are approved (``limit_raised``). Admin-only in the dashboard.

    Takes a SHARE lock on tb_usage_daily first: usage records in flight commit before the spend is
    computed, and new ones wait the few milliseconds until this commits, then add to the row it
    wrote (the usage statement adds only to budgets that have a limit)."""
    if scope not in SHARED_SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SHARED_SCOPES)}", field="scope")
    workflow = GLOBAL if scope == BudgetScope.GLOBAL_DAY else (workflow or "").strip()
    if scope != BudgetScope.GLOBAL_DAY and not workflow:
        raise InvalidRequest("a workflow budget needs a workflow name", field="workflow")
    if limit_usd is not None and not (Decimal(0) <= limit_usd < Decimal(10**9)):
        raise InvalidRequest("the limit must be between 0 and 1,000,000,000 USD", field="limitUsd")
    with transaction.atomic(durable=True), connection.cursor() as cur:
        cur.execute("LOCK TABLE tb_usage_daily IN SHARE MODE")
        cur.execute(
            "SELECT COALESCE(max(version), 0) + 1 FROM tb_budget_version WHERE scope = %s AND workflow = %s",
            [scope, workflow],
        )
        number = int(cur.fetchone()[0])
        version = BudgetVersion.objects.create(
            scope=scope, workflow=workflow, version=number, limit_usd=limit_usd, created_by=by, note=note
        )
        cur.execute(
            """INSERT INTO tb_budget_limit (scope, workflow, limit_usd, version, updated_by, updated_at)
               VALUES (%s, %s, %s, %s, %s, now())
               ON CONFLICT (scope, workflow) DO UPDATE SET limit_usd = EXCLUDED.limit_usd,
                 version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, updated_at = now()""",
            [scope, workflow, limit_usd, number, by],
        )
        if limit_usd is not None:
            cur.execute(_RECOMPUTE_SQL, {"scope": scope, "workflow": workflow})
        audit.audit_append(
            kind=audit.POLICY_CHANGE,
            actor=by,
            channel=audit.channel_of(by),
            policy_version=f"budget:{scope}:{workflow or '*'}:v{number}",
            data={
                "policy": "budget",
                "scope": scope,
                "workflow": workflow or None,
                "limitUsd": wire.num(limit_usd),
                "version": number,
                "note": note,
            },
        )
    _lift(
        _pending_budget_gates(scope, None if scope == BudgetScope.GLOBAL_DAY else workflow),
        by=by,
        reason=LIMIT_RAISED,
        extra={"limitUsd": wire.num(limit_usd), "version": number},
    )
    return version


def run_budget_set(*, run_id: str, budget_usd: Decimal | None, by: str) -> Run:
    """Set (or with None remove) a run's own budget; a pending run-budget gate it no longer stops
    is approved (``limit_raised``)."""
    if budget_usd is not None and not (Decimal(0) <= budget_usd < Decimal(10**9)):
        raise InvalidRequest("the budget must be between 0 and 1,000,000,000 USD", field="budgetUsd")
    with transaction.atomic(durable=True):
        run = Run.objects.select_for_update(no_key=True).filter(id=run_id).first()
        if run is None:
            raise RunNotFound()
        before = run.budget_usd
        run.budget_usd = budget_usd
        run.save(update_fields=["budget_usd", "updated_at"])
        event_append(
            run_id=run_id,
            type="budget.changed",
            payload={"scope": "run", "fromUsd": wire.num(before), "toUsd": wire.num(budget_usd), "by": by},
        )
        audit.audit_append(
            kind=audit.POLICY_CHANGE,
            actor=by,
            channel=audit.channel_of(by),
            run_id=run_id,
            data={"policy": "budget", "scope": "run", "fromUsd": wire.num(before), "toUsd": wire.num(budget_usd)},
        )
    _lift(
        _pending_budget_gates(BudgetScope.RUN, run_id=run_id),
        by=by,
        reason=LIMIT_RAISED,
        extra={"limitUsd": wire.num(budget_usd)},
    )
    run.refresh_from_db()
    return run


def lift_ended_periods(*, limit: int = 100) -> int:
    """Approve budget gates of a day or month that has ended (``period_ended``; nothing granted):
    the run continues against the new period's spend, and parks again if that is reached too. The
    reconciler calls this."""
    today = fetch_one(f"SELECT {_TODAY} AS day", [])
    assert today is not None
    ended = Q()
    for scope in SHARED_SCOPES:  # a gate's period is its budget's text form: "2025-01-31", "2025-01"
        ended |= Q(name__startswith=f"{GATE_PREFIX}{scope}:", period__lt=_period_text(scope, today.day))
    gates = (
        Gate.objects.filter(status="pending", data__kind="budget")
        .alias(period=KT("data__period"))
        .filter(ended)
        .order_by("created_at")[:limit]
    )
    return _lift([g for g in gates if is_budget_gate(g)], by="reconciler", reason=PERIOD_ENDED, extra={})


def budget_list() -> list[dict[str, Any]]:
    """The shared budgets with their current limit, version and spend in the current period."""
    rows = fetch_rows(
        f"""SELECT l.scope, l.workflow, l.limit_usd, l.version, l.updated_by, l.updated_at, p.period,
                   COALESCE(s.spent_usd, 0) AS spent_usd
            FROM tb_budget_limit l
            CROSS JOIN LATERAL (SELECT {period_sql("l.scope", _TODAY)} AS period) p
            LEFT JOIN tb_budget_spend s ON s.scope = l.scope AND s.workflow = l.workflow AND s.period = p.period
            ORDER BY l.scope, l.workflow""",
        [],
    )
    return [
        {
            "scope": r.scope,
            "workflow": r.workflow or None,
            "limitUsd": wire.num(r.limit_usd),
            "version": r.version,
            "updatedBy": r.updated_by,
            "updatedAt": wire.ts(r.updated_at),
            "period": _period_text(r.scope, r.period),
            "spentUsd": wire.num(r.spent_usd) if r.limit_usd is not None else None,
        }
        for r in rows
    ]


def budget_versions(*, scope: str | None = None, workflow: str | None = None, limit: int = 200) -> list[Any]:
    versions = BudgetVersion.objects.order_by("-created_at", "-id")
    if scope:
        versions = versions.filter(scope=scope)
    if workflow is not None:
        versions = versions.filter(workflow=workflow)
    return list(versions[:limit])


def version_out(v: BudgetVersion) -> dict[str, Any]:
    return {
        "scope": v.scope,
        "workflow": v.workflow or None,
        "version": v.version,
        "limitUsd": wire.num(v.limit_usd),
        "createdBy": v.created_by,
        "note": v.note,
        "createdAt": wire.ts(v.created_at),
    }


def budget_spend_rebuild() -> int:
    """Recompute the current period's spend of every budget with a limit from tb_usage_daily
    (``tidebase_usage_rollups rebuild`` calls it after rebuilding the daily rollup, in its
    transaction). Returns the number of budgets recomputed."""
    rows = fetch_rows("SELECT scope, workflow FROM tb_budget_limit WHERE limit_usd IS NOT NULL", [])
    with connection.cursor() as cur:
        for row in rows:
            cur.execute(_RECOMPUTE_SQL, {"scope": row.scope, "workflow": row.workflow})
    return len(rows)


def parked_answer(parked: Parked) -> dict[str, Any]:
    """The ``parked`` answer of steps/begin and budget/check: the gate (no resolve token: an agent
    must not approve its own spending) and the budget it stopped at."""
    return {"action": "parked", "gate": wire.gate_out(parked.gate, show_token=False), "budget": parked.budget}


__all__ = [
    "GATE_PREFIX",
    "OVERSHOOT_BOUND",
    "Budget",
    "Parked",
    "Verdict",
    "budget_check",
    "budget_list",
    "budget_park",
    "budget_set",
    "budget_spend_rebuild",
    "budget_versions",
    "is_budget_gate",
    "lift_ended_periods",
    "on_gate_resolved",
    "parked_answer",
    "reached_sql",
    "run_budget_set",
    "verdict",
]
