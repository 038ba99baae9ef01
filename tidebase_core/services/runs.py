"""Run lifecycle writes: create, begin, heartbeat, complete, fail, cancel, recover, children."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from tidebase_core import ids, protocol, wire
from tidebase_core.exceptions import (
    LeaseLost,
    NoRecoveryWebhook,
    RunCancelled,
    RunCompleted,
    RunLeased,
    RunNotFound,
)
from tidebase_core.models import Channel, RecoveryAttempt, Run, RunEdge
from tidebase_core.outbox import after_commit
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.idempotency import claim_key
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
) -> Run:
    run = Run.objects.create(
        id=run_id or ids.run_id(),
        workflow_name=workflow_name,
        input={} if input is None else input,
        metadata=metadata or {},
        recovery_webhook=recovery_webhook,
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


@transaction.atomic(durable=True)
def run_create(
    *,
    workflow_name: str,
    input: Any = None,
    metadata: dict[str, Any] | None = None,
    recovery_webhook: str | None = None,
    channels: list[dict[str, Any]] | None = None,
    idempotency: tuple[str, str] | None = None,
) -> Run:
    """Create a ``pending`` run with its channels; emits ``run.created`` (secrets omitted).
    With ``idempotency=(scope, key)`` a retried create returns the run the first one made."""
    new_id = ids.run_id()
    if idempotency is not None:
        earlier = claim_key(scope=idempotency[0], key=idempotency[1], resource_id=new_id)
        if earlier is not None:
            return Run.objects.get(id=earlier)
    run = _insert_run(
        workflow_name=workflow_name,
        input=input,
        metadata=metadata,
        recovery_webhook=recovery_webhook,
        channels=channels,
        run_id=new_id,
    )
    event_append(
        run_id=run.id,
        type="run.created",
        payload={"workflowName": workflow_name, "input": run.input, "channels": _public_channels(channels)},
    )
    return run


def _locked_run(run_id: str) -> tuple[Run, dt.datetime]:
    """The run, row-locked (FOR NO KEY UPDATE), and the database clock read by the same
    statement (no extra round trip for ``now()``). Raises RunNotFound."""
    run = Run.objects.select_for_update(no_key=True).annotate(db_now=Now()).filter(id=run_id).first()
    if run is None:
        raise RunNotFound()
    return run, run.db_now


@transaction.atomic(durable=True)
def run_begin(*, run_id: str, owner: str | None = None) -> tuple[Run, str]:
    """Acquire the run lease (§6.5). Bumps ``attempt`` — the fencing token that makes step
    leases taken under an older run lease stale. Emits ``run.started``.

    Raises RunNotFound, RunCancelled (409 ``run_cancelled``) or RunLeased (409)."""
    run, now = _locked_run(run_id)
    action = protocol.decide_run_begin(
        status=run.status,
        lease_owner=run.lease_owner,
        lease_expires_at=run.lease_expires_at,
        owner=owner,
        now=now,
    )
    if action == "cancelled":
        raise RunCancelled("run is cancelled", run=wire.run_out(run))
    if action == "completed":
        return run, owner or str(uuid.uuid4())
    if action == "leased":
        raise RunLeased("run is leased", leaseOwner=run.lease_owner)
    lease_owner = owner or str(uuid.uuid4())
    run.status = "running"
    run.lease_owner = lease_owner
    run.lease_expires_at = now + lease_delta()
    run.attempt += 1
    run.save(update_fields=["status", "lease_owner", "lease_expires_at", "attempt", "updated_at"])
    event_append(run_id=run.id, type="run.started", payload={"leaseOwner": lease_owner})
    return run, lease_owner


def run_heartbeat(*, run_id: str, owner: str) -> Run:
    """Renew a run lease held by ``owner`` (compare-and-set, one statement). Raises
    RunNotFound, or LeaseLost with code ``run_cancelled``/``lease_lost``."""
    updated = Run.objects.filter(id=run_id, status="running", lease_owner=owner).update(
        lease_expires_at=Now() + lease_delta(), updated_at=Now()
    )
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        raise RunNotFound()
    if updated != 1:
        if run.status == "cancelled":
            raise RunCancelled("lease lost", run=wire.run_out(run))
        raise LeaseLost("lease lost", run=wire.run_out(run))
    return run


@transaction.atomic(durable=True)
def run_complete(*, run_id: str, result: Any) -> Run:
    """Finish a run. Unfenced, as the SDKs require (§19.6). A cancelled run is returned
    unchanged (§19.14); so is an already-completed one: a second complete never overwrites
    the first result (our fix of §18.1). Emits ``run.completed`` and its channel event."""
    run, now = _locked_run(run_id)
    if run.status in ("cancelled", "completed"):
        return run
    run.status = "completed"
    run.result = result
    run.error = None
    run.lease_owner = None
    run.lease_expires_at = None
    run.completed_at = now
    run.save(
        update_fields=["status", "result", "error", "lease_owner", "lease_expires_at", "completed_at", "updated_at"]
    )
    event_append(run_id=run.id, type="run.completed", payload={"result": result})
    notify_channels(run_id=run.id, event_type="run.completed", payload={"run": wire.run_out(run)})
    return run


@transaction.atomic(durable=True)
def run_fail(*, run_id: str, error: Any, failure_class: str | None = None) -> tuple[Run, bool]:
    """Report a run failure (§6.8). Cancelled and completed runs are left untouched (a late
    fail never flips a completed run: our fix of §18.1). Queue runs with attempts left are
    requeued with backoff; otherwise the run fails, emits ``run.failed`` + channel event, and a
    ``run.resume`` outbox row is written when the run has a recovery webhook."""
    run, now = _locked_run(run_id)
    if run.status in ("cancelled", "completed"):
        return run, False
    error = {} if error is None else error
    run.error = error
    run.lease_owner = None
    run.lease_expires_at = None
    if run.queue is not None and run.attempt < run.max_attempts:
        run.status = "queued"
        run.run_at = now + dt.timedelta(milliseconds=protocol.requeue_backoff_ms(run.attempt))
        run.save(update_fields=["status", "error", "lease_owner", "lease_expires_at", "run_at", "updated_at"])
        event_append(
            run_id=run.id,
            type="run.requeued",
            payload={
                "error": error,
                "attempt": run.attempt,
                "maxAttempts": run.max_attempts,
                "nextRunAt": wire.ts(run.run_at),
            },
        )
        return run, True
    run.status = "failed"
    run.failure_class = "max_retries" if (run.queue is not None and run.max_attempts > 1) else failure_class
    run.save(update_fields=["status", "error", "lease_owner", "lease_expires_at", "failure_class", "updated_at"])
    event_append(run_id=run.id, type="run.failed", payload={"error": error, "failureClass": run.failure_class})
    notify_channels(run_id=run.id, event_type="run.failed", payload={"run": wire.run_out(run), "error": error})
    if run.recovery_webhook:
        recovery_record(run, reason="run_failed", now=now)
    return run, False


@transaction.atomic(durable=True)
def run_cancel(*, run_id: str, reason: str | None = None, actor: str | None = None) -> Run:
    """Cancel a run: one-way and idempotent (§6.9). A completed run cannot be cancelled
    (409 ``run_completed``); a second cancel returns the run unchanged with no event."""
    run, now = _locked_run(run_id)
    if run.status == "cancelled":
        return run
    if run.status == "completed":
        raise RunCompleted("run already completed", run=wire.run_out(run))
    run.status = "cancelled"
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
