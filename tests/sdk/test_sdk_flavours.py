"""The sync and async SDK are one source (scripts/unasync.py): both flavours offer the same calls
and give ``timeout_s`` the same meaning (issue #16)."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from typing import Any

import pytest

import tidebase
import tidebase.aio
from tests.sdk.conftest import make_async
from tests.sdk.fake_server import FakeServer
from tidebase import RunContext, Tidebase, _current

PAIRS = [
    ("Tidebase", "AsyncTidebase"),
    ("Runs", "AsyncRuns"),
    ("Queues", "AsyncQueues"),
    ("Schedules", "AsyncSchedules"),
    ("RunContext", "AsyncRunContext"),
    ("RunSession", "AsyncRunSession"),
    ("RunGates", "AsyncRunGates"),
    ("RunState", "AsyncRunState"),
    ("RunUsage", "AsyncRunUsage"),
    ("RunSnapshots", "AsyncRunSnapshots"),
]
# The asyncio spelling of a call; AsyncRunSession.close (stop without waiting) has no blocking
# twin because the blocking close never waits.
ASYNC_SPELLING = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
ASYNC_ONLY = {("AsyncRunSession", "close")}


def calls(cls: type, *, async_flavour: bool) -> dict[str, list[tuple[str, Any, Any]]]:
    """Public methods (and context-manager hooks) with their parameters."""
    found = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ASYNC_SPELLING and name not in ("__enter__", "__exit__"):
            continue
        if not callable(member) or (async_flavour and (cls.__name__, name) in ASYNC_ONLY):
            continue
        params = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        found[ASYNC_SPELLING.get(name, name) if async_flavour else name] = params
    return found


@pytest.mark.parametrize(("sync_name", "async_name"), PAIRS)
def test_both_flavours_offer_the_same_calls(sync_name: str, async_name: str) -> None:
    sync_cls, async_cls = getattr(tidebase, sync_name), getattr(tidebase.aio, async_name)
    assert calls(sync_cls, async_flavour=False) == calls(async_cls, async_flavour=True)


def fails(fake: FakeServer) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in fake.calls("POST", "/steps/step_\\w+/fail$")]


def without_owner(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in b.items() if k != "leaseOwner"} for b in bodies]


def test_sync_step_timeout_fails_the_attempt_like_the_async_client(tide: Tidebase, fake: FakeServer) -> None:
    release = threading.Event()
    seen: list[tuple[str | None, threading.Thread]] = []

    def blocked() -> str:
        frame = _current.current_step()
        seen.append((frame.name if frame else None, threading.current_thread()))
        release.wait(60)  # released below; 60 s only bounds a hang
        return "late"

    def workflow(run: RunContext, input: Any) -> Any:
        frame_name = run.step("quick", lambda: _current.current_step().name, timeout_s=30)  # type: ignore[union-attr]
        assert frame_name == "quick"  # in time: the value comes back
        return run.step("slow", blocked, timeout_s=0.05, retries=1)

    try:
        with pytest.raises(TimeoutError):
            tide.run("wf", workflow)
    finally:
        release.set()
    # Both attempts ran in worker threads that saw the step as current, and were abandoned.
    assert [name for name, _ in seen] == ["slow", "slow"]
    assert all(thread is not threading.current_thread() for _, thread in seen)
    for _, thread in seen:
        thread.join(60)
    sync_fails = fails(fake)
    assert [f["retryable"] for f in sync_fails] == [True, False]
    assert sync_fails[0]["error"] == {"name": "TimeoutError", "message": ""}
    (run_id,) = fake.runs
    assert fake.steps[run_id]["quick"]["status"] == "completed"
    assert fake.steps[run_id]["slow"]["status"] != "completed"  # the late results were dropped
    assert fake.runs[run_id]["status"] == "failed"

    # The async client records the same failures for an awaitable that outlives its timeout.
    async_fake = FakeServer()

    async def main() -> None:
        async with make_async(async_fake) as tide:
            with pytest.raises(TimeoutError):
                await tide.run("wf", lambda r, i: r.step("slow", lambda: asyncio.sleep(30), timeout_s=0.05, retries=1))

    asyncio.run(main())
    assert without_owner(fails(async_fake)) == without_owner(sync_fails)


def test_sync_step_timeout_cancels_an_awaitable_at_the_deadline(tide: Tidebase, fake: FakeServer) -> None:
    cancelled: list[bool] = []

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    with pytest.raises(TimeoutError):
        tide.run("wf", lambda run, _: run.step("slow", slow, timeout_s=0.05))
    assert cancelled == [True]
    assert [f["retryable"] for f in fails(fake)] == [False]
