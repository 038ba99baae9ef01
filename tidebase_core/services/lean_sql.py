"""SQL fragments for writes done in one statement (state set, usage record): what ``wire`` and
``events.notify_channels`` do in Python, done by Postgres inside the writing statement, so the
route needs no read-back before it can build its event and outbox payloads."""

from __future__ import annotations

import re


def compact(sql: str) -> str:
    """``sql`` on one line, runs of whitespace made one space: psycopg caches the parsing of a
    query's placeholders only up to 4096 characters (``MAX_CACHED_STATEMENT_LENGTH``); a longer
    one is re-parsed on every call (about 0.3 ms for these). No ``--`` comments and no
    whitespace-sensitive literals in ``sql``."""
    assert "--" not in sql
    return re.sub(r"\s+", " ", sql).strip()


def ts_sql(column: str) -> str:
    """``wire.ts`` in SQL: ISO-8601 UTC, exactly three fractional digits (truncated, not rounded,
    as ``microsecond // 1000``), ``Z``; the year zero-padded to four digits."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


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
