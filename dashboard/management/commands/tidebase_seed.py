"""Seed a database with a realistic, large operator workload, fast (set-based SQL).

manage.py tidebase_seed --runs 1000000 --usage 5000000              # ~2-4 min on 2 cores
manage.py tidebase_seed --runs 50000 --usage 200000 --sample-runs 2000
manage.py tidebase_seed ... --force                                  # TRUNCATE tb_run CASCADE first

Everything is generated in Postgres with ``INSERT ... SELECT FROM generate_series`` in batches,
pseudo-random but deterministic (``hashint4``): ids are ``run_`` + md5 (32 hex, like real ids);
runs are spread evenly over ``--days`` (newest an hour ago) with mostly terminal statuses and a
tail of active ones; workflows and queues are skewed; usage records (LLM calls across providers
and models, with token counts and Decimal costs, plus some priced tool calls) belong to runs and
follow them in time; a few thousand gates are pending (their runs running), some percent of runs
have a decided gate; a sample of runs has steps and an event log. The usage rollups
(tb_usage_daily, tb_usage_run) are rebuilt from the loaded records in one GROUP BY each.

The whole load is one transaction: secondary indexes of the loaded tables are dropped and rebuilt
at the end (much faster than maintaining them row by row), and foreign-key triggers are skipped
when the role may (``session_replication_role = replica``; the data is consistent by construction).
A failure rolls everything back, indexes included. Then ``VACUUM (ANALYZE)``: fresh statistics and
a visibility map, as autovacuum would leave them.

Refuses to touch a database that already has runs unless ``--force``, which TRUNCATEs ``tb_run``
and everything that references it (steps, gates, events, usage, deliveries, ...).
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from tidebase_core.services.usage import usage_rollups_rebuild

LOADED_TABLES = ("tb_run", "tb_usage", "tb_gate", "tb_step", "tb_event", "tb_usage_daily", "tb_usage_run")

WORKFLOWS = [
    # repeated names are the skew: triage is a third of the traffic
    *["triage"] * 6,
    *["support-reply"] * 4,
    *["code-review"] * 3,
    *["invoice-extract"] * 2,
    *["lead-enrich"] * 2,
    "doc-summarize",
    "nightly-report",
    "refund-approval",
    "contract-redline",
    "sub",
]
QUEUES = ["default", "default", "batch", "priority"]
# provider, model, USD per 1M input tokens, USD per 1M output tokens
MODELS = [
    ("openai", "gpt-4o", "2.50", "10.00"),
    ("openai", "gpt-4o", "2.50", "10.00"),
    ("openai", "gpt-4o-mini", "0.15", "0.60"),
    ("openai", "gpt-4o-mini", "0.15", "0.60"),
    ("openai", "gpt-4o-mini", "0.15", "0.60"),
    ("anthropic", "claude-3-5-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-3-5-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-3-5-haiku", "0.80", "4.00"),
    ("google", "gemini-1.5-pro", "1.25", "5.00"),
    ("google", "gemini-1.5-flash", "0.075", "0.30"),
    ("mistral", "mistral-large", "2.00", "6.00"),
]
FAILURES = ["timeout", "provider_error", "validation", "crash", "lease_lost"]
ACTORS = ["alice", "bob", "carol", "dan", "erin"]


def _pct(sql: str) -> str:
    """The SQL below writes modulo as `` % ``; the driver's placeholders are ``%(name)s``."""
    return sql.replace(" % ", " %% ")


def _array(values: list[str]) -> str:
    return "(ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[])"


