"""Process heartbeats: every worker and beat upserts a ``ProcessHeartbeat`` row every
``TIDEBASE_HEARTBEAT_S`` from a daemon thread, so ``GET /ready`` and the dashboard can tell
whether anything is delivering webhooks and ticking the reconciler.

Importing this module connects the Celery signals that start the threads: ``tidebase_worker``
passes ``--include webhooks.heartbeat`` to the worker (its embedded beat is forked from it and
inherits the handlers) and ``tidebase_beat`` uses ``-A webhooks.heartbeat`` (the same app).

Times are the database clock's (``now()``), like leases, so machines with skewed clocks agree.
A write is one idempotent upsert keyed by the process instance; a failed write is logged once
and retried on the next beat (the row then goes stale, which is the truth)."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from celery.signals import beat_init, worker_ready, worker_shutdown
from django.db import connection

from config.celery import app

__all__ = ["Heartbeat", "app", "interval_s", "keep_s", "stale_s"]

logger = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        return default


def interval_s() -> float:
    """Seconds between two heartbeats of one process."""
    return max(_env_float("TIDEBASE_HEARTBEAT_S", 5.0), 0.1)


def stale_s() -> float:
    """A process not seen for this long counts as dead (readiness, dashboard)."""
    return max(_env_float("TIDEBASE_HEARTBEAT_STALE_S", 30.0), interval_s() * 2)


def keep_s() -> float:
    """Rows not seen for this long are deleted."""
    return max(_env_float("TIDEBASE_HEARTBEAT_KEEP_S", 3600.0), stale_s())


UPSERT = """
INSERT INTO tb_process_heartbeat (id, kind, hostname, pid, started_at, last_seen, stopped_at)
VALUES (%s, %s, %s, %s, now(), now(), NULL)
ON CONFLICT (id) DO UPDATE SET last_seen = now(), stopped_at = NULL
"""
PRUNE = "DELETE FROM tb_process_heartbeat WHERE last_seen < now() - make_interval(secs => %s)"
STOP = "UPDATE tb_process_heartbeat SET last_seen = now(), stopped_at = now() WHERE id = %s"


class Heartbeat:
    """The heartbeat of one process of one kind. ``alive`` (optional) vetoes a beat: a beat
    whose scheduler stopped ticking must go stale although its process is up."""

    def __init__(self, kind: str, alive: Any = None) -> None:
        self.kind = kind
        self.hostname = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.id = f"{kind}-{uuid.uuid4().hex}"
        self.alive = alive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._pruned_at = 0.0

    def beat(self) -> bool:
        """Record one heartbeat (and prune old rows now and then). Returns whether it was written."""
        if self.alive is not None and not self.alive():
            return False
        try:
            with connection.cursor() as cur:
                cur.execute(UPSERT, [self.id, self.kind, self.hostname, self.pid])
                if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                    cur.execute(PRUNE, [keep_s()])
                    self._pruned_at = time.monotonic()
        except Exception:
            if not self._failing:
                logger.warning("heartbeat.failed", extra={"kind": self.kind}, exc_info=True)
            self._failing = True
            # A broken connection (database restart) is replaced on the next beat.
            connection.close()
            return False
        if self._failing:
            logger.info("heartbeat.recovered", extra={"kind": self.kind})
        self._failing = False
        return True

    def _loop(self) -> None:
        try:
            self.beat()
            while not self._stop.wait(interval_s()):
                self.beat()
        finally:
            connection.close()

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._loop, name=f"tidebase-heartbeat-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and mark the row stopped, so a clean shutdown is not mistaken for a crash."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with connection.cursor() as cur:
                cur.execute(STOP, [self.id])
        except Exception:
            logger.info("heartbeat.stop_failed", extra={"kind": self.kind}, exc_info=True)
        finally:
            connection.close()


_running: dict[tuple[str, int], Heartbeat] = {}
"""Heartbeats of this process, keyed by (kind, pid): a forked embedded beat inherits the dict
but none of its threads."""


def start(kind: str, alive: Any = None) -> Heartbeat:
    key = (kind, os.getpid())
    if key not in _running:
        _running[key] = Heartbeat(kind, alive).start()
    return _running[key]


def stop(kind: str) -> None:
    heartbeat = _running.pop((kind, os.getpid()), None)
    if heartbeat is not None:
        heartbeat.stop()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    start("worker")


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    stop("worker")


@beat_init.connect  # type: ignore[untyped-decorator]
def _on_beat_init(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    service = sender
    # The scheduler sleeps until the next tick is due, so a pass may be a tick interval apart.
    limit = max(stale_s(), 2 * settings.TIDEBASE_RECONCILE_MS / 1000)

    def ticking() -> bool:
        # Celery stamps every scheduler pass (``Service._last_tick``, monotonic); a beat whose
        # scheduler wedged must not look alive because its heartbeat thread still runs.
        last = getattr(service, "_last_tick", None)
        return last is None or time.monotonic() - last < limit

    start("beat", ticking)
    # A standalone beat exits through SystemExit; an embedded one dies with its worker.
    atexit.register(stop, "beat")
