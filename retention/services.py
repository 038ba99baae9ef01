"""Pruning: what the retention policy says may go, in bounded batches (docs/decisions.md, "Retention").

Every batch is its own short transaction with a ``lock_timeout`` (``TIDEBASE_RETENTION_LOCK_TIMEOUT_MS``):
it picks at most ``batch_size`` rows in index order, locks them with ``FOR UPDATE SKIP LOCKED``
(a row someone else holds is passed over, never waited for), deletes them and what depends on
them in one statement (``retention.cascade``), and commits. Two pruners at once therefore split
the rows between them, each row deleted once; a lock timeout or deadlock rolls the batch back,
which is retried, and after three failures the category waits for the next pass.

Within a pass each category walks its index once: a keyset cursor moves past rows that are
kept (a longer per-workflow retention, a pending gate), so they are not scanned again.

A run heavier than a batch is emptied a batch of rows per transaction, then deleted, if it is
completed or cancelled; a failed run (a begin may resume it between two transactions) is deleted
whole, in one transaction however large.

What is never deleted: a run that is not terminal, has a pending gate, a held lease, an undelivered
webhook or a child that is not terminal, or is the child of a run that may still run (not
completed or cancelled); the current version and labelled versions of a state stream; rollups of
the current UTC month (budgets recompute the month from them). Events, steps, gates and state of
a kept run are kept with it: a run's log stays gap-free."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import OperationalError, connection, models, transaction
from django.db.backends.utils import CursorWrapper

from retention.cascade import delete_plan, run_chunks
from retention.models import RetentionMark, RetentionPolicy
from retention.policy import RUN_FIELDS, Policy
from tidebase_core.models import ChannelDelivery, RecoveryAttempt, Run, StateVersion, UsageDaily, UsageRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL_SQL = "('completed', 'failed', 'cancelled')"
FINAL_SQL = "('completed', 'cancelled')"
"""Statuses nothing brings back to life: begin answers them unchanged (a failed run resumes)."""
CHUNKED = ("completed", "cancelled")
"""Runs of these statuses may be emptied over several transactions (``_empty_run``); a failed
run, which a begin may resume between two of them, is only ever deleted whole."""
RUN_CATEGORIES = tuple(RUN_FIELDS)  # completed, failed, cancelled
CATEGORIES = (*RUN_CATEGORIES, "usage", "rollups", "deliveries", "state")
CATEGORY_FIELDS = {
    **RUN_FIELDS,
    "usage": "usage_days",
    "rollups": "rollup_days",
    "deliveries": "delivery_days",
    "state": "state_days",
}
"""The policy field that switches each category on (``state``: ``state_days`` or ``state_versions``)."""

USAGE_MARK = "usage"
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
ATTEMPTS = 3

before_commit: Callable[[str], None] | None = None
"""Test hook: called inside every batch's transaction, after its deletes, before its commit."""


@dataclass
class Report:
    deleted: Counter[str] = field(default_factory=Counter)
    """Rows deleted per table (``table:column`` for rows whose reference was set to NULL)."""
    batches: int = 0
    incomplete: list[str] = field(default_factory=list)
    """Categories left for the next pass (deadline reached, or locks held too long)."""

    def add(self, tables: tuple[str, ...], counts: tuple[int, ...] | list[int]) -> None:
        self.batches += 1
        for table, count in zip(tables, counts, strict=True):
            if count:
                self.deleted[table] += int(count)

    def summary(self) -> dict[str, int]:
        return {table: n for table, n in sorted(self.deleted.items()) if n}


def batch_size_default() -> int:
    return max(1, int(settings.TIDEBASE_RETENTION_BATCH))


