"""Step checkpoints: the hot path. First begin, replay and complete are one SQL statement each
(autocommit, no BEGIN/COMMIT round trips); the rare contended cases take a short transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from tidebase_core import protocol
from tidebase_core.db import STEP_JSON, Row, fetch_one, fetch_prepared, fetch_rows, jsonb, py
from tidebase_core.exceptions import LeaseLost, RunNotFound, ServerBusy
from tidebase_core.ids import step_id as new_step_id
from tidebase_core.models import RunStatus, StepStatus
from tidebase_core.services import budgets
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.lean_sql import compact, event_insert_sql, event_row
from tidebase_core.wire import step_out

# The run lease is renewed by any step call of its owner (our fix of §18.4). To keep replays
# read-only, it is only rewritten once less than half of the lease remains.
RENEW = """lease_expires_at = CASE
    WHEN t.status = 'running' AND t.lease_owner = %(owner)s
         AND t.lease_expires_at < now() + %(half)s * interval '1 millisecond'
    THEN now() + %(lease)s * interval '1 millisecond' ELSE t.lease_expires_at END"""

# Whether a budget of the run ``r`` is reached (services.budgets): a new step is then not begun and
# the run parks. Evaluated only when no step of that name exists (a replay is always answered, a
# step that exists goes through ``_begin_locked``); with no budget it reads the (empty) limits.
REACHED = budgets.reached_sql("r")

# First begin or replay in one statement. ``ins`` only inserts when no step of that name is
# visible; a concurrent first begin loses on the unique (run, name) index (DO NOTHING) and the
# caller falls back to the locked path. The event's seq comes from the run row (``bump``).
# ``commit`` sets synchronous_commit for this statement's own transaction: a first begin is a
# lease, not a checkpoint, so by default it does not wait for the WAL flush (see
# docs/decisions.md, "Step begins commit asynchronously"); completes always do.
BEGIN_SQL = compact(
    f"""
WITH r AS (
  SELECT id, status, attempt, lease_owner, workflow_name, budget_usd, budget_allowance_usd,
         (%(explicit)s AND status = 'running' AND lease_owner <> %(owner)s AND lease_expires_at > now()) AS stale
  FROM tb_run WHERE id = %(run)s
),
existing AS (SELECT * FROM tb_step WHERE run_id = %(run)s AND name = %(name)s),
b AS (SELECT CASE WHEN EXISTS (SELECT 1 FROM existing) OR r.status = 'cancelled' THEN false ELSE {REACHED} END AS over
      FROM r),
ins AS (
  INSERT INTO tb_step (id, run_id, name, input_hash, input, options, resume_contract, status,
                       lease_owner, lease_expires_at, lease_fence, attempt, started_at,
                       created_at, updated_at)
  SELECT %(step_id)s, r.id, %(name)s, %(hash)s, %(input)s, %(options)s, %(contract)s, 'running',
         %(owner)s, now() + %(lease)s * interval '1 millisecond',
         CASE WHEN r.lease_owner = %(owner)s THEN r.attempt END, 1, now(), now(), now()
  FROM r, b WHERE r.status <> 'cancelled' AND NOT r.stale AND NOT b.over AND NOT EXISTS (SELECT 1 FROM existing)
  ON CONFLICT (run_id, name) DO NOTHING
  RETURNING *
),
bump AS (
  UPDATE tb_run t SET event_seq = t.event_seq + 1, {RENEW}
  FROM ins WHERE t.id = ins.run_id RETURNING t.event_seq
),
ev AS ({
        event_insert_sql(
            event_row(
                run_id="%(run)s", seq="bump.event_seq", type="'step.started'", payload="%(payload)s", sources="bump"
            )
        )
    })
SELECT r.status AS run_status, r.stale AS run_lease_elsewhere, (SELECT count(*) FROM ins) AS inserted,
       (SELECT over FROM b) AS parked,
       s.*
