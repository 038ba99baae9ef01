"""Live state, versioned streams and labeled snapshots (§7.7, §7.8)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tidebase_core import ids, wire
from tidebase_core.db import fetch_prepared, jsonb
from tidebase_core.exceptions import NotFound, RunNotFound
from tidebase_core.models import Run, RunState, StateStream, StateVersion
from tidebase_core.outbox import after_commit
from tidebase_core.services.events import event_append
from tidebase_core.services.lean_sql import channel_outbox_sql, compact, event_insert_sql, event_row, ts_sql


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


# State set in one statement (autocommit: no BEGIN/COMMIT round trips), as the step routes.
#
# ``live`` is the race-safe write of issue #12 in one upsert: the first write inserts version 1
# holding ``value``; any later one (and the loser of a first-write race, once the winner has
# committed: ON CONFLICT waits for it) locks the row and replaces or ``||``-merges into the
# newest committed value, whatever the statement's snapshot saw. The stream is got-or-created
# and bumped the same way, so its row lock numbers the versions. Locks are taken in the order
# of the old read-modify-write: state row, stream row, then the run row (``bump``, the event
# counter), each CTE feeding the next. The run must exist: no run, no ``live`` row, no answer
# row (404), and every later CTE writes nothing. ``pv`` is ``wire.public_version``.
#
# ``value`` is sent once ($n is reused) and merged, copied and wrapped into the event and outbox
# payloads by Postgres; for PUT it is not even sent back (the caller answers with its own).
_VALUE = frozenset({"value"})

STATE_WRITE_SQL = compact(f"""
WITH live AS (
  INSERT INTO tb_run_state AS s (run_id, value, version, updated_at)
  SELECT r.id, %(value)s, 1, now() FROM tb_run r WHERE r.id = %(run)s
  ON CONFLICT (run_id) DO UPDATE
  SET value = CASE WHEN %(merge)s THEN s.value || EXCLUDED.value ELSE EXCLUDED.value END,
      version = s.version + 1, updated_at = now()
  RETURNING s.run_id, s.value, s.version, s.updated_at
),
stream AS (
  INSERT INTO tb_state_stream AS t (id, run_id, name, target_type, target_id, current_version, current_value,
                                    metadata, created_at, updated_at)
  SELECT %(stream_id)s::text, live.run_id, %(stream)s::text, 'run', live.run_id, 1, live.value, '{{}}', now(), now()
  FROM live
  ON CONFLICT (run_id, name) DO UPDATE
  SET current_version = t.current_version + 1, current_value = EXCLUDED.current_value, updated_at = now()
  RETURNING t.id, t.current_version
),
ver AS (
  INSERT INTO tb_state_version (id, stream_id, run_id, step_id, version, value, patch, label, reason, importance,
                                metadata, created_by, created_at)
  SELECT %(version_id)s::text, stream.id, live.run_id, NULL, stream.current_version, live.value,
         CASE WHEN %(merge)s THEN %(value)s END, %(label)s::text, %(reason)s::text, %(importance)s::text,
         %(metadata)s, %(created_by)s::text, now()
  FROM live, stream
  RETURNING id, stream_id, run_id, version, label, reason, importance, created_at
),
pv AS (
  SELECT jsonb_build_object('id', id, 'streamId', stream_id, 'runId', run_id, 'version', version, 'label', label,
                            'reason', reason, 'importance', importance, 'createdAt', {ts_sql("created_at")}) AS v
  FROM ver
),
bump AS (
  UPDATE tb_run t SET event_seq = t.event_seq + 1 FROM ver WHERE t.id = ver.run_id RETURNING t.id, t.event_seq
),
ev AS ({
    event_insert_sql(
        event_row(
            run_id="bump.id",
            seq="bump.event_seq",
            type="'state.updated'",
            payload="jsonb_build_object('value', live.value, 'stateVersion', pv.v) || CASE WHEN %(merge)s "
            "THEN jsonb_build_object('patch', %(value)s) ELSE '{}'::jsonb END",
            sources="bump, live, pv",
        )
    )
}),
ch AS ({
    channel_outbox_sql(
        event_type="state.updated",
        payload=f"jsonb_build_object('state', jsonb_build_object('runId', live.run_id, 'value', live.value, "
        f"'version', live.version, 'updatedAt', {ts_sql('live.updated_at')}), 'stateVersion', pv.v)",
        run_id="live.run_id",
        sources="live, pv",
    )
})
SELECT live.version, live.updated_at, CASE WHEN %(merge)s THEN live.value END AS value,
       (SELECT array_agg(id) FROM ch) AS deliveries
FROM live
""")


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
    history stream, emit ``state.updated`` and its channel event: one statement, committed
    (synchronously) before this returns when called outside a transaction. Raises RunNotFound.

    The returned state's ``value`` is the caller's own ``value`` for a PUT, and for a PATCH the
    merged value as stored, as ``wire.RawJson`` text (answered verbatim, never decoded here)."""
    value = {} if value is None else value
    params = {
        "run": run_id,
        "value": jsonb(value),
        "merge": merge,
        "stream_id": ids.stream_id(),
        "stream": stream or "run",
        "version_id": ids.version_id(),
        "label": label,
        "reason": reason,
        "importance": importance,
        "metadata": jsonb(metadata or {}),
        "created_by": created_by,
    }
    rows = fetch_prepared(STATE_WRITE_SQL, params, _VALUE)
    if not rows:
        raise RunNotFound()
    row = rows[0]
    after_commit("channel", row.deliveries or [])
    return RunState(run_id=run_id, value=row.value if merge else value, version=row.version, updated_at=row.updated_at)


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
