"""The token/cost ledger (§7.9), and its rollups for the dashboard's usage page.

Every usage record also updates two rollups in the same transaction (docs/decisions.md, "Usage
rollups"): ``tb_usage_daily`` (UTC day x workflow x provider x model) and ``tb_usage_run``
(per-run totals). ``usage_record`` is the only writer of tb_usage besides ``tidebase_seed``, which
rebuilds the rollups with ``usage_rollups_rebuild`` after its bulk load; code that inserts usage
rows any other way must call ``usage_rollup_add`` (per record) or ``usage_rollups_rebuild``."""

from __future__ import annotations

import datetime as dt
import functools
from decimal import ROUND_HALF_UP, Decimal
from types import ModuleType
from typing import Any

import psycopg
from django.db import connection, transaction

from tidebase_core import ids, metrics, wire
from tidebase_core.db import fetch_one, fetch_prepared, jsonb
from tidebase_core.exceptions import InvalidRequest, RunNotFound
from tidebase_core.models import UsageRecord
from tidebase_core.outbox import after_commit
from tidebase_core.services.budgets import budget_spend_rebuild
from tidebase_core.services.cost_figures import cost_figures_rebuild
from tidebase_core.services.lean_sql import channel_outbox_sql, compact, event_insert_sql, event_row, ts_sql

# Usage record in one statement (autocommit: no BEGIN/COMMIT round trips), as the step routes.
#
# ``r`` takes the run row lock first (held to commit): this run's usage writers are serialized
# from there, so ``clock_timestamp()``, read once the lock is held, stamps records in the order
# they reach the rollups. Then the stepId check, the idempotency key (``claim``: a key another
# transaction holds is waited for; once taken, nothing below is written and the caller looks up
# the earlier record), the record, the event (``bump``: the run's event counter), the outbox
# rows, and last the rollups, from the stored row (so rounding is exactly tb_usage's).
#
# The run-total upsert comes before the daily one here: whether this is the run's first record
# (so the run counts in this daily row) must come from the newest committed run-total row, which
# only the upsert sees (a writer of this run that committed while this statement waited for the
# run lock is not in its snapshot). Lock order: run row, run-total row, daily row. Only holders of
# a run's lock ever lock its run-total row, so no two usage writers can wait on each other in a
# cycle; a rollup rebuild takes its SHARE lock on tb_usage before any row lock, and this
# statement its ROW EXCLUSIVE lock when it starts, before any row lock.
#
# ``total`` returns whether it inserted the run-total row (``xmax = 0``: not an update), i.e.
# whether this is the run's first record. ``added`` (the function ``tb_usage_added``, migration 0012)
# adds the cost to the spend of the budgets that have a limit (services.budgets: the workflow's day
# and month budgets, the global day budget, in (scope, workflow) order) and to the record's step
# group in tb_cost_daily (models.costs). It is read by the final SELECT, so it runs before the
# rollup upserts: every usage writer locks run row, budget-spend rows, cost row, run-total row,
# daily row, in that order (one plan), and no two can wait on each other in a cycle. Without a
# limit it writes no spend. The wire form of the record (``usage``, the event's and
# the outbox rows' payload) is built by the caller from the values it sent, as ``wire.usage_out``
# did from the unsaved model; only ``createdAt`` comes from the row.
# How one record is added to an existing rollup row: written once for the one-statement record
# and for ``usage_rollup_add``.
RUN_TOTAL_MERGE = """ON CONFLICT (run_id) DO UPDATE SET
    first_at = LEAST(t.first_at, EXCLUDED.first_at), last_at = GREATEST(t.last_at, EXCLUDED.last_at),
    records = t.records + 1, input_tokens = t.input_tokens + EXCLUDED.input_tokens,
    output_tokens = t.output_tokens + EXCLUDED.output_tokens,
    total_tokens = t.total_tokens + EXCLUDED.total_tokens, cost_usd = t.cost_usd + EXCLUDED.cost_usd"""
