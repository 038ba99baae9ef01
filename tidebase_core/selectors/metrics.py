"""The state figures of ``GET /metrics``, read from Postgres when Prometheus scrapes.

One statement, bounded: every part reads a partial or leading index and touches rows that are
*active* (runs not finished, gates pending, deliveries pending, runs queued), never the history,
so a scrape costs the same at a thousand finished runs as at ten million (measured on the
``tidebase_scale`` database of ``make bench``: 1M runs, 5M usage records). Group counts are
capped (``GROUPS_MAX`` workflow x status pairs, queues), and the statement runs under its own
``STATEMENT_TIMEOUT_MS``; should it fail, the scrape still answers, with
``tidebase_state_up 0`` and the event figures.

- ``tidebase_runs{status, workflow}``: runs pending, queued or running (``tb_run_status_idx``).
  Finished runs are not counted here (that would read the whole table on every scrape); their
  rate is ``tidebase_http_request_duration_seconds_count`` of ``complete_run``/``fail_run``.
- ``tidebase_gates_pending``, ``tidebase_gate_oldest_pending_seconds`` (``tb_gate_pending_idx``,
  index-only).
- ``tidebase_outbox_pending{kind}``, ``tidebase_outbox_due{kind}`` and
  ``tidebase_outbox_oldest_due_seconds{kind}``: webhook rows not delivered yet, those due now,
  and how long the oldest due one has waited (the partial ``*_due_idx`` indexes, index-only).
- ``tidebase_queue_depth{queue, state}`` (``ready``: runAt passed; ``delayed``) and
  ``tidebase_queue_oldest_ready_seconds{queue}``.
- ``tidebase_reconciler_lag_seconds``: how overdue the oldest piece of reconciler work is: an
  expired lease of a queue run (not requeued yet), a pending gate past its timeout, an enabled
  schedule past its fire time. 0 when nothing is overdue; a healthy reconciler keeps it below
  ``TIDEBASE_RECONCILE_MS``. Expired leases are looked for among the 1,000 oldest only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.db import connection, transaction

logger = logging.getLogger(__name__)

GROUPS_MAX = 500
STATEMENT_TIMEOUT_MS = 5000
EXPIRED_LEASES_SCANNED = 1000

STATE_SQL = """
WITH
runs AS (
  SELECT status, workflow_name, count(*) AS n FROM tb_run
  WHERE status IN ('pending', 'queued', 'running')
  GROUP BY status, workflow_name ORDER BY n DESC LIMIT %(groups)s
),
gates AS (
  SELECT count(*) AS pending, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest
  FROM tb_gate WHERE status = 'pending'
),
outbox AS (
  SELECT 'channel' AS kind, count(*) AS pending, count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
         EXTRACT(EPOCH FROM now() - min(next_attempt_at) FILTER (WHERE next_attempt_at <= now())) AS oldest
  FROM tb_channel_delivery WHERE status = 'pending'
  UNION ALL
  SELECT 'recovery', count(*), count(*) FILTER (WHERE next_attempt_at <= now()),
         EXTRACT(EPOCH FROM now() - min(next_attempt_at) FILTER (WHERE next_attempt_at <= now()))
  FROM tb_recovery_attempt WHERE status = 'pending'
  UNION ALL
  SELECT 'notification', count(*), count(*) FILTER (WHERE next_attempt_at <= now()),
         EXTRACT(EPOCH FROM now() - min(next_attempt_at) FILTER (WHERE next_attempt_at <= now()))
  FROM tb_notification WHERE status = 'pending'
),
queues AS (
  SELECT queue_name,
         count(*) FILTER (WHERE COALESCE(run_at, created_at) <= now()) AS ready,
         count(*) FILTER (WHERE run_at > now()) AS delayed,
         EXTRACT(EPOCH FROM now() - min(COALESCE(run_at, created_at))
                 FILTER (WHERE COALESCE(run_at, created_at) <= now())) AS oldest
  FROM tb_run WHERE status = 'queued' AND queue_name IS NOT NULL
  GROUP BY queue_name ORDER BY count(*) DESC LIMIT %(groups)s
),
lag AS (
  SELECT EXTRACT(EPOCH FROM now() - LEAST(
    (SELECT min(lease_expires_at) FROM (
        SELECT lease_expires_at, queue_name FROM tb_run
        WHERE status = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at LIMIT %(leases)s) expired
     WHERE queue_name IS NOT NULL),
    (SELECT min(timeout_at) FROM tb_gate WHERE status = 'pending' AND timeout_at <= now()),
    (SELECT min(next_run_at) FROM tb_schedule WHERE enabled AND next_run_at <= now())
  )) AS seconds
)
SELECT 'runs' AS figure, status AS a, workflow_name AS b, n::float8 AS v FROM runs
UNION ALL SELECT 'gates_pending', NULL, NULL, pending::float8 FROM gates
UNION ALL SELECT 'gate_oldest', NULL, NULL, COALESCE(oldest, 0)::float8 FROM gates
UNION ALL SELECT 'outbox_pending', kind, NULL, pending::float8 FROM outbox
UNION ALL SELECT 'outbox_due', kind, NULL, due::float8 FROM outbox
UNION ALL SELECT 'outbox_oldest', kind, NULL, COALESCE(oldest, 0)::float8 FROM outbox
UNION ALL SELECT 'queue_ready', queue_name, NULL, ready::float8 FROM queues
UNION ALL SELECT 'queue_delayed', queue_name, NULL, delayed::float8 FROM queues
UNION ALL SELECT 'queue_oldest', queue_name, NULL, COALESCE(oldest, 0)::float8 FROM queues
UNION ALL SELECT 'lag', NULL, NULL, GREATEST(COALESCE(seconds, 0), 0)::float8 FROM lag
"""


def state_rows() -> list[tuple[str, str | None, str | None, float]]:
    """``(figure, label, label, value)`` rows of ``STATE_SQL``, in one short transaction."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = %s", [STATEMENT_TIMEOUT_MS])
        cur.execute(STATE_SQL, {"groups": GROUPS_MAX, "leases": EXPIRED_LEASES_SCANNED})
        return [(str(r[0]), r[1], r[2], float(r[3])) for r in cur.fetchall()]


