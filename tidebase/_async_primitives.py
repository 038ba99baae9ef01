"""What the asyncio flavour of the SDK does differently: sleeping, fan-out, heartbeats, awaitables
and step timeouts. Its twin is ``_sync_primitives.py`` (same names, blocking); everything else in
the SDK core is written once, in ``_async_client.py``/``_async_context.py``, and
``scripts/unasync.py`` derives ``_client.py``/``_context.py`` from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

__all__ = ["Heartbeat", "call_step", "gather", "result_of", "settle", "sleep"]

T = TypeVar("T")
R = TypeVar("R")


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def result_of(value: Any, what: str) -> Any:
    """A workflow's return value, awaited when it is an awaitable."""
    return await value if inspect.isawaitable(value) else value


async def call_step(fn: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """Call a step function on the event loop; an awaitable it returns is awaited and cancelled
    at ``timeout_s`` (``TimeoutError``). A blocking function holds the loop: it cannot be timed out."""
    result = fn()
    if inspect.isawaitable(result):
        async with asyncio.timeout(timeout_s):
            result = await result
    return result


async def gather(fn: Callable[[T], Awaitable[R]], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` concurrently (tasks), results in order."""
    return list(await asyncio.gather(*(fn(item) for item in items)))


async def settle(outcome: Any) -> None:
    """A user callback's return value: awaited when it is an awaitable."""
    if inspect.isawaitable(outcome):
        await outcome


class Heartbeat:
    """Calls ``beat()`` every ``interval_s`` in an asyncio task. On the first failure it calls
    ``on_lost(error)`` (awaited if it returns an awaitable) and ends."""

    def __init__(
        self,
        beat: Callable[[], Awaitable[object]],
        interval_s: float,
        on_lost: Callable[[BaseException], Any] | None,
        name: str,
    ) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(beat, interval_s, on_lost), name=name)

    async def _run(
        self, beat: Callable[[], Awaitable[object]], interval_s: float, on_lost: Callable[[BaseException], Any] | None
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await beat()
            except Exception as error:
                if on_lost is not None:
                    await settle(on_lost(error))
                return

    @property
    def running(self) -> bool:
        return not self._task.done()

    def stop(self) -> None:
        """Cancel the task without waiting for it."""
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def aclose(self) -> None:
        """Cancel the task and wait until it has ended."""
        self.stop()
        if self._task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
