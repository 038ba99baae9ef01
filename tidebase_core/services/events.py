from __future__ import annotations

from typing import Any

from django.db import connection

from tidebase_core.auth import OPEN_SCOPE, RESOLVER_SCOPES, auth_required
from tidebase_core.db import jsonb
from tidebase_core.ids import delivery_id
from tidebase_core.outbox import after_commit
from tidebase_core.services.lean_sql import event_insert_sql, event_row
from tidebase_core.wire import SET_BY

# One statement: bump the run's event counter (taking the run row lock, which serializes
# writers of this run's log so sequence numbers are gap-free and strictly ordered) and insert
# the event with that number. A trigger (migration 0002) NOTIFYs listeners; Postgres delivers
# notifications only at commit, so subscribers never see an event that was rolled back.
APPEND_SQL = f"""
WITH s AS (UPDATE tb_run SET event_seq = event_seq + 1 WHERE id = %s RETURNING id, event_seq)
{event_insert_sql(event_row(run_id="id", seq="event_seq", type="%s", payload="%s", sources="s"))} RETURNING seq
"""

# Outbox rows for the run's channels that subscribe to this event type, in one statement. A
# channel set by a scope that may resolve gets the resolver payload, every other one the plain
# payload (they differ only for gate.created: the resolve token).
CHANNEL_SQL = """
INSERT INTO tb_channel_delivery
  (id, run_id, channel_id, gate_id, url, secret, event_type, payload, status, attempts,
   next_attempt_at, created_at)
SELECT 'del_' || replace(gen_random_uuid()::text, '-', ''), c.run_id, c.id, %(gate_id)s, c.url, c.secret,
       %(event_type)s,
       CASE WHEN c.set_by_scope = ANY(%(resolver_scopes)s) THEN %(resolver_payload)s ELSE %(payload)s END,
       'pending', 0, now(), now()
FROM tb_channel c
WHERE c.run_id = %(run_id)s AND (jsonb_array_length(c.events) = 0 OR c.events ? %(event_type)s)
RETURNING id
"""


def event_append(*, run_id: str, type: str, payload: Any) -> int:
    """Append one event to the run's log and return its ``seq``. Runs inside the caller's
    transaction; takes the run row lock (FOR NO KEY UPDATE) until that transaction ends."""
    with connection.cursor() as cur:
        cur.execute(APPEND_SQL, (run_id, type, jsonb(payload)))
        row = cur.fetchone()
    if row is None:
        raise LookupError(run_id)
    return int(row[0])


def resolver_scopes() -> tuple[str, ...]:
    """Channel stamps whose deliveries may carry a resolve token now: operator and admin, and
    channels set while the API was open only while it is still open (a run created before the
    first key must not keep handing tokens to a receiver an anonymous caller chose)."""
    return RESOLVER_SCOPES if auth_required() else (*RESOLVER_SCOPES, OPEN_SCOPE)


def notify_channels(
    *,
    run_id: str,
    event_type: str,
    payload: Any,
    gate_id: str | None = None,
    inline_channels: list[dict[str, Any]] | None = None,
    resolver_payload: Any = None,
) -> None:
    """Write channel-delivery outbox rows (PROTOCOL.md §8.2) inside the caller's transaction:
    the run's stored channels plus, for gate events, the gate's inline channels. The rows are
    handed to the dispatcher after commit.

    ``resolver_payload`` (default: ``payload``) goes only to channels configured by a principal
    that may resolve gates (``auth.RESOLVER_SCOPES``); every other channel gets ``payload``. This
    is how a ``gate.created`` delivery carries the resolve token to an operator's receiver and
    never to one an agent chose (docs/auth.md)."""
    plain = jsonb(payload)
    trusted = plain if resolver_payload is None else jsonb(resolver_payload)
    trusting = resolver_scopes() if resolver_payload is not None else RESOLVER_SCOPES
    with connection.cursor() as cur:
        cur.execute(
            CHANNEL_SQL,
            {
                "gate_id": gate_id,
                "event_type": event_type,
                "resolver_scopes": list(trusting),
                "resolver_payload": trusted,
                "payload": plain,
                "run_id": run_id,
            },
        )
        ids = [row[0] for row in cur.fetchall()]
        for channel in inline_channels or []:
            events = channel.get("events") or []
            if events and event_type not in events:
                continue
            new_id = delivery_id()
            body = trusted if channel.get(SET_BY) in trusting else plain
            cur.execute(
                """INSERT INTO tb_channel_delivery (id, run_id, channel_id, gate_id, url, secret,
                   event_type, payload, status, attempts, next_attempt_at, created_at)
                   VALUES (%s, %s, NULL, %s, %s, %s, %s, %s, 'pending', 0, now(), now())""",
                [new_id, run_id, gate_id, channel["url"], channel.get("secret"), event_type, body],
            )
            ids.append(new_id)
    after_commit("channel", ids)