# Run g (1..n) is created at T0 + (g - 1) * step: evenly over the window, so heap order follows
# created_at as in a real append-only table. Everything else is a hash of g.
RUNS_SQL = """
INSERT INTO tb_run (id, workflow_name, input, metadata, status, result, error, attempt, event_seq,
                    queue_name, priority, max_attempts, failure_class, created_at, updated_at,
                    completed_at, run_at, claimed_at, cancelled_at, cancel_reason, cancel_actor)
SELECT 'run_' || md5('seed:run:' || g), wf, jsonb_build_object('ticket', g, 'source', 'seed'),
       '{{"seed": true}}'::jsonb, st,
       CASE WHEN st = 'completed' THEN jsonb_build_object('ok', true) END,
       CASE WHEN st = 'failed' THEN jsonb_build_object('message', 'step failed: ' || fc) END,
       1 + (h2 % 3 = 0)::int, 0, q, 0, 1 + (q IS NOT NULL)::int * 2,
       CASE WHEN st = 'failed' THEN fc END,
       c, CASE WHEN st IN ('completed', 'failed', 'cancelled') THEN c + dur ELSE c END,
       CASE WHEN st IN ('completed', 'failed', 'cancelled') THEN c + dur END,
       CASE WHEN q IS NOT NULL THEN c END,
       CASE WHEN q IS NOT NULL AND st <> 'queued' THEN c + interval '1 second' END,
       CASE WHEN st = 'cancelled' THEN c + dur END,
       CASE WHEN st = 'cancelled' THEN 'cancelled from the dashboard' END,
       CASE WHEN st = 'cancelled' THEN 'user:' || {actors}[1 + h1 % {n_actors}] END
FROM (
    SELECT g, h1, h2, c, dur, fc,
           {workflows}[1 + h1 % {n_workflows}] AS wf,
           CASE WHEN (h1 / 13) % 10 < 3 THEN {queues}[1 + h1 % {n_queues}] END AS q,
           CASE WHEN g > %(active_from)s THEN (ARRAY['pending', 'queued', 'running', 'running'])[1 + h2 % 4]
                WHEN h2 % 100 < 91 THEN 'completed'
                WHEN h2 % 100 < 97 THEN 'failed'
                ELSE 'cancelled' END AS st
    FROM (
        SELECT g, hashint4(g) & 2147483647 AS h1, hashint4(g + 104729) & 2147483647 AS h2,
               %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond' AS c,
               (5 + (hashint4(g + 7) & 2147483647) % 600) * interval '1 second' AS dur,
               {failures}[1 + (hashint4(g + 3) & 2147483647) % {n_failures}] AS fc
        FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
    ) base
) r
"""

# Usage record j (1..u) belongs to run 1 + (j - 1) * n / u and is written shortly after it starts.
USAGE_SQL = """
INSERT INTO tb_usage (id, run_id, step_id, kind, provider, model, label, quantity, unit,
                      input_tokens, output_tokens, total_tokens, cost_usd, metadata, created_at)
SELECT 'usage_' || md5('seed:usage:' || j), 'run_' || md5('seed:run:' || g), NULL,
       CASE WHEN tool THEN 'tool' ELSE 'llm' END,
       CASE WHEN tool THEN 'serpapi' ELSE {providers}[m] END,
       CASE WHEN tool THEN NULL ELSE {models}[m] END,
       CASE WHEN tool THEN 'web search' END,
       CASE WHEN tool THEN 1 END, CASE WHEN tool THEN 'call' END,
       CASE WHEN tool THEN NULL ELSE tin END, CASE WHEN tool THEN NULL ELSE tout END,
       CASE WHEN tool THEN NULL ELSE tin + tout END,
       CASE WHEN tool THEN 0.005
            ELSE round((tin * {pin}[m] + tout * {pout}[m]) / 1000000.0, 10) END,
       '{{}}'::jsonb,
       %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond'
           + ((j % 7) * 20 + h % 20) * interval '1 second'
FROM (
    SELECT j, g, h, h % 100 < 5 AS tool, 200 + h % 6000 AS tin, 40 + (h / 7) % 1200 AS tout,
           1 + (h / 11) % {n_models} AS m
    FROM (
        SELECT j, 1 + ((j - 1)::bigint * %(n)s / %(u)s)::int AS g, hashint4(j) & 2147483647 AS h
        FROM generate_series(%(lo)s::int, %(hi)s::int) AS j
    ) base
) x
"""