DAILY_MERGE = """ON CONFLICT (day, workflow, provider, model) DO UPDATE SET
    records = d.records + 1, runs = d.runs + EXCLUDED.runs,
    input_tokens = d.input_tokens + EXCLUDED.input_tokens, output_tokens = d.output_tokens + EXCLUDED.output_tokens,
    total_tokens = d.total_tokens + EXCLUDED.total_tokens, cost_usd = d.cost_usd + EXCLUDED.cost_usd"""

USAGE_RECORD_SQL = compact(
    f"""
WITH r AS (SELECT id, workflow_name FROM tb_run WHERE id = %(run)s FOR NO KEY UPDATE),
ok AS (
  SELECT r.id, r.workflow_name FROM r
  WHERE %(step)s::text IS NULL OR EXISTS (SELECT 1 FROM tb_step s WHERE s.id = %(step)s::text AND s.run_id = r.id)
),
claim AS (
  INSERT INTO tb_idempotency_key (scope, key, resource_id, created_at)
  SELECT %(scope)s::text, %(key)s::text, %(id)s::text, now() FROM ok WHERE %(key)s::text IS NOT NULL
  ON CONFLICT (scope, key) DO NOTHING
  RETURNING 1
),
go AS (SELECT ok.* FROM ok WHERE %(key)s::text IS NULL OR EXISTS (SELECT FROM claim)),
rec AS (
  INSERT INTO tb_usage (id, run_id, step_id, kind, provider, model, label, quantity, unit, input_tokens,
                        output_tokens, total_tokens, cost_usd, cost_source, metadata, created_at)
  SELECT %(id)s::text, go.id, %(step)s::text, %(kind)s::text, %(provider)s::text, %(model)s::text, %(label)s::text,
         %(quantity)s::numeric, %(unit)s::text, %(input_tokens)s::bigint, %(output_tokens)s::bigint,
         %(total_tokens)s::bigint, %(cost_usd)s::numeric, %(cost_source)s::text, %(metadata)s,
         COALESCE(%(at)s::timestamptz, clock_timestamp())
  FROM go
  RETURNING id, run_id, kind, label, provider, model, created_at,
            (created_at AT TIME ZONE 'UTC')::date AS day,
            COALESCE(input_tokens, 0) AS input_tokens, COALESCE(output_tokens, 0) AS output_tokens,
            COALESCE(total_tokens, COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)) AS total_tokens,
            COALESCE(cost_usd, 0) AS cost_usd
),
body AS (
  SELECT jsonb_build_object('usage', %(usage)s || jsonb_build_object('createdAt', {ts_sql("created_at")})) AS payload
  FROM rec
),
bump AS (
  UPDATE tb_run t SET event_seq = t.event_seq + 1 FROM rec WHERE t.id = rec.run_id RETURNING t.id, t.event_seq
),
ev AS ({
        event_insert_sql(
            event_row(
                run_id="bump.id",
                seq="bump.event_seq",
                type="'usage.recorded'",
                payload="body.payload",
                sources="bump, body",
            )
        )
    }),
ch AS ({
        channel_outbox_sql(
            event_type="usage.recorded", payload="body.payload", run_id="rec.run_id", sources="rec, body"
        )
    }),
total AS (
  INSERT INTO tb_usage_run AS t (run_id, workflow, first_at, last_at, records, input_tokens, output_tokens,
                                 total_tokens, cost_usd)
  SELECT rec.run_id, go.workflow_name, rec.created_at, rec.created_at, 1, rec.input_tokens, rec.output_tokens,
         rec.total_tokens, rec.cost_usd
  FROM rec, go
  {RUN_TOTAL_MERGE}
  RETURNING t.xmax = 0 AS first
),
daily AS (
  INSERT INTO tb_usage_daily AS d (day, workflow, provider, model, records, runs, input_tokens, output_tokens,
                                   total_tokens, cost_usd)
  SELECT rec.day, go.workflow_name, rec.provider, rec.model, 1, total.first::int, rec.input_tokens,
         rec.output_tokens, rec.total_tokens, rec.cost_usd
  FROM rec, go, total
  {DAILY_MERGE}
),
added AS (
  SELECT tb_usage_added(go.workflow_name, %(step)s::text, rec.kind, rec.label, rec.provider, rec.day, rec.cost_usd) AS n
  FROM rec, go
)
SELECT r.id IS NOT NULL AS run_found, ok.id IS NOT NULL AS step_ok, rec.created_at,
       (SELECT array_agg(id) FROM ch) AS deliveries, (SELECT n FROM added) AS added
FROM (SELECT 1) one
LEFT JOIN r ON true
LEFT JOIN ok ON true
LEFT JOIN rec ON true
""",
    tight=True,
)