@contextmanager
def _batch(category: str) -> Iterator[CursorWrapper]:
    """One short transaction whose lock waits end after ``TIDEBASE_RETENTION_LOCK_TIMEOUT_MS``."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            "SELECT set_config('lock_timeout', %s, true)", [f"{int(settings.TIDEBASE_RETENTION_LOCK_TIMEOUT_MS)}ms"]
        )
        yield cur
        if before_commit is not None:
            before_commit(category)


def _retrying(category: str, work: Callable[[], T]) -> T:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return work()
        except OperationalError as exc:
            if not isinstance(exc.__cause__, RETRYABLE) or attempt == ATTEMPTS:
                raise
            logger.info("retention.batch.retry", extra={"category": category, "error": type(exc.__cause__).__name__})
    raise AssertionError("unreachable")  # pragma: no cover


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


# --- runs -------------------------------------------------------------------------------------


def run_where(policy: Policy, status: str) -> tuple[str, list[Any]]:
    """The runs of ``status`` the policy lets go (alias ``r``). Their age is counted from
    ``completed_at`` (completed and cancelled runs) or the last change (failed runs, which a
    new begin may still resume). A child stays while its parent may still run (any status but
    completed or cancelled): its edge goes with it, and the parent's replay of
    ``create_child_run(name)`` would find no edge and start the child, side effects and all, again."""
    case, params = policy.case(RUN_FIELDS[status], "r.workflow_name")
    sql = f"""r.status = %s
      AND COALESCE(r.completed_at, r.updated_at) < now() - {case} * interval '1 day'
      AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= now())
      AND NOT EXISTS (SELECT 1 FROM tb_gate g WHERE g.run_id = r.id AND g.status = 'pending')
      AND NOT EXISTS (SELECT 1 FROM tb_channel_delivery d WHERE d.run_id = r.id AND d.status = 'pending')
      AND NOT EXISTS (SELECT 1 FROM tb_recovery_attempt a WHERE a.run_id = r.id AND a.status = 'pending')
      AND NOT EXISTS (SELECT 1 FROM tb_run_edge e JOIN tb_run c ON c.id = e.child_run_id
                      WHERE e.parent_run_id = r.id AND c.status NOT IN {TERMINAL_SQL})
      AND NOT EXISTS (SELECT 1 FROM tb_run_edge e JOIN tb_run p ON p.id = e.parent_run_id
                      WHERE e.child_run_id = r.id AND p.status NOT IN {FINAL_SQL})"""
    return sql, [status, *params]


def run_range(policy: Policy, status: str) -> tuple[str, list[Any]]:
    """An index range (``tb_run_status_idx``: status, created_at) holding every candidate: a
    run finishes after it is created, so a run old enough for the shortest retention in force
    was also created before that."""
    return "r.status = %s AND r.created_at < now() - %s * interval '1 day'", [
        status,
        policy.min_value(RUN_FIELDS[status]),
    ]


def _delete_runs(cur: CursorWrapper, policy: Policy, status: str, ids: list[str], report: Report) -> int:
    """Lock the runs that are still eligible (skipping any another session holds), check them
    again with a fresh snapshot now that nobody can change them, and delete them with all they
    own. Returns how many runs were deleted."""
    where, params = run_where(policy, status)
    cur.execute(f"SELECT r.id FROM tb_run r WHERE r.id = ANY(%s) AND {where} FOR UPDATE SKIP LOCKED", [ids, *params])
    locked = [row[0] for row in cur.fetchall()]
    if not locked:
        return 0
    cur.execute(f"SELECT r.id FROM tb_run r WHERE r.id = ANY(%s) AND {where}", [locked, *params])
    doomed = [row[0] for row in cur.fetchall()]
    if not doomed:
        return 0
    # Edges are the only rows two runs share: lock them in one order, so two pruners deleting a
    # parent and its child at once wait for each other instead of deadlocking.
    cur.execute(
        "SELECT 1 FROM tb_run_edge WHERE parent_run_id = ANY(%s) OR child_run_id = ANY(%s) ORDER BY id FOR UPDATE",
        [doomed, doomed],
    )
    cur.execute("SELECT max(last_at) FROM tb_usage_run WHERE run_id = ANY(%s)", [doomed])
    last_usage = cur.fetchone()
    plan = delete_plan(Run)
    cur.execute(plan.sql, {"ids": doomed})
    row = cur.fetchone()
    assert row is not None
    report.add(plan.tables, row)
    if last_usage and last_usage[0] is not None:  # their usage records went with them
        _advance_usage_mark(cur, last_usage[0])
    return int(row[-1])


def _advance_usage_mark(cur: CursorWrapper, at: dt.datetime) -> None:
    """Raw usage records up to ``at`` may be gone from now on (see ``RetentionMark``). Last in
    its transaction: the mark's row lock is held only to the commit."""
    cur.execute(
        """INSERT INTO tb_retention_mark AS m (name, at) VALUES (%s, %s)
           ON CONFLICT (name) DO UPDATE SET at = GREATEST(m.at, EXCLUDED.at)""",
        [USAGE_MARK, at],
    )


