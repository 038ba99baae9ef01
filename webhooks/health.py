"""Readiness (``GET /ready``) and the process overview of the dashboard.

``readiness()`` answers whether this deployment can do its work: the database answers, every
migration on disk is applied, the broker accepts a connection, and at least one worker and one
beat have sent a heartbeat within ``TIDEBASE_HEARTBEAT_STALE_S``. Each check is cheap and
bounded by ``TIDEBASE_READY_TIMEOUT_S``: one short transaction (two queries) and one broker
connect. ``TIDEBASE_READY_CHECKS`` names the checks that decide the answer (all by default);
the others are still reported. Error texts name the failing part, never a host or a password."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader

from tidebase_core.exceptions import error_body
from webhooks.heartbeat import stale_s

CHECKS = ("database", "migrations", "broker", "worker", "beat")


def timeout_s() -> float:
    raw = os.environ.get("TIDEBASE_READY_TIMEOUT_S", "").strip()
    try:
        return max(float(raw), 0.1) if raw else 2.0
    except ValueError:
        return 2.0


def required_checks() -> frozenset[str]:
    raw = os.environ.get("TIDEBASE_READY_CHECKS", "").strip()
    if not raw:
        return frozenset(CHECKS)
    return frozenset(name.strip() for name in raw.split(",") if name.strip() in CHECKS)


@functools.cache
def _migrations_on_disk() -> tuple[tuple[tuple[str, str], frozenset[tuple[str, str]]], ...]:
    """Every migration node of the code (read once per process: the code does not change under
    a running process), with the migrations a squash replaces."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return tuple(
        (key, frozenset(tuple(r) for r in loader.graph.nodes[key].replaces or ())) for key in sorted(loader.graph.nodes)
    )


def _failure(code: str, error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, **error_body(code, error, **extra)}


