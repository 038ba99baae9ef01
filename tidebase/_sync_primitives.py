"""What the blocking flavour of the SDK does differently: sleeping, fan-out, heartbeats, awaitables
and step timeouts. The twin of ``_async_primitives.py`` (same names); the code that uses them,
``_client.py``/``_context.py``, is generated from the async core by ``scripts/unasync.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ._exceptions import AsyncStepInSyncClient

__all__ = ["Heartbeat", "call_step", "gather", "result_of", "settle", "sleep"]

T = TypeVar("T")
R = TypeVar("R")


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def result_of(value: Any, what: str) -> Any:
    """A workflow's return value; an awaitable is run to completion on a fresh event loop."""
    return _run_awaitable(value, what) if inspect.isawaitable(value) else value


def call_step(fn: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """Call a step function and return its result, enforcing ``timeout_s`` like the async client.

    Without a timeout ``fn`` runs on the calling thread. With one it runs in a daemon worker
    thread (in a copy of the caller's context, so ``tidebase.current_run()`` and the current step
    are seen) and the caller stops waiting at the deadline with ``TimeoutError``, the error the
    async client raises. A thread cannot be stopped from outside: the abandoned call runs on in
    the background until it returns, and its result or error is dropped. An awaitable that
    ``fn`` returns is run on the calling thread and cancelled at the deadline, as in asyncio.
    """
    if timeout_s is None:
        return result_of(fn(), what)
    deadline = time.monotonic() + timeout_s
    result = _call_in_thread(fn, timeout_s, what)
    if inspect.isawaitable(result):
        return _run_awaitable(result, what, max(0.0, deadline - time.monotonic()))
    return result


def _call_in_thread(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
    context = contextvars.copy_context()

    def call() -> None:
        try:
            outcome.set_result(context.run(fn))
        except BaseException as error:  # handed to the waiting caller (if it still waits)
            outcome.set_exception(error)

    threading.Thread(target=call, name=f"tidebase {what}", daemon=True).start()
    try:
        outcome.exception(timeout_s)  # waits; raises TimeoutError only when the wait runs out
    except concurrent.futures.TimeoutError:
        raise TimeoutError from None  # what asyncio.timeout raises in the async client
    return outcome.result()  # fn's value, or fn's own error


def _run_awaitable(value: Any, what: str, timeout_s: float | None = None) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def wait() -> Any:
            async with asyncio.timeout(timeout_s):
                return await value

        return asyncio.run(wait())
    if inspect.iscoroutine(value):
        value.close()
    raise AsyncStepInSyncClient(
        f"The {what} returned an awaitable while an event loop is running; the sync client cannot "
        "await it. Use `from tidebase.aio import AsyncTidebase` in async code.",
        code="async_step_in_sync_client",
    )


def gather(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` in parallel threads, results in order."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def settle(outcome: Any) -> None:
    """A user callback's return value: ignored by the blocking client."""


class Heartbeat:
    """Calls ``beat()`` every ``interval_s`` in a daemon thread. On the first failure it stops,
    calls ``on_lost(error)`` and ends."""

    def __init__(
        self,
        beat: Callable[[], object],
        interval_s: float,
        on_lost: Callable[[BaseException], Any] | None,
        name: str,
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(beat, interval_s, on_lost), name=name, daemon=True)
        self._thread.start()

    def _run(
        self, beat: Callable[[], object], interval_s: float, on_lost: Callable[[BaseException], Any] | None
    ) -> None:
        while not self._stop.wait(interval_s):
            try:
                beat()
            except Exception as error:
                self._stop.set()
                if on_lost is not None:
                    on_lost(error)
                return

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def close(self) -> None:
        """Stop beating; does not wait for a heartbeat already in flight."""
        self._stop.set()
