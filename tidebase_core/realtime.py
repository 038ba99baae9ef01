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
QUEUE_CHANNEL = "tidebase_queues"
"""Payload: a queue name, notified when a run becomes claimable there (waiters use "queue:<name>")."""


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

    def subscribe(self, *keys: str) -> threading.Event:
        """Register interest in runs (by id) or queues ("queue:<name>"). Subscribe *before*
        reading the current state, so a change committed in between still wakes the waiter."""
        self._ensure_started()
        flag = threading.Event()
        with self._lock:
            for key in keys:
                self._waiters[key].add(flag)
        return flag

    def unsubscribe(self, flag: threading.Event, *keys: str) -> None:
        with self._lock:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(flag)
                    if not waiters:
                        del self._waiters[key]

    def _wake(self, key: str | None) -> None:
        with self._lock:
            groups = [self._waiters.get(key, set())] if key else list(self._waiters.values())
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
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self._ready.set()
                    self._wake(None)  # anything may have happened while we were away
                    backoff = 0.5
                    for note in conn.notifies():
                        self._wake(note.payload if note.channel == CHANNEL else "queue:" + note.payload)
            except Exception:  # pragma: no cover - reconnect loop
                logger.exception("realtime.listen.failed")
                self._ready.set()
                self._wake(None)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)


hub = Hub()