def usage_record(
    *,
    run_id: str,
    step_id: str | None = None,
    kind: str = "custom",
    provider: str | None = None,
    model: str | None = None,
    label: str | None = None,
    quantity: Decimal | None = None,
    unit: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
    cost_usd: Decimal | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency: tuple[str, str] | None = None,
    at: dt.datetime | None = None,
) -> UsageRecord:
    """Append a usage row; ``totalTokens`` defaults to input + output when either is given.
    Raises RunNotFound, or InvalidRequest for a ``stepId`` that is not a step of this run.
    Emits ``usage.recorded`` and its channel event, and adds the record to the rollups: one
    statement, committed (synchronously) before this returns when called outside a transaction.
    With ``idempotency=(scope, key)`` a retried request returns the record the first one made,
    so a retry never double-counts (neither in tb_usage nor in the rollups).

    ``at`` stamps the record (seeds and tests place records on chosen instants); by default the
    database's clock, read once the run is locked.

    Without ``cost_usd`` but with tokens, provider and model, the cost is computed with
    genai-prices (``price_usage``) and ``cost_source`` says so; the caller's cost is never
    replaced."""
    if total_tokens is None and (input_tokens is not None or output_tokens is not None):
        total_tokens = (input_tokens or 0) + (output_tokens or 0)
    cost_source: str | None = None
    if cost_usd is not None:
        cost_source = COST_SOURCE_CALLER
    else:
        # Priced here, before the statement: the lookup holds no lock and no transaction open.
        cost_usd, cost_source = price_usage(
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            metadata=metadata,
            at=at,
        )
    record = UsageRecord(
        id=ids.usage_id(),
        run_id=run_id,
        step_id=step_id,
        kind=kind,
        provider=provider,
        model=model,
        label=label,
        quantity=quantity,
        unit=unit,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cost_usd=cost_usd,
        cost_source=cost_source,
        metadata=metadata or {},
    )
    usage = wire.usage_out(record)
    del usage["createdAt"]  # the row's, added by the statement
    row = fetch_prepared(
        USAGE_RECORD_SQL,
        {
            "run": run_id,
            "step": step_id,
            "scope": idempotency[0] if idempotency else None,
            "key": idempotency[1] if idempotency else None,
            "id": record.id,
            "kind": kind,
            "provider": provider,
            "model": model,
            "label": label,
            "quantity": quantity,
            "unit": unit,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": total_tokens,
            "cost_usd": cost_usd,
            "cost_source": cost_source,
            "metadata": jsonb(record.metadata),
            "at": at,
            "usage": jsonb(usage),
        },
    )[0]
    if not row.run_found:
        raise RunNotFound()
    if not row.step_ok:
        raise InvalidRequest("stepId is not a step of this run", field="stepId")
    if row.created_at is None:  # the idempotency key was taken: that request has committed
        assert idempotency is not None
        return UsageRecord.objects.get(id=_claimed(*idempotency))
    after_commit("channel", row.deliveries or [])
    record.created_at = row.created_at
    metrics.usage_recorded(record)
    return record


COST_SOURCE_CALLER = "caller"
"""``cost_source`` of a record whose ``costUsd`` the agent sent."""

MAX_COMPUTED_COST = Decimal(10**9)
"""The largest cost the server fills in: what the wire accepts from callers (``UsageIn.costUsd``),
well inside ``tb_usage.cost_usd``'s numeric(20, 10), so no token count can make the write fail."""

