"""SQL fragments for writes done in one statement (state set, usage record): what ``wire`` and
``events.notify_channels`` do in Python, done by Postgres inside the writing statement, so the
route needs no read-back before it can build its event and outbox payloads."""

from __future__ import annotations

import re


def compact(sql: str, *, tight: bool = False) -> str:
    """``sql`` on one line, runs of whitespace made one space: psycopg caches the parsing of a
    query's placeholders only up to 4096 characters (``MAX_CACHED_STATEMENT_LENGTH``); a longer
    one is re-parsed on every call (about 0.3 ms for these). No ``--`` comments and no
    whitespace-sensitive literals in ``sql``. ``tight`` also drops the spaces next to ``,``,
    ``(``, ``)``, ``=``, ``+``, ``<`` and ``>`` outside quoted literals (for statements that would
    not fit otherwise)."""
    assert "--" not in sql
    one = re.sub(r"\s+", " ", sql).strip()
    if not tight:
        return one
    parts = one.split("'")  # even parts are outside literals (no escaped quotes in these statements)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r" ?([,()=+<>]) ?", r"\1", parts[i])
    return "'".join(parts)


def ts_sql(column: str) -> str:
    """``wire.ts`` in SQL: ISO-8601 UTC, exactly three fractional digits (truncated, not rounded,
    as ``microsecond // 1000``), ``Z``; the year zero-padded to four digits."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


def event_insert_sql(*rows: str) -> str:
    """The append to ``tb_event``, the one place its SQL is written: every writer (``events.
    APPEND_SQL`` and the one-statement writes' ``ev`` CTEs) inserts ``rows``, each an
    ``event_row``, stamped with the transaction's ``now()``. The event's ``seq`` must come from
    the run's ``event_seq`` bumped in the same statement (which takes the run row lock)."""
    return "INSERT INTO tb_event (run_id, seq, type, payload, created_at)\n" + "\nUNION ALL\n".join(rows)


def event_row(*, run_id: str, seq: str, type: str, payload: str, sources: str, where: str = "") -> str:
    """The rows of one kind of event for ``event_insert_sql``: SQL expressions over ``sources``
    (the CTEs or tables they come from), optionally filtered by ``where``. ``type`` is an SQL
    expression too: a quoted literal (``"'step.started'"``) or a placeholder."""
    return f"SELECT {run_id}, {seq}, {type}, {payload}, now() FROM {sources}" + (f" WHERE {where}" if where else "")


def channel_outbox_sql(*, event_type: str, payload: str, run_id: str, sources: str) -> str:
    """The insert of ``events.CHANNEL_SQL`` for an event whose payload is the same for every
    channel (no resolve token: ``notify_channels`` without ``resolver_payload``), as a data-
    modifying CTE body. ``payload`` and ``run_id`` are SQL expressions over ``sources`` (the
    CTEs they come from); returns the new delivery ids for ``outbox.after_commit``."""
    return f"""
INSERT INTO tb_channel_delivery
  (id, run_id, channel_id, gate_id, url, secret, event_type, payload, status, attempts,
   next_attempt_at, created_at)
SELECT 'del_' || replace(gen_random_uuid()::text, '-', ''), c.run_id, c.id, NULL, c.url, c.secret,
       '{event_type}', {payload}, 'pending', 0, now(), now()
FROM tb_channel c, {sources}
WHERE c.run_id = {run_id} AND (jsonb_array_length(c.events) = 0 OR c.events ? '{event_type}')
RETURNING id"""
