"""Reads of the Storage page: what the data takes, per table and per workflow, and what the
policy would delete now. Every query is bounded: table sizes come from the catalog, the split by
workflow from a sample of runs (all runs while there are few), and each count stops at a cap
and a statement timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import OperationalError, connection, transaction

from retention.models import RetentionPolicy
from retention.policy import RUN_FIELDS, Policy, matches, precedence
from retention.services import Count, run_range, run_where, would_delete

SAMPLE_RUNS = 2000
"""Runs whose rows are measured one by one; with more runs than this, a sample of about this
many (``TABLESAMPLE SYSTEM``, the same pages on every load) stands for all of them."""
TIMEOUT_MS = 3000
"""Bound of each query of the page."""
COUNT_CAP = 10_000
"""Counts of what the policy would delete stop here ("10,000+")."""

PER_RUN = {"steps": "tb_step", "events": "tb_event", "usage": "tb_usage", "state": "tb_state_version"}
"""Tables measured per workflow (rows that belong to a run), by their label on the page."""
TABLES = (
    "tb_run",
    "tb_step",
    "tb_event",
    "tb_gate",
    "tb_usage",
    "tb_usage_daily",
    "tb_usage_run",
    "tb_run_state",
    "tb_state_stream",
    "tb_state_version",
    "tb_channel_delivery",
    "tb_recovery_attempt",
    "tb_delivery_attempt",
)


@dataclass(frozen=True)
class TableSize:
    table: str
    rows: int
    """Exact for small tables, else the planner's estimate (``reltuples``)."""
    bytes: int
    """Heap, TOAST and indexes (``pg_total_relation_size``)."""


@dataclass
class WorkflowStorage:
    workflow: str
    rows: dict[str, int] = field(default_factory=dict)
    """Label (runs, steps, events, usage, state) -> rows (estimated when sampled)."""
    bytes: int = 0
    """Estimated share of those tables' total size."""
    rule: str = ""
    """The most specific policy row that matches, or "" (environment defaults only)."""
    deletable_runs: int = 0


@dataclass
class Storage:
    tables: list[TableSize]
    workflows: list[WorkflowStorage]
    sampled: bool
    """True when the split by workflow is an estimate from a sample."""
    sampled_runs: int
    timed_out: bool = False


def _bounded(sql: str, params: list[Any] | None = None, timeout_ms: int = TIMEOUT_MS) -> list[tuple[Any, ...]] | None:
    """The rows, or None when the query ran past ``timeout_ms``."""
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
            cur.execute(sql, params)
            return list(cur.fetchall())
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            return None
        raise


SMALL_TABLE_BYTES = 16 * 1024 * 1024
"""Tables smaller than this are counted exactly (the planner's estimate of a small table is often
stale: 0 until its first ANALYZE)."""


def table_sizes() -> list[TableSize]:
    rows = _bounded(
        """SELECT t, COALESCE(c.reltuples, -1)::bigint, COALESCE(pg_total_relation_size(c.oid), 0),
                  COALESCE(pg_relation_size(c.oid), 0)
           FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, i)
           LEFT JOIN pg_class c ON c.oid = to_regclass(t)
           ORDER BY i""",
        [list(TABLES)],
    )
    out = []
    for table, estimate, total, heap in rows or []:
        count = int(estimate)
        if heap < SMALL_TABLE_BYTES:
            exact = _bounded(f"SELECT count(*) FROM {table}")  # a name from TABLES, not from the request
            count = int(exact[0][0]) if exact else count
        out.append(TableSize(table=table, rows=max(count, 0), bytes=int(total)))
    return out


def _estimated_runs() -> int:
    """The planner's count of tb_run, or (never analysed) one from its size."""
    rows = _bounded("SELECT reltuples::bigint, pg_relation_size(oid) FROM pg_class WHERE oid = to_regclass('tb_run')")
    if not rows:
        return 0
    tuples, size = rows[0]
    return int(tuples) if tuples >= 0 else int(size) // 200