_COST_SCALE = Decimal("1E-10")  # tb_usage.cost_usd's scale, rounded as Postgres rounds numerics

# Cache token counts the SDK puts in a record's metadata (``tidebase.pydantic_ai``), with their
# wire spellings, and the genai-prices usage field each one is.
_CACHE_KEYS = (
    ("cache_read_tokens", "cacheReadTokens"),
    ("cache_write_tokens", "cacheWriteTokens"),
)


@functools.cache
def _genai_prices() -> ModuleType:
    """Imported on first use: loading its price tables takes about 0.25 s, which processes that
    never price a record (workers, management commands) should not pay at start-up."""
    import genai_prices

    return genai_prices


def price_usage(
    *,
    provider: str | None,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    metadata: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> tuple[Decimal | None, str | None]:
    """The cost of a record that came without one, from genai-prices' bundled price tables (no
    network) at the record's time, and its ``cost_source``; ``(None, None)`` when it cannot be
    priced: no tokens, no provider or model, or a provider or model genai-prices does not know.
    Never raises: a missing price must not lose the usage record.

    ``input_tokens`` counts cached tokens too (as Pydantic AI and genai-prices count them); cache
    read and write counts come from the metadata, where the SDK puts them."""
    if not provider or not model or (input_tokens is None and output_tokens is None):
        return None, None
    values: dict[str, int] = {"input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0}
    for field, camel in _CACHE_KEYS:
        count = (metadata or {}).get(field, (metadata or {}).get(camel))
        # A count that could not be part of the input is ignored rather than trusted.
        if type(count) is int and 0 <= count <= values["input_tokens"]:
            values[field] = count
    try:
        prices = _genai_prices()
        calc = prices.calc_price(
            prices.Usage(**values),
            model,
            provider_id=provider,
            genai_request_timestamp=at or dt.datetime.now(dt.UTC),
        )
        cost = Decimal(calc.total_price).quantize(_COST_SCALE, rounding=ROUND_HALF_UP)
    except Exception:  # LookupError for an unknown provider or model; anything else is no price too
        return None, None
    if not 0 <= cost <= MAX_COMPUTED_COST:
        return None, None
    return cost, f"genai-prices {prices.__version__}"


def _claimed(scope: str, key: str) -> str:
    found = fetch_one("SELECT resource_id FROM tb_idempotency_key WHERE scope = %s AND key = %s", [scope, key])
    if found is None:  # pragma: no cover - keys are only deleted long after their retries
        raise RunNotFound()
    return str(found.resource_id)


# One record into both rollups, in one statement, read back from the stored row (so the values
# are exactly what tb_usage holds: rounded to its scale, tokens by the dashboard's rule). Rows are
# locked in USAGE_RECORD_SQL's order: budget-spend rows and cost row (``added``), run-total row
# (``total``), daily row. The daily insert (the statement's own) reads ``total``, whose one-time
# filter ``EXISTS (SELECT FROM added)`` runs ``added`` to completion before it inserts: a CTE runs
# when a query first reads it. ``runs`` counts the run in the daily row of its first record, from
# whether ``total`` inserted the run-total row, as the record statement does (the caller holds the
# run row lock, which serializes this run's usage writers). tests/core/test_budgets.py checks the
# order: it holds one row and looks at which of the others the waiting statement has locked.
ROLLUP_ADD_SQL = f"""
WITH rec AS MATERIALIZED (
    SELECT u.run_id, r.workflow_name AS workflow, (u.created_at AT TIME ZONE 'UTC')::date AS day,
           u.provider, u.model, u.created_at, u.step_id, u.kind, u.label,
           COALESCE(u.input_tokens, 0) AS input_tokens, COALESCE(u.output_tokens, 0) AS output_tokens,
           COALESCE(u.total_tokens, COALESCE(u.input_tokens, 0) + COALESCE(u.output_tokens, 0)) AS total_tokens,
           COALESCE(u.cost_usd, 0) AS cost_usd
    FROM tb_usage u JOIN tb_run r ON r.id = u.run_id
    WHERE u.id = %s
), added AS (
    SELECT tb_usage_added(workflow, step_id, kind, label, provider, day, cost_usd) AS n FROM rec
), total AS (
    INSERT INTO tb_usage_run AS t (run_id, workflow, first_at, last_at, records, input_tokens, output_tokens,
                                   total_tokens, cost_usd)
    SELECT run_id, workflow, created_at, created_at, 1, input_tokens, output_tokens, total_tokens, cost_usd
    FROM rec
    WHERE EXISTS (SELECT FROM added)
    {RUN_TOTAL_MERGE}
    RETURNING t.xmax = 0 AS first
)
INSERT INTO tb_usage_daily AS d (day, workflow, provider, model, records, runs, input_tokens, output_tokens,
                                 total_tokens, cost_usd)
SELECT rec.day, rec.workflow, rec.provider, rec.model, 1, total.first::int, rec.input_tokens, rec.output_tokens,
       rec.total_tokens, rec.cost_usd
FROM rec, total
{DAILY_MERGE}
"""


def usage_rollup_add(*, usage_id: str) -> None:
    """Add one stored usage record to both rollups, inside the caller's transaction. Call it once
    per record, holding the record's run row lock (``usage_record`` does the same, and its own
    rollup upserts, in its one statement).

    A server-side prepared statement (planned once per connection: planning the two upserts cost
    as much as running them, measured in-process at about 0.35 ms of 0.7 ms). Unlike
    ``db.fetch_prepared`` it runs inside the caller's transaction, on the same connection."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cur:
        cur.execute(ROLLUP_ADD_SQL, [usage_id], prepare=True)


# ---- rebuild and check ------------------------------------------------------------------------

_TOKENS = "COALESCE(u.total_tokens, COALESCE(u.input_tokens, 0) + COALESCE(u.output_tokens, 0))"

_RUN_COLUMNS = "run_id, workflow, first_at, last_at, records, input_tokens, output_tokens, total_tokens, cost_usd"

# Runs with a record at or after %(since)s. A full rebuild or check (no ``since``) leaves these
# filters out: over millions of records each costs a pass over tb_usage.
_TOUCHED_RUNS = "(SELECT run_id FROM tb_usage WHERE created_at >= %(since)s)"


def _runs_from_usage(full: bool) -> str:
    """The totals of every touched run, from all of its records."""
    where = "" if full else f"WHERE u.run_id IN {_TOUCHED_RUNS}"
    return f"""
SELECT u.run_id, r.workflow_name AS workflow, min(u.created_at), max(u.created_at), count(*),
       COALESCE(sum(u.input_tokens), 0), COALESCE(sum(u.output_tokens), 0), COALESCE(sum({_TOKENS}), 0),
       COALESCE(sum(u.cost_usd), 0)
FROM tb_usage u JOIN tb_run r ON r.id = u.run_id
{where}
GROUP BY u.run_id, r.workflow_name
"""


_DAILY_COLUMNS = "day, workflow, provider, model, records, runs, input_tokens, output_tokens, total_tokens, cost_usd"


def _daily_from_usage(full: bool) -> str:
    """The daily rows from %(since)s on. A run counts in the row of its first record (earliest
    created_at, then id), as on write."""
    touched = "" if full else f"WHERE run_id IN {_TOUCHED_RUNS}"
    where = "" if full else "WHERE u.created_at >= %(since)s"
    return f"""
SELECT (u.created_at AT TIME ZONE 'UTC')::date AS day, r.workflow_name AS workflow, u.provider, u.model, count(*),
       count(f.id),
       COALESCE(sum(u.input_tokens), 0), COALESCE(sum(u.output_tokens), 0), COALESCE(sum({_TOKENS}), 0),
       COALESCE(sum(u.cost_usd), 0)
FROM tb_usage u
JOIN tb_run r ON r.id = u.run_id
LEFT JOIN (SELECT DISTINCT ON (run_id) id FROM tb_usage {touched} ORDER BY run_id, created_at, id) f ON f.id = u.id
{where}
GROUP BY 1, 2, 3, 4
"""


def _rebuild_sql(full: bool) -> list[str]:
    return [
        "DELETE FROM tb_usage_run" + ("" if full else f" WHERE run_id IN {_TOUCHED_RUNS}"),
        f"INSERT INTO tb_usage_run ({_RUN_COLUMNS}) {_runs_from_usage(full)}",
        "DELETE FROM tb_usage_daily" + ("" if full else " WHERE day >= %(since_day)s"),
        f"INSERT INTO tb_usage_daily ({_DAILY_COLUMNS}) {_daily_from_usage(full)}",
    ]


def _check_sql(full: bool) -> dict[str, str]:
    """How many keys (runs, or day x workflow x provider x model) differ between the rollups and
    a fresh GROUP BY over tb_usage, whichever side has the row."""
    runs, daily = _runs_from_usage(full), _daily_from_usage(full)
    touched = "" if full else f"WHERE run_id IN {_TOUCHED_RUNS}"
    recent = "" if full else f"WHERE last_at >= %(since)s OR run_id IN {_TOUCHED_RUNS}"
    days = "" if full else "WHERE day >= %(since_day)s"
    return {
        "tb_usage_run": f"""
            SELECT count(*) FROM (
                SELECT run_id FROM ({runs} EXCEPT SELECT {_RUN_COLUMNS} FROM tb_usage_run {touched}) missing
                UNION
                SELECT run_id FROM (SELECT {_RUN_COLUMNS} FROM tb_usage_run {recent} EXCEPT {runs}) extra
            ) differing""",
        "tb_usage_daily": f"""
            SELECT count(*) FROM (
                SELECT day, workflow, provider, model FROM (
                    {daily} EXCEPT SELECT {_DAILY_COLUMNS} FROM tb_usage_daily {days}
                ) missing
                UNION
                SELECT day, workflow, provider, model FROM (
                    SELECT {_DAILY_COLUMNS} FROM tb_usage_daily {days} EXCEPT {daily}
                ) extra
            ) differing""",
    }


def _params(since: dt.date | None) -> dict[str, Any]:
    day = since or dt.date.min
    return {"since": dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC), "since_day": day}


def _execute(cur: Any, sql: str, params: dict[str, Any]) -> None:
    cur.execute(sql, params if "%(" in sql else None)


def usage_rollups_rebuild(*, since: dt.date | None = None) -> dict[str, int]:
    """Recompute the rollups from tb_usage: the daily rows of ``since`` (a UTC day) and later, and
    the totals of every run with a record on or after it; everything when ``since`` is None.
    Returns the number of rows written per table.

    Takes a SHARE lock on tb_usage until the caller's transaction ends: usage writes wait (the
    ones in flight commit first), so nothing is counted twice or missed. The rebuilt days are
    recomputed from the records that remain: usage of runs deleted since leaves the ledger."""
    params = _params(since)
    written: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = 0")
        cur.execute("LOCK TABLE tb_usage IN SHARE MODE")
        for sql in _rebuild_sql(full=since is None):
            _execute(cur, sql, params)
            if sql.startswith("INSERT"):
                written[sql.split()[2]] = cur.rowcount
        written["tb_budget_spend"] = budget_spend_rebuild()  # the current periods, from the daily rows
        written.update({f"tb_cost_daily:{k}": n for k, n in cost_figures_rebuild(cur, params).items()})
    return written


def usage_rollups_check(*, since: dt.date | None = None) -> dict[str, int]:
    """How many rollup rows from ``since`` on differ from a GROUP BY over tb_usage (missing, extra
    or with other sums), per table: 0 and 0 when consistent. Daily rows holding usage of deleted
    runs count as differences."""
    params = _params(since)
    out: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = 0")
        for table, sql in _check_sql(full=since is None).items():
            _execute(cur, sql, params)
            row = cur.fetchone()
            out[table] = int(row[0]) if row else 0
    return out
