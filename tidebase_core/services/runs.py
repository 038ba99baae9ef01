"""Run lifecycle writes: create, begin, heartbeat, complete, fail, cancel, recover, children."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now

from tidebase_core import ids, wire
from tidebase_core.db import RUN_JSON, Row, fetch_one, fetch_prepared, jsonb
from tidebase_core.exceptions import (
    LeaseLost,
    NoRecoveryWebhook,
    RunCancelled,
    RunCompleted,
    RunLeased,
    RunNotFound,
)
from tidebase_core.models import Channel, RecoveryAttempt, Run, RunEdge, RunStatus
from tidebase_core.outbox import after_commit
from tidebase_core.selectors.runs import run_json, ts_sql
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.lean_sql import event_insert_sql, event_row
from tidebase_core.services.time import db_now, lease_delta


def _public_channels(channels: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [{"type": "webhook", "url": c["url"], "events": c.get("events") or []} for c in channels or []]


def _insert_run(
    *,
    workflow_name: str,
    input: Any,
    metadata: dict[str, Any] | None,
    recovery_webhook: str | None,
    channels: list[dict[str, Any]] | None,
    run_id: str | None = None,
    budget_usd: Decimal | None = None,
    started_by: str | None = None,
) -> Run:
    run = Run.objects.create(
        id=run_id or ids.run_id(),
        workflow_name=workflow_name,
        input={} if input is None else input,
        metadata=metadata or {},
        recovery_webhook=recovery_webhook,
        budget_usd=budget_usd,
        started_by=started_by,
    )
    insert_channels(run.id, channels)
    return run


def insert_channels(run_id: str, channels: list[dict[str, Any]] | None) -> None:
    """Store a run's webhook channels (inside the caller's transaction), each with the scope of
    whoever set it (``wire.SET_BY``, stamped by the API; missing means ``agent``: fail closed)."""
    rows = [
        Channel(
            run_id=run_id,
            type="webhook",
            url=c["url"],
            secret=c.get("secret"),
            events=c.get("events") or [],
            set_by_scope=c.get(wire.SET_BY) or "agent",
        )
        for c in channels or []
    ]
    if rows:
        Channel.objects.bulk_create(rows)


# Create in one statement: the idempotency key (when given), the run with its first event's seq
# already counted (an UPDATE cannot see a row inserted by the same statement), its channels and
# ``run.created``. A key another request holds makes ``k`` empty, so nothing is inserted; the
# caller then reads that request's run (ON CONFLICT has waited for it to commit). Channels keep
# the order they were given in: ``created_at`` grows by a microsecond per channel.
CREATE_SQL = f"""
WITH k AS (
  INSERT INTO tb_idempotency_key (scope, key, resource_id, created_at)
  SELECT %(scope)s::text, %(key)s::text, %(id)s::text, now() WHERE %(key)s::text IS NOT NULL
  ON CONFLICT (scope, key) DO NOTHING
  RETURNING id
),
run AS (
  INSERT INTO tb_run (id, workflow_name, input, metadata, status, recovery_webhook, attempt, event_seq,
                      priority, max_attempts, budget_usd, started_by, created_at, updated_at)
  SELECT %(id)s::text, %(workflow)s::text, %(input)s, %(metadata)s, 'pending', %(webhook)s, 0, 1, 0, 1,
         %(budget)s::numeric, %(started_by)s::text, now(), now()
  WHERE %(key)s::text IS NULL OR EXISTS (SELECT 1 FROM k)
  RETURNING id, created_at
),
ch AS (
  INSERT INTO tb_channel (id, run_id, type, url, secret, events, set_by_scope, created_at)
  SELECT c ->> 'id', run.id, 'webhook', c ->> 'url', c ->> 'secret', c -> 'events', c ->> 'scope',
         run.created_at + (n - 1) * interval '1 microsecond'
  FROM run, jsonb_array_elements(%(channels)s) WITH ORDINALITY AS cs(c, n)
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="run.id",
            seq="1",
            type="'run.created'",
            payload="jsonb_build_object('workflowName', %(workflow)s::text, 'input', %(input)s::jsonb, "
            "'channels', %(public)s::jsonb)",
            sources="run",
        )
    )
})
SELECT created_at FROM run
"""


def run_create(
    *,
    workflow_name: str,
    input: Any = None,
    metadata: dict[str, Any] | None = None,
    recovery_webhook: str | None = None,
    channels: list[dict[str, Any]] | None = None,
    idempotency: tuple[str, str] | None = None,
    budget_usd: Decimal | None = None,
    started_by: str | None = None,
) -> Run:
    """Create a ``pending`` run with its channels; emits ``run.created`` (secrets omitted).
    With ``idempotency=(scope, key)`` a retried create returns the run the first one made.
    ``budget_usd``: the run's own budget (services.budgets). ``started_by``: who asked
    (``Principal.label``; approval policies refuse them as approvers of the run's gates)."""
    new_id = ids.run_id()
    input = {} if input is None else input
    metadata = metadata or {}
    stored = [
        {
            "id": ids.channel_id(),
            "url": c["url"],
            "secret": c.get("secret"),
            "events": c.get("events") or [],
            "scope": c.get(wire.SET_BY) or "agent",  # missing means agent: fail closed
        }
        for c in channels or []
    ]
    scope, key = idempotency if idempotency is not None else (None, None)
    rows = fetch_prepared(
        CREATE_SQL,
        {
            "id": new_id,
            "workflow": workflow_name,
            "input": jsonb(input),
            "metadata": jsonb(metadata),
            "webhook": recovery_webhook,
            "channels": jsonb(stored),
            "public": jsonb(_public_channels(channels)),
            "scope": scope,
            "key": key,
            "budget": budget_usd,
            "started_by": started_by,
        },
    )
    if not rows:
        return Run.objects.get(id=_earlier(scope, key))
    created = rows[0].created_at
    run = Run(
        id=new_id,
        workflow_name=workflow_name,
        input=input,
        metadata=metadata,
        recovery_webhook=recovery_webhook,
        budget_usd=budget_usd,
        started_by=started_by,
        status=RunStatus.PENDING,
        event_seq=1,
        created_at=created,
        updated_at=created,
    )
    run._state.adding = False  # it is stored: a save() must update, not insert
    run._state.db = connection.alias
    return run


def _earlier(scope: str | None, key: str | None) -> str:
    row = fetch_one("SELECT resource_id FROM tb_idempotency_key WHERE scope = %s AND key = %s", [scope, key])
    if row is None:  # pragma: no cover - the insert only stands back for a committed key
        raise LookupError(key)
    return str(row.resource_id)


def _locked_run(run_id: str) -> tuple[Run, dt.datetime]:
    """The run, row-locked (FOR NO KEY UPDATE), and the database clock read by the same
    statement (no extra round trip for ``now()``). Raises RunNotFound."""
    run = Run.objects.select_for_update(no_key=True).annotate(db_now=Now()).filter(id=run_id).first()
    if run is None:
        raise RunNotFound()
    return run, run.db_now


# The run routes' statements lock the run row first (``r``, FOR NO KEY UPDATE: the lock every
# writer of the run takes first, see services.events) and decide on the locked, latest version
# of it; the UPDATE then writes that version. Each answers the run with the table's own column
# names plus ``queue`` (the model's name for ``queue_name``, read by ``wire.run_out``).
BEGIN_SQL = f"""
WITH r AS (SELECT * FROM tb_run WHERE id = %(run)s FOR NO KEY UPDATE),
d AS (
  SELECT r.*, CASE
      WHEN status = 'cancelled' THEN 'cancelled'
      WHEN status = 'completed' THEN 'completed'
      WHEN lease_owner IS NOT NULL AND lease_expires_at > now() AND lease_owner <> %(owner)s THEN 'leased'
      ELSE 'acquire' END AS action
  FROM r
),
upd AS (
  UPDATE tb_run t SET status = 'running', lease_owner = %(owner)s,
         lease_expires_at = now() + %(lease)s * interval '1 millisecond',
         attempt = t.attempt + 1, event_seq = t.event_seq + 1, updated_at = now()
  FROM d WHERE t.id = d.id AND d.action = 'acquire'
  RETURNING t.*
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="id",
            seq="event_seq",
            type="'run.started'",
            payload="jsonb_build_object('leaseOwner', %(owner)s::text)",
            sources="upd",
        )
    )
})
SELECT upd.*, upd.queue_name AS queue, 'acquire' AS action FROM upd
UNION ALL
SELECT r.*, r.queue_name, d.action FROM r, d WHERE NOT EXISTS (SELECT 1 FROM upd)
"""


def run_begin(*, run_id: str, owner: str | None = None) -> tuple[Row, str]:
    """Acquire the run lease (§6.5), in one statement. Bumps ``attempt`` — the fencing token
    that makes step leases taken under an older run lease stale. Emits ``run.started``.

    Raises RunNotFound, RunCancelled (409 ``run_cancelled``) or RunLeased (409)."""
    lease_owner = owner or str(uuid.uuid4())  # a fresh owner never equals a stored one
    rows = fetch_prepared(
        BEGIN_SQL, {"run": run_id, "owner": lease_owner, "lease": settings.TIDEBASE_LEASE_MS}, RUN_JSON
    )
    if not rows:
        raise RunNotFound()
    run = rows[0]
    if run.action == "cancelled":
        raise RunCancelled("run is cancelled", run=wire.run_out(run))
    if run.action == "leased":
        raise RunLeased("run is leased", leaseOwner=run.lease_owner)
    return run, lease_owner  # "completed": unchanged, with an owner that is not stored (§18.3)


def run_heartbeat(*, run_id: str, owner: str) -> Run:
    """Renew a run lease held by ``owner`` (compare-and-set, one statement). Raises
    RunNotFound, or LeaseLost with code ``run_cancelled``/``lease_lost``."""
    updated = Run.objects.filter(id=run_id, status=RunStatus.RUNNING, lease_owner=owner).update(
        lease_expires_at=Now() + lease_delta(), updated_at=Now()
    )
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        raise RunNotFound()
    if updated != 1:
        if run.status == RunStatus.CANCELLED:
            raise RunCancelled("lease lost", run=wire.run_out(run))
        raise LeaseLost("lease lost", run=wire.run_out(run))
    return run


# Channel-delivery outbox rows for the run's channels subscribed to ``event``, from the CTE
# ``upd`` (the changed run): events.CHANNEL_SQL's rows, with the payload built in the statement.
def _deliveries(event: str, payload: str, when: str = "true") -> str:
    return f"""INSERT INTO tb_channel_delivery
    (id, run_id, channel_id, gate_id, url, secret, event_type, payload, status, attempts, next_attempt_at, created_at)
  SELECT 'del_' || replace(gen_random_uuid()::text, '-', ''), c.run_id, c.id, NULL, c.url, c.secret,
         '{event}', {payload}, 'pending', 0, now(), now()
  FROM upd JOIN tb_channel c ON c.run_id = upd.id
  WHERE {when} AND (jsonb_array_length(c.events) = 0 OR c.events ? '{event}')
  RETURNING id"""


# A cancelled run is returned unchanged (§19.14), and so is a completed one: a second complete
# never overwrites the first result (our fix of §18.1).
COMPLETE_SQL = f"""
WITH r AS (SELECT * FROM tb_run WHERE id = %(run)s FOR NO KEY UPDATE),
upd AS (
  UPDATE tb_run t SET status = 'completed', result = %(result)s, error = NULL, lease_owner = NULL,
         lease_expires_at = NULL, completed_at = now(), updated_at = now(), event_seq = t.event_seq + 1
  FROM r WHERE t.id = r.id AND r.status NOT IN ('cancelled', 'completed')
  RETURNING t.*
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="id",
            seq="event_seq",
            type="'run.completed'",
            payload="jsonb_build_object('result', %(result)s::jsonb)",
            sources="upd",
        )
    )
}),
dl AS ({_deliveries("run.completed", f"jsonb_build_object('run', {run_json('upd')})")})
SELECT upd.*, upd.queue_name AS queue, ARRAY(SELECT id FROM dl) AS deliveries FROM upd
UNION ALL
SELECT r.*, r.queue_name, NULL FROM r WHERE NOT EXISTS (SELECT 1 FROM upd)
"""


def run_complete(*, run_id: str, result: Any) -> Row:
    """Finish a run, in one statement. Unfenced, as the SDKs require (§19.6). A cancelled or
    completed run is returned unchanged. Emits ``run.completed`` and its channel event."""
    stored = None if result is None else jsonb(result)  # SQL NULL, as the ORM stores None
    rows = fetch_prepared(COMPLETE_SQL, {"run": run_id, "result": stored}, RUN_JSON)
    if not rows:
        raise RunNotFound()
    run = rows[0]
    after_commit("channel", run.deliveries or [])
    return run


# Fail (§6.8): a queue run with attempts left is requeued with backoff (``min(300000, 5000 *
# 2^max(0, attempt - 1))`` ms, as protocol.requeue_backoff_ms); otherwise it fails with
# ``run.failed``, its channel event and, with a recovery webhook, a ``run.resume`` outbox row
# and ``recovery.started`` (the event after ``run.failed``). Cancelled and completed runs are
# left untouched (a late fail never flips a completed run: our fix of §18.1), and so is a run an
# operator stopped at its budget (``budget_exceeded``): the client that was waiting reports its
# own failure afterwards, which must not replace the code.
FAILED_PAYLOAD = f"jsonb_build_object('run', {run_json('upd')}, 'error', %(error)s::jsonb)"
FAIL_SQL = f"""
WITH r AS (SELECT * FROM tb_run WHERE id = %(run)s FOR NO KEY UPDATE),
d AS (
  SELECT id,
         CASE WHEN status IN ('cancelled', 'completed') THEN 'none'
              WHEN status = 'failed' AND failure_class = 'budget_exceeded' THEN 'none'
              WHEN queue_name IS NOT NULL AND attempt < max_attempts THEN 'requeue'
              ELSE 'fail' END AS action,
         CASE WHEN COALESCE(recovery_webhook, '') <> '' THEN 1 ELSE 0 END AS recover
  FROM r
),
upd AS (
  UPDATE tb_run t SET
    status = CASE d.action WHEN 'requeue' THEN 'queued' ELSE 'failed' END,
    error = %(error)s, lease_owner = NULL, lease_expires_at = NULL,
    run_at = CASE d.action WHEN 'requeue'
                THEN now() + (CASE WHEN t.attempt > 6 THEN 300000 ELSE 5000 << GREATEST(0, t.attempt - 1) END)
                             * interval '1 millisecond'
                ELSE t.run_at END,
    failure_class = CASE WHEN d.action = 'requeue' THEN t.failure_class
                         WHEN t.queue_name IS NOT NULL AND t.max_attempts > 1 THEN 'max_retries'
                         ELSE %(failure_class)s::text END,
    updated_at = now(),
    event_seq = t.event_seq + CASE d.action WHEN 'fail' THEN 1 + d.recover ELSE 1 END
  FROM d WHERE t.id = d.id AND d.action <> 'none'
  RETURNING t.*, d.action, d.recover
),
rec AS (
  INSERT INTO tb_recovery_attempt (id, run_id, reason, webhook_url, type, status, attempts, next_attempt_at,
                                   created_at)
  SELECT %(recovery_id)s, id, 'run_failed', recovery_webhook, 'run.resume', 'pending', 0, now(), now()
  FROM upd WHERE action = 'fail' AND recover = 1
  RETURNING id, run_id
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="id",
            seq="event_seq - recover",
            type="'run.failed'",
            payload="jsonb_build_object('error', %(error)s::jsonb, 'failureClass', failure_class)",
            sources="upd",
            where="action = 'fail'",
        ),
        event_row(
            run_id="id",
            seq="event_seq",
            type="'run.requeued'",
            payload="jsonb_build_object('error', %(error)s::jsonb, 'attempt', attempt, 'maxAttempts', max_attempts, "
            f"'nextRunAt', {ts_sql('run_at')})",
            sources="upd",
            where="action = 'requeue'",
        ),
        event_row(
            run_id="run_id",
            seq="(SELECT event_seq FROM upd)",
            type="'recovery.started'",
            payload="jsonb_build_object('recoveryAttemptId', id, 'reason', 'run_failed')",
            sources="rec",
        ),
    )
}),
dl AS ({_deliveries("run.failed", FAILED_PAYLOAD, when="upd.action = 'fail'")})
SELECT upd.*, upd.queue_name AS queue, ARRAY(SELECT id FROM dl) AS deliveries, (SELECT id FROM rec) AS recovery
FROM upd
UNION ALL
SELECT r.*, 'none', 0, r.queue_name, NULL, NULL FROM r WHERE NOT EXISTS (SELECT 1 FROM upd)
"""


def run_fail(*, run_id: str, error: Any, failure_class: str | None = None) -> tuple[Row, bool]:
    """Report a run failure (§6.8), in one statement (see FAIL_SQL). Returns the run and
    whether it was requeued."""
    rows = fetch_prepared(
        FAIL_SQL,
        {
            "run": run_id,
            "error": jsonb({} if error is None else error),
            "failure_class": failure_class,
            "recovery_id": ids.recovery_id(),
        },
        RUN_JSON,
    )
    if not rows:
        raise RunNotFound()
    run = rows[0]
    after_commit("channel", run.deliveries or [])
    if run.recovery is not None:
        after_commit("recovery", [run.recovery])
    return run, run.action == "requeue"


@transaction.atomic(durable=True)
def run_cancel(*, run_id: str, reason: str | None = None, actor: str | None = None) -> Run:
    """Cancel a run: one-way and idempotent (§6.9). A completed run cannot be cancelled
    (409 ``run_completed``); a second cancel returns the run unchanged with no event."""
    run, now = _locked_run(run_id)
    if run.status == RunStatus.CANCELLED:
        return run
    if run.status == RunStatus.COMPLETED:
        raise RunCompleted("run already completed", run=wire.run_out(run))
    run.status = RunStatus.CANCELLED
    run.cancel_requested_at = run.cancel_requested_at or now
    run.cancelled_at = now
    run.completed_at = now
    run.cancel_reason = reason
    run.cancel_actor = actor
    run.lease_owner = None
    run.lease_expires_at = None
    run.save(
        update_fields=[
            "status",
            "cancel_requested_at",
            "cancelled_at",
            "completed_at",
            "cancel_reason",
            "cancel_actor",
            "lease_owner",
            "lease_expires_at",
            "updated_at",
        ]
    )
    event_append(run_id=run.id, type="run.cancelled", payload={"reason": reason, "actor": actor})
    notify_channels(run_id=run.id, event_type="run.cancelled", payload={"run": wire.run_out(run)})
    return run


def recovery_record(
    run: Run, *, reason: str, type: str = "run.resume", url: str | None = None, now: dt.datetime | None = None
) -> RecoveryAttempt:
    """Outbox row for a ``run.resume`` (or, with ``url`` = a queue's invokeUrl, ``run.invoke``)
    webhook plus ``recovery.started``; inside the caller's transaction. The dispatcher delivers
    it after commit and records the outcome."""
    attempt = RecoveryAttempt.objects.create(
        run=run,
        reason=reason,
        webhook_url=url or run.recovery_webhook or "",
        type=type,
        next_attempt_at=now or db_now(),
    )
    event_append(run_id=run.id, type="recovery.started", payload={"recoveryAttemptId": attempt.id, "reason": reason})
    after_commit("recovery", [attempt.id])
    return attempt


@transaction.atomic(durable=True)
def run_recover(*, run_id: str, reason: str = "manual") -> RecoveryAttempt:
    """Record a manual ``run.resume`` request (§6.10); delivery is the dispatcher's job.
    Raises NoRecoveryWebhook (422) when the run has none."""
    run, _ = _locked_run(run_id)
    if not run.recovery_webhook:
        raise NoRecoveryWebhook("run has no recoveryWebhook configured")
    return recovery_record(run, reason=reason or "manual")


@transaction.atomic(durable=True)
def child_create(
    *,
    parent_run_id: str,
    name: str,
    workflow_name: str,
    input: Any = None,
    metadata: dict[str, Any] | None = None,
    recovery_webhook: str | None = None,
    channels: list[dict[str, Any]] | None = None,
    edge_type: str = "child",
    edge_metadata: dict[str, Any] | None = None,
    budget_usd: Decimal | None = None,
) -> tuple[Run, RunEdge, bool]:
    """Create or reuse the child run behind edge ``name`` (§6.11). The parent row lock plus the
    unique (parent, name) index make concurrent creations of one edge yield one child."""
    parent, _ = _locked_run(parent_run_id)
    edge = RunEdge.objects.select_related("child_run").filter(parent_run=parent, name=name).first()
    if edge is not None:
        return edge.child_run, edge, False
    child_meta = {**(metadata or {}), "parentRunId": parent.id, "parentEdgeName": name}
    try:
        with transaction.atomic():
            child = _insert_run(
                workflow_name=workflow_name,
                input=input,
                metadata=child_meta,
                recovery_webhook=recovery_webhook,
                channels=channels,
                budget_usd=budget_usd,
                started_by=parent.started_by,  # the parent's agent starts its children
            )
            edge = RunEdge.objects.create(
                parent_run=parent,
                child_run=child,
                name=name,
                edge_type=edge_type,
                metadata=edge_metadata or {},
            )
    except IntegrityError:  # pragma: no cover - the parent lock makes this unreachable
        edge = RunEdge.objects.select_related("child_run").get(parent_run=parent, name=name)
        return edge.child_run, edge, False
    event_append(
        run_id=child.id,
        type="run.created",
        payload={
            "workflowName": workflow_name,
            "input": child.input,
            "parentRunId": parent.id,
            "edgeName": name,
            "channels": _public_channels(channels),
        },
    )
    event_append(
        run_id=parent.id,
        type="run.child.created",
        payload={
            "childRun": wire.run_out(child),
            "edge": wire.edge_out(edge),
        },
    )
    return child, edge, True