def storage(policy: Policy | None = None) -> Storage:
    """Rows and estimated bytes per workflow. Each sampled run's rows in the per-run tables are
    counted and sized (``pg_column_size`` of the row: what is stored, compressed) through their
    ``run_id`` indexes; counts are scaled by the runs the sample stands for, and each table's
    total size is shared out by the workflows' share of its sampled bytes."""
    policy = policy or Policy.load()
    tables = table_sizes()
    total_bytes = {t.table: t.bytes for t in tables}
    estimated = _estimated_runs()
    sampled = estimated > SAMPLE_RUNS
    sample = f"TABLESAMPLE SYSTEM ({min(100.0, 100.0 * SAMPLE_RUNS / estimated):.6f}) REPEATABLE (7)" if sampled else ""
    laterals = "\n".join(
        f"CROSS JOIN LATERAL (SELECT count(*) AS n, COALESCE(sum(pg_column_size(x.*)), 0) AS b "
        f"FROM {table} x WHERE x.run_id = s.id) {label}"
        for label, table in PER_RUN.items()
    )
    sums = ", ".join(f"sum({label}.n), sum({label}.b)" for label in PER_RUN)
    rows = _bounded(
        f"""WITH s AS MATERIALIZED (SELECT r.id, r.workflow_name, pg_column_size(r.*) AS b FROM tb_run r {sample})
            SELECT s.workflow_name, count(*), sum(s.b), {sums}
            FROM s
            {laterals}
            GROUP BY s.workflow_name"""
    )
    if rows is None:
        return Storage(tables=tables, workflows=[], sampled=sampled, sampled_runs=0, timed_out=True)
    sampled_runs = sum(int(r[1]) for r in rows)
    scale = (estimated / sampled_runs) if sampled and sampled_runs else 1.0
    labels = ("runs", *PER_RUN)
    table_of = {"runs": "tb_run", **PER_RUN}
    sampled_bytes = {label: sum(int(r[2 + 2 * i]) for r in rows) for i, label in enumerate(labels)}
    workflows = []
    for r in rows:
        wf = WorkflowStorage(workflow=r[0])
        for i, label in enumerate(labels):
            n, b = int(r[1 + 2 * i]), int(r[2 + 2 * i])
            wf.rows[label] = round(n * scale)
            if sampled_bytes[label]:
                wf.bytes += round(total_bytes.get(table_of[label], 0) * b / sampled_bytes[label])
        wf.rule = next((rule.workflow for rule in policy.rules if matches(rule.workflow, wf.workflow)), "")
        workflows.append(wf)
    workflows.sort(key=lambda w: (-w.bytes, w.workflow))
    deletable = deletable_runs_by_workflow(policy)
    for wf in workflows:
        wf.deletable_runs = deletable.get(wf.workflow, 0)
    return Storage(tables=tables, workflows=workflows, sampled=sampled, sampled_runs=sampled_runs)


def deletable_runs_by_workflow(policy: Policy, cap: int = COUNT_CAP) -> dict[str, int]:
    """Runs the policy would delete now, per workflow (each status's count stops at ``cap``)."""
    out: dict[str, int] = {}
    for status in RUN_FIELDS:
        if not policy.active(RUN_FIELDS[status]):
            continue
        range_sql, range_params = run_range(policy, status)
        where, params = run_where(policy, status)
        rows = _bounded(
            f"""SELECT workflow_name, count(*) FROM (
                  SELECT r.workflow_name FROM tb_run r WHERE {range_sql} AND {where} LIMIT %s
                ) x GROUP BY 1""",
            [*range_params, *params, cap],
        )
        for workflow, n in rows or []:
            out[workflow] = out.get(workflow, 0) + int(n)
    return out


def deletions(policy: Policy | None = None) -> dict[str, Count]:
    """What a pass would delete now, per category (capped, time-bounded)."""
    return would_delete(policy=policy, cap=COUNT_CAP, timeout_ms=TIMEOUT_MS)


def policies() -> list[RetentionPolicy]:
    """The dashboard's rows, in the order they apply (most specific first)."""
    return sorted(RetentionPolicy.objects.all(), key=lambda p: precedence(p.workflow))