def _empty_run(policy: Policy, status: str, run_id: str, batch_size: int, report: Report) -> bool:
    """Delete the bulk of one run larger than a batch, ``batch_size`` rows of one table per
    transaction, each under the run's row lock with its eligibility checked again. False when
    the run is no longer eligible or someone holds it. Only for ``CHUNKED`` statuses: between
    two transactions the run is partly emptied, which only a run that can never run again may
    be (a pass that dies here leaves it so, still eligible: the next pass finishes it)."""
    assert status in CHUNKED, status
    where, params = run_where(policy, status)
    for chunk in run_chunks(Run):
        while True:

            def one(chunk_sql: str = chunk.sql, table: str = chunk.table) -> int | None:
                with _batch(status) as cur:
                    cur.execute(
                        f"SELECT r.id FROM tb_run r WHERE r.id = %s AND {where} FOR UPDATE SKIP LOCKED",
                        [run_id, *params],
                    )
                    if cur.fetchone() is None:
                        return None
                    cur.execute(chunk_sql, {"run": run_id, "n": batch_size})
                    row = cur.fetchone()
                    count = int(row[0]) if row else 0
                    report.add((table,), (count,))
                    if table == UsageRecord._meta.db_table and count:
                        cur.execute("SELECT last_at FROM tb_usage_run WHERE run_id = %s", [run_id])
                        last_usage = cur.fetchone()
                        if last_usage is not None:
                            _advance_usage_mark(cur, last_usage[0])
                    return count

            deleted = _retrying(status, one)
            if deleted is None:
                return False
            if deleted < batch_size:
                break
    return True


def _prune_runs(policy: Policy, status: str, batch_size: int, report: Report, deadline: float | None) -> None:
    if not policy.active(RUN_FIELDS[status]):
        return
    where, params = run_where(policy, status)
    range_sql, range_params = run_range(policy, status)
    after: tuple[dt.datetime, str] | None = None
    while True:
        if _expired(deadline):
            report.incomplete.append(status)
            return
        keyset = "" if after is None else "AND r.created_at >= %s AND (r.created_at > %s OR r.id > %s)"
        keyset_params: list[Any] = [] if after is None else [after[0], after[0], after[1]]
        # A run's weight: its events (every step, state version, gate and usage record appends
        # one), or its usage records if more (rows written around the API, e.g. a bulk load).
        candidates_sql = f"""SELECT r.id, r.created_at,
                   GREATEST(r.event_seq, COALESCE((SELECT t.records FROM tb_usage_run t WHERE t.run_id = r.id), 0))
            FROM tb_run r
            WHERE {range_sql} {keyset} AND {where}
            ORDER BY r.created_at, r.id LIMIT %s"""
        candidates_params = [*range_params, *keyset_params, *params, batch_size]

        def batch(
            sql: str = candidates_sql, params: list[Any] = candidates_params
        ) -> tuple[list[tuple[str, dt.datetime, int]], bool]:
            """(the candidates this batch took, whether the walk is over)."""
            with _batch(status) as cur:
                cur.execute(sql, params)
                rows = [(r[0], r[1], int(r[2])) for r in cur.fetchall()]
                if not rows:
                    return [], True
                # Take runs while their weights fit in one batch.
                taken: list[tuple[str, dt.datetime, int]] = []
                weight = 0
                for row in rows:
                    if taken and weight + row[2] + 1 > batch_size:
                        break
                    taken.append(row)
                    weight += row[2] + 1
                if weight > batch_size:  # a single run larger than a batch: emptied below
                    return taken, False
                _delete_runs(cur, policy, status, [r[0] for r in taken], report)
                return taken, len(rows) < batch_size and len(taken) == len(rows)

        try:
            taken, finished = _retrying(status, batch)
            if taken and sum(r[2] + 1 for r in taken) > batch_size:
                run_id = taken[0][0]
                # A failed run heavier than a batch still goes in one transaction: emptied in
                # several, a begin between two would resume it with part of its steps gone.
                if status not in CHUNKED or _empty_run(policy, status, run_id, batch_size, report):

                    def final(run_id: str = run_id) -> None:
                        with _batch(status) as cur:
                            _delete_runs(cur, policy, status, [run_id], report)

                    _retrying(status, final)
        except OperationalError as exc:
            if not isinstance(exc.__cause__, RETRYABLE):
                raise
            logger.warning("retention.batch.gave_up", extra={"category": status, "error": str(exc)})
            report.incomplete.append(status)
            return
        if finished:
            return
        after = (taken[-1][1], taken[-1][0])