DECIDED_GATES_SQL = """
INSERT INTO tb_gate (id, run_id, name, prompt, data, status, decision, actor, decided_by,
                     decision_payload, channels, resolve_token, created_at, updated_at, resolved_at)
SELECT 'gate_' || md5('seed:gate:' || g), 'run_' || md5('seed:run:' || g), 'approve',
       'Ship the change for ticket #' || g || '?', jsonb_build_object('ticket', g), st,
       CASE st WHEN 'approved' THEN 'approve' WHEN 'rejected' THEN 'reject' END,
       a, 'user:' || a, '{{}}'::jsonb, '[]'::jsonb, md5('seed:token:' || g), c, c + wait, c + wait
FROM (
    SELECT g, CASE WHEN (h / 1000) % 100 < 80 THEN 'approved' WHEN (h / 1000) % 100 < 95 THEN 'rejected'
                   ELSE 'canceled' END AS st,
           {actors}[1 + (h / 7) % {n_actors}] AS a,
           %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond' + interval '2 seconds' AS c,
           (30 + h % 7200) * interval '1 second' AS wait
    FROM (SELECT g, hashint4(g + 31337) & 2147483647 AS h FROM generate_series(%(lo)s::int, %(hi)s::int) AS g) b
    WHERE h % 1000 < %(per_mille)s AND g <= %(active_from)s
) x
"""

# Pending gate k sits on run n - (k - 1) * spread / p: spread over the newest ~30% of runs
# (some approvals wait for weeks). Those runs are made 'running' afterwards.
PENDING_GATES_SQL = """
INSERT INTO tb_gate (id, run_id, name, prompt, data, status, channels, resolve_token, timeout_at,
                     created_at, updated_at)
SELECT 'gate_' || md5('seed:pending:' || g), 'run_' || md5('seed:run:' || g), 'approve-release',
       'Release the fix for ticket #' || g || '?', jsonb_build_object('ticket', g, 'diff', '+12 -3'),
       'pending', '[]'::jsonb, md5('seed:ptoken:' || g), c + interval '30 days', c, c
FROM (
    SELECT DISTINCT g,
           %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond' + interval '3 seconds' AS c
    FROM (SELECT %(n)s - ((k - 1)::bigint * %(spread)s / %(p)s)::int AS g
          FROM generate_series(1, %(p)s) AS k) s
    WHERE g >= 1
) x
"""

PENDING_RUNS_SQL = """
UPDATE tb_run r SET status = 'running', completed_at = NULL, result = NULL, error = NULL,
       failure_class = NULL, cancelled_at = NULL, cancel_reason = NULL, cancel_actor = NULL,
       updated_at = g.created_at
FROM tb_gate g WHERE g.status = 'pending' AND g.run_id = r.id
"""

# Sample run k is run n - (k - 1) * n / s: across the whole window, the newest included.
SAMPLE_SQL = "SELECT DISTINCT %(n)s - ((k - 1)::bigint * %(n)s / %(s)s)::int AS g FROM generate_series(1, %(s)s) AS k"

STEPS_SQL = """
INSERT INTO tb_step (id, run_id, name, input_hash, input, options, resume_contract, status, output,
                     lease_fence, attempt, started_at, completed_at, created_at, updated_at)
SELECT 'step_' || md5('seed:step:' || g || ':' || i), 'run_' || md5('seed:run:' || g),
       'step-' || i, md5(g || ':' || i), jsonb_build_object('i', i), '{{}}'::jsonb,
       '{{"checkpointInvariant": "idempotent"}}'::jsonb, 'completed', jsonb_build_object('i', i, 'ok', true),
       1, 1, c + i * interval '20 seconds', c + i * interval '20 seconds' + interval '15 seconds',
       c + i * interval '20 seconds', c + i * interval '20 seconds' + interval '15 seconds'
FROM (
    SELECT g, %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond' AS c
    FROM ({sample}) s
) r, generate_series(0, %(k)s - 1) AS i
"""

