"""Requests that wait: gate and claim long-polls, and SSE streams.

Written once for both ways the project is served:

- Under the ASGI gateway (``tidebase_core.gateway``, what ``make run`` and the tests serve),
  ``request.META["tidebase.park"]`` is set. A long-poll that finds nothing to answer returns a
  ``Parked`` response instead of sleeping: the gateway awaits the ``Flag`` on its event loop,
  gives the thread back, and dispatches the same request again when the flag is set or the wait
  is up (``tidebase.deadline`` carries the original deadline, so a re-dispatch never extends it).
  An SSE stream returns an ``EventStream`` whose ``poll()`` the gateway calls on a worker thread
  between awaits. An open long-poll or stream costs a subscription and a coroutine, not a
  thread, and no database connection while it waits.
- Under plain WSGI (Django's test client, ``runserver``), the same view blocks its thread on the
  flag as before.

The subscription is taken *before* the first check and handed to the gateway with the parked
response, so a change committed between the check and the wait still wakes the waiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from tidebase_core.realtime import Flag, hub

T = TypeVar("T")

PARK = "tidebase.park"
DEADLINE = "tidebase.deadline"


class Parked(HttpResponse):
    """Never sent: tells the gateway to wait on ``flag`` for up to ``wait_s`` seconds, then
    dispatch the request again with ``deadline``. The gateway unsubscribes it (``release``)."""

    def __init__(self, flag: Flag, keys: tuple[str, ...], deadline: float, wait_s: float) -> None:
        super().__init__(status=200)
        self.flag, self.keys, self.deadline, self.wait_s = flag, keys, deadline, wait_s

    def release(self) -> None:
        hub.unsubscribe(self.flag, *self.keys)


@dataclass
class Poll(Generic[T]):
    """One check of a long-poll: its answer, whether it is final, and (optionally) how soon to
    check again without a notification (a gate's timeout falling due)."""

    value: T
    done: bool
    recheck_s: float | None = None


def long_poll(request: HttpRequest, keys: list[str], wait_ms: int, check: Callable[[], Poll[T]]) -> T | Parked:
    """Check until ``check`` is done, woken by notifications on ``keys`` (run ids, or
    ``queue:<name>``), for at most ``wait_ms`` (capped by ``TIDEBASE_GATE_WAIT_MAX_MS``)."""
    meta = request.META
    deadline: float = meta.get(DEADLINE) or time.monotonic() + min(wait_ms, settings.TIDEBASE_GATE_WAIT_MAX_MS) / 1000
    flag = hub.subscribe(*keys) if wait_ms > 0 else None
    parked = False
    try:
        while True:
            poll = check()
            remaining = deadline - time.monotonic()
            if poll.done or flag is None or remaining <= 0:
                return poll.value
            if poll.recheck_s is not None:
                remaining = min(remaining, poll.recheck_s)
            if meta.get(PARK):
                parked = True
                return Parked(flag, tuple(keys), deadline, remaining)
            close_old_connections()  # give the connection back to the pool while waiting
            flag.wait(remaining)
            flag.clear()
    finally:
        if flag is not None and not parked:
            hub.unsubscribe(flag, *keys)


class EventStream(StreamingHttpResponse):
    """A Server-Sent Events stream over ``poll()``: each call returns the next chunk, or None
    when there is nothing new (then the stream waits for ``flag``, or sends a keep-alive
    comment after ``TIDEBASE_SSE_KEEPALIVE_S``). ``poll`` must leave no database connection
    checked out when it returns (it runs on whichever worker thread is free)."""

    def __init__(self, keys: tuple[str, ...], poll: Callable[[], bytes | None]) -> None:
        self.keys, self.poll = keys, poll
        self.flag = hub.subscribe(*keys)  # before the first poll: nothing committed is missed
        self.keepalive_s = settings.TIDEBASE_SSE_KEEPALIVE_S
        super().__init__(self._blocking(), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"

    def release(self) -> None:
        hub.unsubscribe(self.flag, *self.keys)

    def _blocking(self) -> Iterator[bytes]:
        """The stream on a thread of its own (plain WSGI)."""
        try:
            yield b": connected\n\n"
            while True:
                self.flag.clear()
                chunk = self.poll()
                if chunk:
                    yield chunk
                elif not self.flag.wait(self.keepalive_s):
                    yield b": keep-alive\n\n"
        finally:
            self.release()