# --- usage, rollups, deliveries: one row model per walk -------------------------------------------


@dataclass(frozen=True)
class Walk:
    """A keyset walk over the rows of one table the policy lets go."""

    category: str
    model: type[models.Model]
    alias: str
    source: str
    """FROM clause."""
    range_sql: str
    """An indexable condition every candidate meets."""
    where: str
    params: list[Any]
    """Parameters of ``range_sql`` then ``where``."""
    key: str
    """The walk's order (with the primary key as tie-break); an indexed column."""
    lock: str
    after_batch: Callable[[CursorWrapper, list[tuple[Any, ...]]], None] | None = None
    extra: str = ""
    """More columns the batch reads (for ``after_batch``)."""

    def select(self, after: tuple[Any, Any] | None, limit: int | None, *, lock: bool) -> tuple[str, list[Any]]:
        """The next batch (``limit`` rows after ``after``, locked); with ``lock=False`` and no
        limit, every row, unordered (for counting)."""
        assert self.model._meta.pk is not None
        pk = f"{self.alias}.{self.model._meta.pk.column}"
        keyset = "" if after is None else f"AND {self.key} >= %s AND ({self.key} > %s OR {pk} > %s)"
        tail = f"ORDER BY {self.key}, {pk} LIMIT %s {self.lock if lock else ''}" if limit is not None else ""
        sql = f"""SELECT {pk}, {self.key}{self.extra} FROM {self.source}
            WHERE {self.range_sql} {keyset} AND {self.where} {tail}"""
        params = [*self.params]
        if after is not None:
            split = self.range_sql.count("%s")
            params[split:split] = [after[0], after[0], after[1]]
        return sql, [*params, *([limit] if limit is not None else [])]


def usage_walk(policy: Policy) -> Walk | None:
    """Raw usage records of finished runs whose last record is older than the usage retention:
    a run's records go together (in as many batches as they take), so every record of a run
    that still has records after the watermark is there, and the rollups of the days after it
    can be rebuilt (see ``RetentionMark``). Records of runs without a run-total row (written
    around the rollups, never rebuilt) are not touched: their usage is nowhere else."""
    low = policy.min_value("usage_days")
    if low is None:
        return None
    case, params = policy.case("usage_days", "r.workflow_name")

    def mark(cur: CursorWrapper, rows: list[tuple[Any, ...]]) -> None:
        _advance_usage_mark(cur, max(r[2] for r in rows))

    return Walk(
        category="usage",
        model=UsageRecord,
        alias="u",
        source="tb_usage u JOIN tb_run r ON r.id = u.run_id JOIN tb_usage_run t ON t.run_id = u.run_id",
        range_sql="u.created_at < now() - %s * interval '1 day'",
        where=f"r.status IN {TERMINAL_SQL} AND t.last_at < now() - {case} * interval '1 day'",
        params=[low, *params],
        key="u.created_at",
        # the run row too: a pruner deleting that run meanwhile holds it, and is skipped
        lock="FOR UPDATE OF u SKIP LOCKED FOR KEY SHARE OF r SKIP LOCKED",
        extra=", t.last_at",
        after_batch=mark,
    )