FROM (SELECT set_config('synchronous_commit', COALESCE(%(commit)s, current_setting('synchronous_commit')), true)) one
LEFT JOIN r ON true
LEFT JOIN LATERAL (SELECT * FROM ins UNION ALL SELECT * FROM existing) s ON true
""",
    tight=True,
)

COMPLETE_SQL = f"""
WITH r AS (SELECT id, attempt FROM tb_run WHERE id = %(run)s FOR NO KEY UPDATE),
upd AS (
  UPDATE tb_step s SET status = 'completed', output = %(output)s, error = NULL, lease_owner = NULL,
         lease_expires_at = NULL, completed_at = now(), updated_at = now()
  FROM r
  WHERE s.id = %(step)s AND s.run_id = r.id AND s.lease_owner = %(owner)s
    AND (s.lease_fence IS NULL OR s.lease_fence = r.attempt)
  RETURNING s.*
),
bump AS (
  UPDATE tb_run t SET event_seq = t.event_seq + 1, {RENEW}
  FROM upd WHERE t.id = upd.run_id RETURNING t.event_seq
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="upd.run_id",
            seq="bump.event_seq",
            type="'step.completed'",
            payload="jsonb_build_object('stepId', upd.id, 'name', upd.name, "
            "'checkpointInvariant', upd.resume_contract -> 'checkpointInvariant', "
            "'verifiedBy', upd.resume_contract -> 'verifiedBy')",
            sources="bump, upd",
        )
    )
})
SELECT * FROM upd
"""


@dataclass
class BeginResult:
    action: str
    step: Row | None = None
    lease_owner: str | None = None
    expected_hash: str | None = None
    parked: budgets.Parked | None = None


def _lease_params(owner: str) -> dict[str, Any]:
    lease = settings.TIDEBASE_LEASE_MS
    return {"owner": owner, "lease": lease, "half": lease // 2}


def step_begin(
    *,
    run_id: str,
    name: str,
    input_hash: str,
    input: Any,
    options: dict[str, Any] | None,
    owner: str,
    explicit_owner: bool = True,
) -> BeginResult:
    """steps/begin (§7.1): decide execute / return / locked / input_mismatch / cancelled, or
    ``parked``: a budget of the run is reached, so the step is not begun and the run waits at its
    budget gate (services.budgets).

    The common cases (new step, completed step) cost one statement; an existing unfinished
    step goes through ``_begin_locked``, parking through ``budgets.budget_park``. Raises
    RunNotFound, BudgetExceeded (the run was stopped at its budget), or LeaseLost when the caller
    names a lease owner while another owner holds the run's live lease: a worker whose run was
    taken over may still replay finished steps, but never starts one (our fix; upstream lets it)."""
    for _ in range(3):  # a park that finds no budget reached any more (a limit was raised) begins again
        result = _step_begin(
            run_id=run_id,
            name=name,
            input_hash=input_hash,
            input=input,
            options=options,
            owner=owner,
            explicit_owner=explicit_owner,
        )
        if result.action != "parked":
            return result
        result.parked = budgets.budget_park(run_id=run_id, step=name)
        if result.parked is not None:
            return result
    raise ServerBusy("budget_changing", "the run's budgets changed while it was parking; retry")


def _step_begin(
    *,
    run_id: str,
    name: str,
    input_hash: str,
    input: Any,
    options: dict[str, Any] | None,
    owner: str,
    explicit_owner: bool,
) -> BeginResult:
    options = options or {}
    contract = protocol.resume_contract(options)
    sid = new_step_id()
    params = {
        "run": run_id,
        "name": name,
        "hash": input_hash,
        "step_id": sid,
        "input": jsonb({} if input is None else input),
        "options": jsonb(options),
        "contract": jsonb(contract),
        "payload": jsonb({"stepId": sid, "name": name, "attempt": 1, "resumeContract": contract}),
        "explicit": explicit_owner,
        # inside a caller's transaction the setting would cover all of it: leave it alone there
        "commit": None if settings.TIDEBASE_STEP_BEGIN_SYNC_COMMIT or not connection.get_autocommit() else "off",
        **_lease_params(owner),
    }
    row = fetch_prepared(BEGIN_SQL, params, STEP_JSON)[0]
    if row.run_status is None:
        raise RunNotFound()
    if row.run_status == RunStatus.CANCELLED:
        return BeginResult("cancelled")
    if row.inserted:
        return BeginResult("execute", row, owner)
    if row.id is not None:
        if row.input_hash != input_hash:
            return BeginResult("input_mismatch", row, expected_hash=row.input_hash)
        if row.status == StepStatus.COMPLETED:
            return BeginResult("return", row)
    if row.run_lease_elsewhere:
        raise LeaseLost("the run is leased to another worker")
    if row.parked:
        return BeginResult("parked")
    return _begin_locked(
        run_id=run_id,
        name=name,
        input_hash=input_hash,
        input=input,
        options=options,
        contract=contract,
        owner=owner,
        explicit_owner=explicit_owner,
    )


@transaction.atomic(durable=True)
def _begin_locked(
    *,
    run_id: str,
    name: str,
    input_hash: str,
    input: Any,
    options: dict[str, Any],
    contract: dict[str, Any],
    owner: str,
    explicit_owner: bool,
) -> BeginResult:
    """Re-begin of an existing step under the run lock then the step lock (the lock order used
    by every step write, so they cannot deadlock)."""
    run = fetch_one(
        """SELECT status, attempt, lease_owner, lease_expires_at, now() AS now
           FROM tb_run WHERE id = %s FOR NO KEY UPDATE""",
        [run_id],
    )
    if run is None:
        raise RunNotFound()
    if run.status == RunStatus.CANCELLED:
        return BeginResult("cancelled")
    step = fetch_one("SELECT * FROM tb_step WHERE run_id = %s AND name = %s FOR UPDATE", [run_id, name], STEP_JSON)
    if step is None:  # pragma: no cover - a step is never deleted while its run exists
        raise RunNotFound()
    action = protocol.decide_step_begin(
        protocol.StepView(step.status, step.input_hash, step.lease_owner, step.lease_expires_at, step.lease_fence),
        input_hash=input_hash,
        owner=owner,
        run=protocol.RunLeaseView(run.lease_owner, run.attempt),
        now=run.now,
    )
    if action == "input_mismatch":
        return BeginResult(action, step, expected_hash=step.input_hash)
    if action == "return":
        return BeginResult(action, step)
    if explicit_owner and protocol.run_leased_elsewhere(
        status=run.status, lease_owner=run.lease_owner, lease_expires_at=run.lease_expires_at, owner=owner, now=run.now
    ):
        raise LeaseLost("the run is leased to another worker")
    if action == "locked":
        return BeginResult(action, step)
    if fetch_one(f"SELECT {budgets.reached_sql('r')} AS over FROM tb_run r WHERE r.id = %s", [run_id]).over:  # type: ignore[union-attr]
        return BeginResult("parked")  # a retry costs money too: not past a reached budget
    updated = fetch_one(
        """UPDATE tb_step SET status = 'running', lease_owner = %(owner)s,
              lease_expires_at = now() + %(lease)s * interval '1 millisecond',
              lease_fence = CASE WHEN %(run_owner)s::text = %(owner)s THEN %(attempt)s END,
              attempt = attempt + 1, input_hash = %(hash)s, input = %(input)s, options = %(options)s,
              resume_contract = %(contract)s, updated_at = now()
            WHERE id = %(step)s RETURNING *""",
        {
            "step": step.id,
            "hash": input_hash,
            "input": jsonb({} if input is None else input),
            "options": jsonb(options),
            "contract": jsonb(contract),
            "run_owner": run.lease_owner,
            "attempt": run.attempt,
            **_lease_params(owner),
        },
        STEP_JSON,
    )
    assert updated is not None
    fetch_rows(f"UPDATE tb_run t SET {RENEW} WHERE t.id = %(run)s", {"run": run_id, **_lease_params(owner)})
    event_append(
        run_id=run_id,
        type="step.started",
        payload={
            "stepId": updated.id,
            "name": name,
            "attempt": updated.attempt,
            "resumeContract": contract,
        },
    )
    return BeginResult("execute", updated, owner)


def step_complete(*, run_id: str, step_id: str, owner: str, output: Any) -> Row:
    """Checkpoint a step's output: a compare-and-set on (step, run, owner, fence) in one
    statement. A stale holder — after a step takeover, or after a newer run lease — matches
    nothing and gets LeaseLost (409). Emits ``step.completed``."""
    rows = fetch_prepared(
        COMPLETE_SQL, {"run": run_id, "step": step_id, "output": jsonb(output), **_lease_params(owner)}, STEP_JSON
    )
    if not rows:
        raise LeaseLost("step not found or lease lost")
    return rows[0]


@transaction.atomic(durable=True)
def step_fail(
    *, run_id: str, step_id: str, owner: str, error: Any, retryable: bool, resume_decision: str | None
) -> Row:
    """Record a step failure (§7.3), fenced like complete. Classifies it server-side when the
    client sends no decision (§12.2). Emits ``step.failed`` and its channel event."""
    run = fetch_one("SELECT attempt FROM tb_run WHERE id = %s FOR NO KEY UPDATE", [run_id])
    if run is None:
        raise LeaseLost("step not found or lease lost")
    step = fetch_one(
        """SELECT resume_contract FROM tb_step WHERE id = %s AND run_id = %s AND lease_owner = %s
           AND (lease_fence IS NULL OR lease_fence = %s) FOR UPDATE""",
        [step_id, run_id, owner, run.attempt],
        STEP_JSON,
    )
    if step is None:
        raise LeaseLost("step not found or lease lost")
    contract = py(step.resume_contract)
    decision = resume_decision or protocol.classify_failure(contract, retryable=retryable)
    status = protocol.failed_step_status(retryable=retryable, decision=decision)
    updated = fetch_one(
        """UPDATE tb_step SET status = %s, error = %s, lease_owner = NULL, lease_expires_at = NULL,
              updated_at = now() WHERE id = %s RETURNING *""",
        [status, jsonb(error), step_id],
        STEP_JSON,
    )
    assert updated is not None
    fetch_rows(f"UPDATE tb_run t SET {RENEW} WHERE t.id = %(run)s", {"run": run_id, **_lease_params(owner)})
    event_append(
        run_id=run_id,
        type="step.failed",
        payload={
            "stepId": step_id,
            "name": updated.name,
            "retryable": retryable,
            "resumeDecision": decision,
            "resumeContract": contract,
            "error": error,
        },
    )
    notify_channels(
        run_id=run_id,
        event_type="step.failed",
        payload={
            "step": step_out(updated),
            "retryable": retryable,
            "resumeDecision": decision,
            "error": error,
        },
    )
    return updated