def state_families() -> Iterator[Any]:
    """The state figures as prometheus_client metric families."""
    from prometheus_client.core import GaugeMetricFamily

    try:
        rows = state_rows()
    except Exception:
        logger.exception("metrics.state.failed")
        rows = None
    up = GaugeMetricFamily("tidebase_state_up", "1 when the state figures below could be read from Postgres.")
    up.add_metric([], 0.0 if rows is None else 1.0)
    yield up
    if rows is None:
        return
    runs = GaugeMetricFamily(
        "tidebase_runs",
        "Runs not finished yet, by status (pending, queued, running) and workflow.",
        labels=["status", "workflow"],
    )
    gates = GaugeMetricFamily("tidebase_gates_pending", "Gates waiting for a decision.")
    gate_oldest = GaugeMetricFamily(
        "tidebase_gate_oldest_pending_seconds", "How long the oldest pending gate has waited (0: none)."
    )
    pending = GaugeMetricFamily("tidebase_outbox_pending", "Webhook rows not delivered yet.", labels=["kind"])
    due = GaugeMetricFamily("tidebase_outbox_due", "Webhook rows due for an attempt now.", labels=["kind"])
    oldest = GaugeMetricFamily(
        "tidebase_outbox_oldest_due_seconds",
        "How long the oldest due webhook row has waited (0: none).",
        labels=["kind"],
    )
    depth = GaugeMetricFamily(
        "tidebase_queue_depth",
        "Queued runs by queue and state (ready: runAt passed; delayed).",
        labels=["queue", "state"],
    )
    queue_oldest = GaugeMetricFamily(
        "tidebase_queue_oldest_ready_seconds", "How long the oldest ready run of a queue has waited.", labels=["queue"]
    )
    lag = GaugeMetricFamily(
        "tidebase_reconciler_lag_seconds",
        "How overdue the oldest reconciler work is (expired queue-run lease, gate timeout, schedule fire).",
    )
    for figure, a, b, value in rows:
        if figure == "runs":
            runs.add_metric([a or "", b or ""], value)
        elif figure == "gates_pending":
            gates.add_metric([], value)
        elif figure == "gate_oldest":
            gate_oldest.add_metric([], value)
        elif figure == "outbox_pending":
            pending.add_metric([a or ""], value)
        elif figure == "outbox_due":
            due.add_metric([a or ""], value)
        elif figure == "outbox_oldest":
            oldest.add_metric([a or ""], value)
        elif figure == "queue_ready":
            depth.add_metric([a or "", "ready"], value)
        elif figure == "queue_delayed":
            depth.add_metric([a or "", "delayed"], value)
        elif figure == "queue_oldest":
            queue_oldest.add_metric([a or ""], value)
        elif figure == "lag":
            lag.add_metric([], value)
    yield from (runs, gates, gate_oldest, pending, due, oldest, depth, queue_oldest, lag)