def rollup_walk(policy: Policy, today: dt.date | None = None) -> Walk | None:
    """Daily rollup rows older than the rollup retention of their workflow, where that exceeds
    its raw usage retention; never a row of the current UTC month. ``today``: the UTC day to
    count from (default: the database clock's)."""
    low = policy.min_value("rollup_days")
    if low is None:
        return None
    case, params = policy.rollup_case("d.workflow")
    day = "COALESCE(%s::date, (now() AT TIME ZONE 'UTC')::date)"
    return Walk(
        category="rollups",
        model=UsageDaily,
        alias="d",
        source="tb_usage_daily d",
        range_sql=f"d.day < {day} - %s::int",
        where=f"d.day < date_trunc('month', {day})::date AND d.day < {day} - {case}",
        params=[today, low, today, today, *params],
        key="d.day",
        lock="FOR UPDATE OF d SKIP LOCKED",
    )


def delivery_walks(policy: Policy) -> list[Walk]:
    """Delivered and dead-lettered webhook rows (and their attempts) older than the delivery
    retention; pending ones (waiting for a retry) stay."""
    low = policy.min_value("delivery_days")
    if low is None:
        return []
    case, params = policy.case("delivery_days", "r.workflow_name")
    walks = []
    for model in (ChannelDelivery, RecoveryAttempt):
        table = model._meta.db_table
        walks.append(
            Walk(
                category="deliveries",
                model=model,
                alias="o",
                source=f"{table} o JOIN tb_run r ON r.id = o.run_id",
                range_sql="o.status IN ('delivered', 'failed') AND o.completed_at < now() - %s * interval '1 day'",
                where=f"o.completed_at < now() - {case} * interval '1 day'",
                params=[low, *params],
                key="o.completed_at",
                lock="FOR UPDATE OF o SKIP LOCKED FOR KEY SHARE OF r SKIP LOCKED",
            )
        )
    return walks


def _prune_walk(walk: Walk, batch_size: int, report: Report, deadline: float | None) -> bool:
    """Returns False when the category must wait for the next pass."""
    plan = delete_plan(walk.model)
    after: tuple[Any, Any] | None = None
    while True:
        if _expired(deadline):
            return False
        sql, params = walk.select(after, batch_size, lock=True)

        def batch(sql: str = sql, params: list[Any] = params) -> tuple[int, tuple[Any, Any] | None]:
            with _batch(walk.category) as cur:
                cur.execute(sql, params)
                rows = cur.fetchall()
                if not rows:
                    return 0, None
                cur.execute(plan.sql, {"ids": [r[0] for r in rows]})
                counts = cur.fetchone()
                assert counts is not None
                report.add(plan.tables, counts)
                if walk.after_batch is not None:
                    walk.after_batch(cur, rows)
                return len(rows), (rows[-1][1], rows[-1][0])

        try:
            taken, last = _retrying(walk.category, batch)
        except OperationalError as exc:
            if not isinstance(exc.__cause__, RETRYABLE):
                raise
            logger.warning("retention.batch.gave_up", extra={"category": walk.category, "error": str(exc)})
            return False
        if taken < batch_size or last is None:
            return True
        after = last


# --- state versions ----------------------------------------------------------------------------


def state_where(policy: Policy) -> tuple[str, str, list[Any]]:
    """(FROM, WHERE, parameters) of the state versions the policy lets go (alias ``v``): not the
    stream's current version, not labelled (saves and snapshots are kept), and beyond the newest
    ``state_versions`` and older than ``state_days``, whichever of the two is set."""
    keep_n, np = policy.case("state_versions", "r.workflow_name")
    keep_days, dp = policy.case("state_days", "r.workflow_name")
    source = f"""tb_state_version v
        JOIN tb_state_stream s ON s.id = v.stream_id
        JOIN tb_run r ON r.id = s.run_id
        CROSS JOIN LATERAL (SELECT {keep_n} AS keep_n, {keep_days} AS keep_days) p"""
    where = """v.label IS NULL AND v.version < s.current_version
        AND (p.keep_n IS NOT NULL OR p.keep_days IS NOT NULL)
        AND (p.keep_n IS NULL OR v.version <= s.current_version - p.keep_n)
        AND (p.keep_days IS NULL OR v.created_at < now() - p.keep_days * interval '1 day')"""
    return source, where, [*np, *dp]


