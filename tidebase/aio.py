"""Asyncio client for Tidebase for Django.

::

    from tidebase.aio import AsyncTidebase

    tide = AsyncTidebase()

    async def workflow(run, input):
        result = await run.step("triage", lambda: agent.run(input["report"]), input=input)
        await run.state_set({"phase": "done"})
        return result.output

    await tide.run("bug-triage", workflow, input={"report": "..."})

All I/O is native ``httpx.AsyncClient``; step functions may be sync, ``async
def``, or lambdas returning an awaitable. Errors are the ones in :mod:`tidebase`.
"""

from __future__ import annotations

from ._async_client import AsyncQueues, AsyncRuns, AsyncSchedules, AsyncTidebase
from ._async_context import (
    AsyncRunContext,
    AsyncRunGates,
    AsyncRunSession,
    AsyncRunSnapshots,
    AsyncRunState,
    AsyncRunUsage,
)
from ._base import RetryPolicy
from ._exceptions import RunCancelled, TidebaseError
from ._protocol import GateDecision

__all__ = [
    "AsyncQueues",
    "AsyncRunContext",
    "AsyncRunGates",
    "AsyncRunSession",
    "AsyncRunSnapshots",
    "AsyncRunState",
    "AsyncRunUsage",
    "AsyncRuns",
    "AsyncSchedules",
    "AsyncTidebase",
    "GateDecision",
    "RetryPolicy",
    "RunCancelled",
    "TidebaseError",
]
