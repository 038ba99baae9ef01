"""Live state, versioned streams and labeled snapshots (§7.7, §7.8)."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import F

from tidebase_core import protocol, wire
from tidebase_core.db import jsonb
from tidebase_core.exceptions import NotFound, RunNotFound
from tidebase_core.models import Run, RunState, StateStream, StateVersion
from tidebase_core.services.events import event_append, notify_channels


def _stream_locked(run_id: str, name: str, *, target_type: str = "run", target_id: str | None = None) -> StateStream:
    """Get-or-create the stream row, locked: the lock serializes version numbering. Inside the
    caller's transaction. A missing row is inserted with ``ON CONFLICT DO NOTHING`` (a concurrent
    creator's insert is waited for, never an IntegrityError), then locked. ``current_value`` is
    not read: every caller overwrites it, and it may be as large as the state (tens of MB)."""
    streams = StateStream.objects.select_for_update().defer("current_value")
    stream = streams.filter(run_id=run_id, name=name).first()
    if stream is not None:
        return stream
    StateStream.objects.bulk_create(
        [StateStream(run_id=run_id, name=name, target_type=target_type, target_id=target_id or run_id)],
        ignore_conflicts=True,
    )
    return streams.get(run_id=run_id, name=name)


def _append_version(
    stream: StateStream,
    *,
    value: Any,
    patch: Any = None,
    label: str | None = None,
    reason: str | None = None,
    importance: str = "normal",
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> StateVersion:
    stream.current_version += 1
    stream.current_value = value
    stream.save(update_fields=["current_version", "current_value", "updated_at"])
    return StateVersion.objects.create(
        stream=stream,
        run_id=stream.run_id,
        version=stream.current_version,
        value=value,
        patch=patch,
        label=label,
        reason=reason,
        importance=importance,
        metadata=metadata or {},
        created_by=created_by,
    )


def _require_run(run_id: str) -> None:
    if not Run.objects.filter(id=run_id).exists():
        raise RunNotFound()


def _state_locked(run_id: str) -> RunState | None:
    """The run's live state row, locked until the caller's transaction ends; None if none."""
    return RunState.objects.select_for_update().filter(run_id=run_id).first()


_STATE_INSERT_SQL = """
INSERT INTO tb_run_state (run_id, value, version, updated_at) VALUES (%s, %s, 1, now())
ON CONFLICT (run_id) DO NOTHING
RETURNING updated_at
"""


def _state_insert(run_id: str, value: Any) -> RunState | None:
    """Insert the run's first live state (version 1), inside the caller's transaction, which
    holds the new row's lock. Returns None when another writer's row exists: ``ON CONFLICT``
    first waits for that writer's transaction, so the caller can then lock the row and merge
    into it. (Catching an IntegrityError instead, the loser overwrote the winner: issue #12.)"""
    with connection.cursor() as cur:
        cur.execute(_STATE_INSERT_SQL, [run_id, jsonb(value)])
        row = cur.fetchone()
    if row is None:
        return None
    return RunState(run_id=run_id, value=value, version=1, updated_at=row[0])


@transaction.atomic(durable=True)
def state_write(
    *,
    run_id: str,
    value: Any,
    merge: bool,
    stream: str | None = None,
    label: str | None = None,
    reason: str | None = None,
    importance: str = "normal",
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> RunState:
    """PUT (replace) or PATCH (jsonb ``||`` merge) the live state, append a version to the
    history stream, emit ``state.updated`` and its channel event."""
    _require_run(run_id)
    value = {} if value is None else value
    live = _state_locked(run_id)
    created = False
    if live is None:
        live = _state_insert(run_id, value)
        created = live is not None
    if live is None:  # a concurrent first write won the insert (and has committed): merge into it
        live = _state_locked(run_id)
        if live is None:  # pragma: no cover - the row exists once the insert conflicted
            raise RunNotFound()
    if created:  # the first write on a run just stores ``value`` (§7.7)
        new_value = value
    else:
        new_value = protocol.patch_value(live.value, value) if merge else value
        live.value = new_value
        live.version = F("version") + 1
        live.save(update_fields=["value", "version", "updated_at"])
        live.refresh_from_db(fields=["version", "updated_at"])
    version = _append_version(
        _stream_locked(run_id, stream or "run"),
        value=new_value,
        patch=value if merge else None,
        label=label,
        reason=reason,
        importance=importance,
        metadata=metadata,
        created_by=created_by,
    )
    pv = wire.public_version(version)
    event_payload: dict[str, Any] = {"value": new_value, "stateVersion": pv}
    if merge:
        event_payload["patch"] = value
    event_append(run_id=run_id, type="state.updated", payload=event_payload)
    notify_channels(
        run_id=run_id, event_type="state.updated", payload={"state": wire.state_out(live), "stateVersion": pv}
    )
    return live


@transaction.atomic(durable=True)
def state_save(
    *,
    run_id: str,
    label: str,
    stream: str | None = None,
    reason: str | None = None,
    importance: str = "milestone",
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> StateVersion:
    """Label the current value as a new version (§7.7). Raises NotFound when there is none."""
    name = stream or "run"
    if name == "run":
        live = RunState.objects.filter(run_id=run_id).first()
        if live is None:
            raise NotFound("run state not found")
        value = live.value
        target = _stream_locked(run_id, name)
    else:
        target_or_none = StateStream.objects.select_for_update().filter(run_id=run_id, name=name).first()
        if target_or_none is None:
            raise NotFound("run state not found")
        target = target_or_none
        value = target.current_value
    version = _append_version(
        target, value=value, label=label, reason=reason, importance=importance, metadata=metadata, created_by=created_by
    )
    event_append(run_id=run_id, type="state.saved", payload={"stateVersion": wire.public_version(version)})
    return version


@transaction.atomic(durable=True)
def snapshot_create(
    *,
    run_id: str,
    label: str,
    state: Any,
    target_type: str | None = None,
    target_id: str | None = None,
    reason: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> StateVersion:
    """Append a labeled ``milestone`` version to stream ``<type>:<id>`` (§7.8)."""
    _require_run(run_id)
    ttype, tid = (target_type or "run"), (target_id or run_id)
    stream = _stream_locked(run_id, f"{ttype}:{tid}", target_type=ttype, target_id=tid)
    version = _append_version(
        stream,
        value={} if state is None else state,
        label=label,
        reason=reason,
        importance="milestone",
        metadata=metadata,
        created_by=created_by,
    )
    event_append(run_id=run_id, type="snapshot.created", payload={"stateVersion": wire.public_version(version)})
    return version