EVENTS_SQL = """
INSERT INTO tb_event (run_id, seq, type, payload, created_at)
SELECT 'run_' || md5('seed:run:' || g), e,
       CASE WHEN e = 1 THEN 'run.created'
            WHEN e = 2 * %(k)s + 2 THEN 'run.completed'
            WHEN e % 2 = 0 THEN 'step.started' ELSE 'step.completed' END,
       jsonb_build_object('seq', e), c + e * interval '10 seconds'
FROM (
    SELECT g, %(t0)s::timestamptz + (g - 1)::bigint * %(step)s * interval '1 microsecond' AS c
    FROM ({sample}) s
) r, generate_series(1, 2 * %(k)s + 2) AS e
"""

EVENT_SEQ_SQL = """
UPDATE tb_run SET event_seq = 2 * %(k)s + 2 WHERE id IN (SELECT 'run_' || md5('seed:run:' || g) FROM ({sample}) s)
"""


class Command(BaseCommand):
    help = "Seed runs, usage, gates, steps and events with set-based SQL (for scale tests and benchmarks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=1_000_000)
        parser.add_argument("--usage", type=int, default=5_000_000, help="usage records, spread over the runs")
        parser.add_argument("--gates", type=int, default=3000, help="pending gates (their runs are running)")
        parser.add_argument("--decided-gates-per-mille", type=int, default=50, help="runs with a decided gate, ‰")
        parser.add_argument("--sample-runs", type=int, default=10_000, help="runs that get steps and events")
        parser.add_argument("--steps-per-run", type=int, default=5)
        parser.add_argument("--days", type=int, default=90, help="the window the runs are spread over")
        parser.add_argument("--batch", type=int, default=250_000, help="rows per INSERT statement")
        parser.add_argument("--force", action="store_true", help="TRUNCATE tb_run CASCADE first if it has rows")
        parser.add_argument("--no-vacuum", action="store_true", help="skip the final VACUUM (ANALYZE)")

    def handle(self, *args: Any, **opts: Any) -> None:
        self._verbosity = int(opts["verbosity"])
        n, u = int(opts["runs"]), int(opts["usage"])
        if n < 1 or u < 0:
            raise CommandError("--runs must be >= 1 and --usage >= 0")
        started = time.monotonic()
        with connection.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM tb_run)")
            row = cur.fetchone()
        if row and row[0]:
            if not opts["force"]:
                raise CommandError("tb_run already has rows: pass --force to TRUNCATE tb_run CASCADE and reseed")
            self.stderr.write("--force: truncating tb_run and every table that references it")
            with connection.cursor() as cur:
                cur.execute("TRUNCATE tb_run CASCADE")
        days = max(1, int(opts["days"]))
        step_us = days * 86_400_000_000 // n  # microseconds between consecutive runs
        with connection.cursor() as cur:
            cur.execute("SELECT now() - interval '1 hour' - %s * interval '1 microsecond'", [(n - 1) * step_us])
            t0 = cur.fetchone()[0]
        base = {
            "n": n,
            "u": max(u, 1),
            "t0": t0,
            "step": step_us,
            "active_from": n - max(1, n // 50),  # the newest 2% are pending/queued/running
        }
        fmt = {
            "workflows": _array(WORKFLOWS),
            "n_workflows": len(WORKFLOWS),
            "queues": _array(QUEUES),
            "n_queues": len(QUEUES),
            "failures": _array(FAILURES),
            "n_failures": len(FAILURES),
            "actors": _array(ACTORS),
            "n_actors": len(ACTORS),
            "providers": _array([m[0] for m in MODELS]),
            "models": _array([m[1] for m in MODELS]),
            "pin": "(ARRAY[" + ",".join(m[2] for m in MODELS) + "]::numeric[])",
            "pout": "(ARRAY[" + ",".join(m[3] for m in MODELS) + "]::numeric[])",
            "n_models": len(MODELS),
        }
        sample = min(n, max(0, int(opts["sample_runs"])))
        k = max(0, int(opts["steps_per_run"]))
        batch = max(1000, int(opts["batch"]))
        timings: dict[str, float] = {}

        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
            privileged = bool(cur.fetchone()[0])
            if privileged:
                cur.execute("SET LOCAL session_replication_role = replica")  # no FK triggers
            cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
            cur.execute("SET LOCAL synchronous_commit = off")
            dropped = self._drop_secondary_indexes(cur)

            def timed(name: str, sql: str, params: dict[str, Any], lo: int, hi: int) -> None:
                t = time.monotonic()
                for start in range(lo, hi + 1, batch):
                    cur.execute(_pct(sql), {**params, "lo": start, "hi": min(hi, start + batch - 1)})
                    self._progress(name, min(hi, start + batch - 1) - lo + 1, hi - lo + 1, started)
                timings[name] = round(time.monotonic() - t, 1)

            timed("runs", RUNS_SQL.format(**fmt), base, 1, n)
            if u:
                timed("usage", USAGE_SQL.format(**fmt), base, 1, u)
            timed(
                "decided gates",
                DECIDED_GATES_SQL.format(**fmt),
                {**base, "per_mille": opts["decided_gates_per_mille"]},
                1,
                n,
            )
            p = max(0, int(opts["gates"]))
            if p:
                t = time.monotonic()
                cur.execute(_pct(PENDING_GATES_SQL), {**base, "p": p, "spread": max(p, int(n * 0.3))})
                cur.execute(PENDING_RUNS_SQL)
                timings["pending gates"] = round(time.monotonic() - t, 1)
            if sample and k:
                t = time.monotonic()
                sample_sql = SAMPLE_SQL
                params = {**base, "s": sample, "k": k}
                cur.execute(_pct(STEPS_SQL.format(sample=sample_sql)), params)
                cur.execute(_pct(EVENTS_SQL.format(sample=sample_sql)), params)
                cur.execute(EVENT_SEQ_SQL.format(sample=sample_sql), params)
                timings["steps and events"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            usage_rollups_rebuild()  # set-based, in this transaction; replaces any earlier rollup rows
            timings["usage rollups"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            for ddl in dropped:
                cur.execute(ddl)
            timings["indexes"] = round(time.monotonic() - t, 1)
            if privileged:
                cur.execute("SET LOCAL session_replication_role = origin")
        if not opts["no_vacuum"]:
            t = time.monotonic()
            with connection.cursor() as cur:
                for table in LOADED_TABLES:
                    cur.execute(f"VACUUM (ANALYZE) {table}")
            timings["vacuum analyze"] = round(time.monotonic() - t, 1)
        counts = self._counts()
        total = round(time.monotonic() - started, 1)
        self.stdout.write(
            f"seeded {counts} in {total}s ({', '.join(f'{k}: {v}s' for k, v in timings.items())})"
            + ("" if privileged else " [FK triggers were on: not a superuser]")
        )

    def _drop_secondary_indexes(self, cur: Any) -> list[str]:
        """Drop the loaded tables' indexes that back no constraint; return the DDL that rebuilds them."""
        cur.execute(
            """
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index i
            JOIN pg_class t ON t.oid = i.indrelid
            WHERE t.relname = ANY(%s) AND t.relnamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            ORDER BY 1
            """,
            [list(LOADED_TABLES)],
        )
        rows = cur.fetchall()
        for name, _ in rows:
            cur.execute(f"DROP INDEX {name}")
        return [ddl for _, ddl in rows]

    def _counts(self) -> dict[str, int]:
        out = {}
        with connection.cursor() as cur:
            for table in LOADED_TABLES:
                cur.execute(f"SELECT count(*) FROM {table}")
                out[table] = int(cur.fetchone()[0])
        return out

    def _progress(self, name: str, done: int, total: int, started: float) -> None:
        if self._verbosity >= 1:
            self.stderr.write(f"  {name}: {done:,}/{total:,} ({time.monotonic() - started:.0f}s)")