def _prune_state(policy: Policy, batch_size: int, report: Report, deadline: float | None) -> bool:
    """Walks the streams in primary-key order, ``batch_size`` streams at a time, and deletes
    their prunable versions ``batch_size`` per transaction."""
    if not (policy.active("state_days") or policy.active("state_versions")):
        return True
    source, where, params = state_where(policy)
    plan = delete_plan(StateVersion)
    after = ""
    while True:
        if _expired(deadline):
            return False
        with connection.cursor() as cur:
            cur.execute(
                "SELECT id FROM tb_state_stream WHERE id > %s AND current_version > 1 ORDER BY id LIMIT %s",
                [after, batch_size],
            )
            streams = [row[0] for row in cur.fetchall()]
        if not streams:
            return True
        while True:
            if _expired(deadline):
                return False

            def batch(streams: list[str] = streams) -> int:
                with _batch("state") as cur:
                    cur.execute(
                        f"""SELECT v.id FROM {source} WHERE s.id = ANY(%s) AND {where} LIMIT %s
                            FOR UPDATE OF v SKIP LOCKED FOR KEY SHARE OF r SKIP LOCKED""",
                        [*params, streams, batch_size],
                    )
                    ids = [row[0] for row in cur.fetchall()]
                    if not ids:
                        return 0
                    cur.execute(plan.sql, {"ids": ids})
                    counts = cur.fetchone()
                    assert counts is not None
                    report.add(plan.tables, counts)
                    return len(ids)

            try:
                deleted = _retrying("state", batch)
            except OperationalError as exc:
                if not isinstance(exc.__cause__, RETRYABLE):
                    raise
                logger.warning("retention.batch.gave_up", extra={"category": "state", "error": str(exc)})
                return False
            if deleted < batch_size:
                break
        if len(streams) < batch_size:
            return True
        after = streams[-1]


# --- the pass ------------------------------------------------------------------------------------


def prune(
    *,
    policy: Policy | None = None,
    batch_size: int | None = None,
    deadline: float | None = None,
    categories: tuple[str, ...] = CATEGORIES,
    today: dt.date | None = None,
) -> Report:
    """One pass over every category the policy switches on. ``deadline`` (``time.monotonic()``)
    ends the pass between batches; the next pass continues where the data says (deleted rows
    are gone, nothing else is remembered). Safe to run from several processes at once.
    ``today`` moves the rollups' clock (tests)."""
    policy = policy or Policy.load()
    size = batch_size or batch_size_default()
    report = Report()
    for category in categories:
        if category in RUN_CATEGORIES:
            _prune_runs(policy, category, size, report, deadline)
            continue
        if category == "state":
            done = _prune_state(policy, size, report, deadline)
        else:
            walks = {
                "usage": [w for w in [usage_walk(policy)] if w],
                "rollups": [w for w in [rollup_walk(policy, today)] if w],
                "deliveries": delivery_walks(policy),
            }[category]
            done = all([_prune_walk(w, size, report, deadline) for w in walks])  # noqa: C419 (every walk runs)
        if not done:
            report.incomplete.append(category)
    return report


# --- what a pass would delete now ----------------------------------------------------------------


@dataclass(frozen=True)
class Count:
    rows: int | None
    """None: not counted (off, or the count took longer than allowed)."""
    capped: bool = False
    """True when there are at least ``rows`` (the count stopped at the cap)."""
    events: int | None = None
    """Runs only: the events they hold (every other row of a run is bounded by them)."""


