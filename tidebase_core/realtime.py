"""Cross-process wake-ups for SSE streams and gate long-polls.

Every event insert fires ``pg_notify('tidebase_events', run_id)`` from a trigger (migration
0002). Postgres delivers a notification only when the inserting transaction commits, to every
listening connection of every web process, so a subscriber is woken exactly for committed
events whichever replica wrote them. Each process runs one listener thread with its own
connection; waiters re-read the events table, so a lost notification delays, never drops.

A waiter is a ``Flag``: a thread blocks on ``wait()`` (plain WSGI), a coroutine of the ASGI
gateway awaits ``future()`` (``tidebase_core.gateway``), so a parked long-poll or SSE stream
costs a subscription and a future, not a thread.
"""

from __future__ import annotations

import asyncio
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


class Flag:
    """A ``threading.Event`` that a coroutine can await too. ``set()`` is called from the
    listener thread; an awaiting coroutine is woken on its own loop."""

    __slots__ = ("_event", "_waiter")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def set(self) -> None:
        self._event.set()  # before reading the waiter: see future()
        waiter = self._waiter
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future)

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def future(self) -> asyncio.Future[None]:
        """A future of the running loop, done once the flag is set (at once if it already is).
        The waiter is registered before the flag is read, and ``set()`` sets before it reads the
        waiter, so a concurrent ``set()`` is never missed. One awaiting coroutine per flag."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiter = (loop, future)
        if self._event.is_set():
            _resolve(future)
        return future

    def forget(self) -> None:
        """Drop the awaiting coroutine's future (it timed out or its client left)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter[1].cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Flag]] = defaultdict(set)
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

    def subscribe(self, *keys: str) -> Flag:
        """Register interest in runs (by id) or queues ("queue:<name>"). Subscribe *before*
        reading the current state, so a change committed in between still wakes the waiter."""
        self._ensure_started()
        flag = Flag()
        with self._lock:
            for key in keys:
                self._waiters[key].add(flag)
        return flag

    def unsubscribe(self, flag: Flag, *keys: str) -> None:
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
