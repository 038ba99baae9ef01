"""Cross-process wake-ups for SSE streams and gate long-polls.

Every event insert fires ``pg_notify('tidebase_events', run_id)`` from a trigger (migration
0002). Postgres delivers a notification only when the inserting transaction commits, to every
listening connection of every web process, so a subscriber is woken exactly for committed
events whichever replica wrote them. Each process runs one listener thread with its own
connection; waiters re-read the events table, so a lost notification delays, never drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

import psycopg
from django.db import connections

logger = logging.getLogger(__name__)
CHANNEL = "tidebase_events"


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._listen_forever, name="tidebase-listen", daemon=True)
            self._thread.start()
        self._ready.wait(timeout=5)

    def subscribe(self, run_id: str) -> threading.Event:
        """Register interest in a run. Subscribe *before* reading the backlog, so an event
        committed between the read and the wait still wakes the waiter."""
        self._ensure_started()
        flag = threading.Event()
        with self._lock:
            self._waiters[run_id].add(flag)
        return flag

    def unsubscribe(self, run_id: str, flag: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(flag)
                if not waiters:
                    del self._waiters[run_id]

    def _wake(self, run_id: str | None) -> None:
        with self._lock:
            groups = [self._waiters.get(run_id, set())] if run_id else list(self._waiters.values())
            for group in groups:
                for flag in group:
                    flag.set()

    def _listen_forever(self) -> None:
        params = connections["default"].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        backoff = 0.5
        while True:
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._ready.set()
                    self._wake(None)  # anything may have happened while we were away
                    backoff = 0.5
                    for note in conn.notifies():
                        self._wake(note.payload)
            except Exception:  # pragma: no cover - reconnect loop
                logger.exception("realtime.listen.failed")
                self._ready.set()
                self._wake(None)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)


hub = Hub()