def _count(sql: str, params: list[Any], cap: int | None, timeout_ms: int | None, *, runs: bool = False) -> Count:
    limit = "" if cap is None else " LIMIT %s"
    outer = "count(*), COALESCE(sum(n), 0)" if runs else "count(*), 0"
    query = f"SELECT {outer} FROM ({sql}{limit}) x"
    try:
        with transaction.atomic(), connection.cursor() as cur:
            if timeout_ms is not None:
                cur.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout_ms}ms"])
            cur.execute(query, [*params, *([cap] if cap is not None else [])])
            row = cur.fetchone()
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            return Count(rows=None)
        raise
    assert row is not None
    rows = int(row[0])
    return Count(rows=rows, capped=cap is not None and rows >= cap, events=int(row[1]) if runs else None)


def would_delete(
    *, policy: Policy | None = None, cap: int | None = None, timeout_ms: int | None = None
) -> dict[str, Count]:
    """What a pass would delete now, per category, with the pruner's own conditions (without
    locking anything): runs by status (with their events), raw usage records, daily rollup
    rows, webhook deliveries and state versions. ``cap`` stops each count there and
    ``timeout_ms`` bounds each (the Storage page); the dry run counts everything."""
    policy = policy or Policy.load()
    out: dict[str, Count] = {}
    for status in RUN_CATEGORIES:
        if not policy.active(RUN_FIELDS[status]):
            out[status] = Count(rows=None)
            continue
        range_sql, range_params = run_range(policy, status)
        where, params = run_where(policy, status)
        sql = f"SELECT r.event_seq AS n FROM tb_run r WHERE {range_sql} AND {where}"
        out[status] = _count(sql, [*range_params, *params], cap, timeout_ms, runs=True)
    simple: dict[str, list[Walk]] = {
        "usage": [w for w in [usage_walk(policy)] if w],
        "rollups": [w for w in [rollup_walk(policy)] if w],
        "deliveries": delivery_walks(policy),
    }
    for category, walks in simple.items():
        if not walks:
            out[category] = Count(rows=None)
            continue
        counts = []
        for walk in walks:
            sql, params = walk.select(None, None, lock=False)
            counts.append(_count(sql, params, cap, timeout_ms))
        known = [c.rows for c in counts]
        out[category] = Count(
            rows=None if None in known else sum(c.rows or 0 for c in counts), capped=any(c.capped for c in counts)
        )
    if policy.active("state_days") or policy.active("state_versions"):
        source, where, params = state_where(policy)
        out["state"] = _count(f"SELECT 1 FROM {source} WHERE {where}", params, cap, timeout_ms)
    else:
        out["state"] = Count(rows=None)
    return out


def usage_pruned_through() -> dt.datetime | None:
    """Every raw usage record of a run whose records were pruned is at or before this instant
    (None: none pruned yet). The rollups of later UTC days can be rebuilt from tb_usage."""
    mark = RetentionMark.objects.filter(name=USAGE_MARK).first()
    return mark.at if mark else None


RETENTION_LOCK = 1952735749
"""Session advisory lock of the beat task (0x74646205): one scheduled pass at a time across
every beat and worker. Pruning is safe without it; it only saves a second beat the work."""


def prune_exclusive(**kwargs: Any) -> Report | None:
    """``prune`` under the advisory lock; None when another pass holds it."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [RETENTION_LOCK])
        row = cur.fetchone()
    if not row or not row[0]:
        return None
    try:
        return prune(**kwargs)
    finally:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", [RETENTION_LOCK])


# --- the dashboard's policy rows -------------------------------------------------------------------


@transaction.atomic
def policy_save(*, workflow: str, values: dict[str, int | None], by: str) -> RetentionPolicy:
    """Create or replace the row of ``workflow`` (the last save wins)."""
    row, _ = RetentionPolicy.objects.update_or_create(workflow=workflow, defaults={**values, "updated_by": by})
    return row


def policy_delete(*, policy_id: int) -> RetentionPolicy | None:
    row = RetentionPolicy.objects.filter(id=policy_id).first()
    if row is not None:
        row.delete()
    return row
