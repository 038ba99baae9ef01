"""Raw-SQL helpers for the hot paths.

Django's psycopg backend loads ``jsonb`` as text; ``fetch_rows`` marks the JSON columns it is
told about as ``RawJson`` (spliced verbatim by ``wire.dumps``), so they reach clients without a
decode/encode round trip, and exposes columns as attributes for the ``wire`` serializers.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pydantic_core
from django.db import connection
from psycopg.types.json import Jsonb

from tidebase_core.exceptions import DomainError, ServerBusy, UnsupportedValue
from tidebase_core.wire import RawJson, dumps

logger = logging.getLogger("tidebase.api")
UNSTORABLE = "a value in the request cannot be stored (out of range, too long, or a NUL character)"
DATABASE_GONE = (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown, psycopg.errors.CannotConnectNow)
"""SQLSTATE 57P01-57P03: the server is shutting down, crashed, or is starting up."""


def operational_answer(exc: Exception, path: str) -> DomainError | None:
    """The 4xx/503 for a database ``OperationalError`` a client can act on, or None (a real
    failure: 500). Shared by the middleware (auth's key lookup is a request's first query),
    ninja's error handler and the step hot path. The database's own text never goes into the
    answer (it quotes the statement); it is logged."""
    cause = exc.__cause__
    answer: DomainError | None = None
    if isinstance(cause, psycopg.errors.LockNotAvailable):
        answer = ServerBusy("lock_timeout")  # e.g. behind the writer of a 60 MB state
    elif isinstance(cause, psycopg.errors.QueryCanceled):
        answer = ServerBusy("statement_timeout")
    elif isinstance(cause, psycopg.errors.ProgramLimitExceeded):  # e.g. an index row too big
        answer = UnsupportedValue(UNSTORABLE)
    elif type(cause).__name__ == "PoolTimeout":  # psycopg_pool: no connection free in time
        answer = ServerBusy("pool_timeout")
    elif isinstance(cause, DATABASE_GONE) or type(cause) is psycopg.OperationalError:
        # The database restarted (its sessions were terminated) or cannot be reached (plain
        # OperationalError: libpq's own connection errors carry no SQLSTATE). The broken
        # connection is replaced on the next request; the client retries after Retry-After.
        answer = ServerBusy("database_unavailable", "the database is unavailable; retry shortly")
    if answer is not None:
        logger.info("api.db_refused", extra={"path": path, "error": str(exc)})
    return answer


STEP_JSON = frozenset({"input", "options", "resume_contract", "output", "error"})
RUN_JSON = frozenset({"input", "metadata", "result", "error"})
EVENT_JSON = frozenset({"payload"})


class Row:
    __slots__ = ("__dict__",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - programming error
        raise AttributeError(name)


def jsonb(value: Any) -> Any:
    """A parameter for a jsonb column, encoded with ``wire.dumps`` (exact for any integer)."""
    return Jsonb(value, dumps=dumps)


def wrap(row: dict[str, Any], json_cols: frozenset[str]) -> Row:
    for col in json_cols:
        raw = row.get(col)
        if raw is not None:
            row[col] = RawJson(raw)
    return Row(row)


def fetch_rows(sql: str, params: Any, json_cols: frozenset[str] = frozenset()) -> list[Row]:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        description = cur.description  # built anew on every access
        if description is None:
            return []
        names = [d[0] for d in description]
        return [wrap(dict(zip(names, rec, strict=True)), json_cols) for rec in cur.fetchall()]


def fetch_one(sql: str, params: Any, json_cols: frozenset[str] = frozenset()) -> Row | None:
    rows = fetch_rows(sql, params, json_cols)
    return rows[0] if rows else None


def fetch_prepared(sql: str, params: Any, json_cols: frozenset[str] = frozenset()) -> list[Row]:
    """Run a hot-path statement as a server-side prepared statement on Django's connection.

    Django's cursors bind parameters client-side, so Postgres parses and plans every
    execution; for the step CTEs planning costs more than executing. A plain psycopg cursor
    with ``prepare=True`` plans once per connection. Only for single statements outside
    ``atomic`` (autocommit): the statement is its own transaction. With PgBouncer, use session
    pooling (or a version that tracks prepared statements)."""
    if connection.in_atomic_block:
        return fetch_rows(sql, params, json_cols)
    connection.ensure_connection()
    raw = connection.connection
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cur:
        cur.execute(sql, params, prepare=True)
        result = cur.pgresult
        if result is None or not result.nfields:
            return []
        # the names straight from the result: ``description`` builds a Column object per field
        names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
        return [wrap(dict(zip(names, rec, strict=True)), json_cols) for rec in cur.fetchall()]


# A transactional logical message gives the statement's implicit transaction an xid and a WAL
# record of its own, so its commit (synchronous_commit on) waits until the WAL is flushed up to
# its commit record: every transaction that committed before it, asynchronous ones included, is
# then on disk. (An xid alone is not enough: a transaction that wrote no WAL commits without a
# flush.) The message is ignored by everything but logical decoding; any role may send one.
FLUSH_BARRIER_SQL = "SELECT set_config('synchronous_commit', 'on', true), pg_logical_emit_message(true, 'tidebase', '')"


def flush_barrier() -> None:
    """Return once everything committed so far is on disk (one round trip and one WAL flush).

    Step begins commit asynchronously (services.steps); a reader that hands their events to a
    client which may resume from them (the SSE stream's ``id:``) calls this first, so no event
    it sent can be lost, and its sequence number reused, by a Postgres crash."""
    fetch_prepared(FLUSH_BARRIER_SQL, ())


def py(value: Any) -> Any:
    """Decode a raw JSON column (or pass a Python value through) when the server must inspect it."""
    if isinstance(value, RawJson):
        return pydantic_core.from_json(str(value))  # exact integers (orjson would round big ones)
    return value