def _database_checks(limit_s: float) -> dict[str, dict[str, Any]]:
    """database, migrations, worker and beat: one transaction with a statement timeout."""
    checks: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [str(int(limit_s * 1000))])
            cur.execute("SELECT app, name FROM django_migrations")
            applied = {(app, name) for app, name in cur.fetchall()}
            checks["database"] = {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
            pending = [
                f"{app}.{name}"
                for (app, name), replaces in _migrations_on_disk()
                if (app, name) not in applied and not (replaces and replaces <= applied)
            ]
            checks["migrations"] = (
                {"ok": True, "pending": 0}
                if not pending
                else _failure(
                    "migrations_pending",
                    f"{len(pending)} migrations are not applied: run manage.py migrate",
                    pending=len(pending),
                )
            )
            if "webhooks.0003_process_heartbeat" in pending:
                raise _NoHeartbeatTable
            cur.execute(
                """SELECT kind,
                          count(*) FILTER (WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => %s)),
                          extract(epoch FROM now() - max(last_seen))
                   FROM tb_process_heartbeat GROUP BY kind""",
                [stale_s()],
            )
            seen = {kind: (int(alive), float(age)) for kind, alive, age in cur.fetchall()}
    except _NoHeartbeatTable:
        seen = {}
    except Exception as exc:
        checks["database"] = _failure("database_unavailable", f"the database did not answer ({type(exc).__name__})")
        for name in ("migrations", "worker", "beat"):
            checks[name] = _failure("database_unavailable", "not checked: the database did not answer")
        return checks
    for kind in ("worker", "beat"):
        alive, age = seen.get(kind, (0, None))
        last = None if age is None else round(age, 1)
        if alive:
            checks[kind] = {"ok": True, "alive": alive, "lastSeenS": last}
        else:
            what = "no heartbeat ever" if age is None else f"last heartbeat {last}s ago"
            checks[kind] = _failure(
                f"no_{kind}",
                f"no {kind} has sent a heartbeat in the last {stale_s():g}s ({what})",
                alive=0,
                lastSeenS=last,
            )
    return checks


class _NoHeartbeatTable(Exception):
    pass


def _broker_check(limit_s: float) -> dict[str, Any]:
    url = settings.CELERY_BROKER_URL
    if not url:
        from config.celery import broker_folder

        queues = broker_folder() / "queues"
        if queues.is_dir() and os.access(queues, os.W_OK):
            return {"ok": True, "transport": "embedded"}
        return _failure("broker_unavailable", "the embedded broker's folder is missing or not writable")
    from kombu.connection import Connection

    transport = url.split(":", 1)[0]
    try:
        with Connection(  # type: ignore[no-untyped-call]
            url,
            connect_timeout=limit_s,
            transport_options={"socket_connect_timeout": limit_s, "socket_timeout": limit_s, "max_retries": 0},
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=limit_s)
    except Exception as exc:
        return _failure("broker_unavailable", f"the broker did not answer ({type(exc).__name__})", transport=transport)
    return {"ok": True, "transport": transport}


def readiness() -> tuple[bool, dict[str, dict[str, Any]]]:
    """(ready, checks): ``checks`` maps each check to ``{"ok": true, ...}`` or ``{"ok": false,
    "code", "error", ...}``; a check outside ``TIDEBASE_READY_CHECKS`` also says
    ``"required": false`` and does not decide ``ready``."""
    limit = timeout_s()
    checks = _database_checks(limit)
    checks["broker"] = _broker_check(limit)
    required = required_checks()
    for name, check in checks.items():
        if name not in required:
            check["required"] = False
    ready = all(check["ok"] for name, check in checks.items() if name in required)
    return ready, {name: checks[name] for name in CHECKS}


# --- the dashboard's view of the processes --------------------------------------------------------


@dataclass(frozen=True)
class ProcessRow:
    kind: str
    hostname: str
    pid: int
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    age_s: float

    @property
    def state(self) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "alive" if self.age_s <= stale_s() else "lost"


@dataclass(frozen=True)
class StalledQueue:
    name: str
    ready: int
    waiting_s: float


def processes() -> list[ProcessRow]:
    """Every worker and beat row not yet pruned, alive first, newest heartbeat first."""
    with connection.cursor() as cur:
        cur.execute(
            """SELECT kind, hostname, pid, started_at, last_seen, stopped_at,
                      extract(epoch FROM now() - last_seen)
               FROM tb_process_heartbeat ORDER BY kind DESC, last_seen DESC LIMIT 500"""
        )
        rows = [ProcessRow(k, h, p, s, seen, stop, float(age)) for k, h, p, s, seen, stop, age in cur.fetchall()]
    order = {"alive": 0, "lost": 1, "stopped": 2}
    return sorted(rows, key=lambda r: (r.kind != "worker", order[r.state]))


def stalled_queues() -> list[StalledQueue]:
    """Pull-mode queues whose ready runs have waited longer than the stale limit while no run of
    the queue was claimed in that time: no worker is polling them. A polling worker claims a
    ready run within milliseconds (long-poll), so a run ready that long with no claim means
    nobody asks, unless a cap holds it back: paused, push-mode, concurrency-full and
    rate-limited queues are left out."""
    limit = stale_s()
    with connection.cursor() as cur:
        cur.execute(
            """WITH waiting AS (
                   SELECT queue_name, count(*) AS ready,
                          extract(epoch FROM now() - min(coalesce(run_at, updated_at))) AS waiting_s
                   FROM tb_run
                   WHERE queue_name IS NOT NULL AND status = 'queued'
                     AND coalesce(run_at, updated_at) < now() - make_interval(secs => %s)
                   GROUP BY queue_name
               )
               SELECT w.queue_name, w.ready, w.waiting_s
               FROM waiting w
               LEFT JOIN tb_queue_config c ON c.name = w.queue_name
               WHERE NOT coalesce(c.paused, false)
                 AND c.invoke_url IS NULL
                 AND c.rate_per_minute IS NULL
                 AND (c.concurrency IS NULL OR c.concurrency > (
                      SELECT count(*) FROM tb_run r
                      WHERE r.queue_name = w.queue_name AND r.status = 'running'))
                 AND NOT EXISTS (
                      SELECT 1 FROM tb_run r
                      WHERE r.queue_name = w.queue_name AND r.status IN ('running', 'completed', 'failed', 'queued')
                        AND r.claimed_at > now() - make_interval(secs => %s))
               ORDER BY w.queue_name""",
            [limit, limit],
        )
        return [StalledQueue(name, int(ready), float(waiting)) for name, ready, waiting in cur.fetchall()]
