"""The blocking client against a real server, on the calls and the ``timeout_s`` meaning it used to
lack next to the async client (issue #16): ``tide.cancel``, ``tide.attach``, the session's
``gates_begin``/``gates_get``, and a step timeout that fails the attempt like the async client's."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.sdk_live.conftest import FAST_RETRY, detail
from tidebase import RunCancelled, RunContext, Tidebase
from tidebase.aio import AsyncRunContext, AsyncTidebase


def test_sync_client_attaches_a_session_and_cancels_the_run(live_server_url: str) -> None:
    with Tidebase(live_server_url, retry=FAST_RETRY) as tide:
        session = tide.attach("attach-cancel-sync", input={"n": 1}, heartbeat_s=None)
        assert session.step("first", lambda: 1) == 1
        gate = session.gates_begin("approve", "Go?", data={"n": 1})
        assert gate["status"] == "pending"
        assert session.gates_get(gate["gateId"])["status"] == "pending"

        cancelled = tide.cancel(session.run_id, reason="operator said no", actor="test:ops")
        assert cancelled["status"] == "cancelled"
        with pytest.raises(RunCancelled):
            session.step("second", lambda: 2)

        with pytest.raises(RunCancelled):  # a cancelled run cannot be held again
            tide.attach("attach-cancel-sync", run_id=session.run_id, heartbeat_s=None)
    body = detail(live_server_url, session.run_id)
    assert body["run"]["status"] == "cancelled"
    assert [s["name"] for s in body["steps"]] == ["first"]
    assert [e for e in body["events"] if e["type"] == "run.cancelled"]


def failed_step(url: str, run_id: str, name: str) -> dict[str, Any]:
    step = next(s for s in detail(url, run_id)["steps"] if s["name"] == name)
    return {key: step.get(key) for key in ("status", "attempt", "error")}


def test_sync_step_timeout_is_enforced_like_the_async_clients(live_server_url: str) -> None:
    release = threading.Event()
    workers: list[threading.Thread] = []

    def blocked() -> str:
        workers.append(threading.current_thread())
        release.wait(60)  # released below; 60 s only bounds a hang
        return "late"

    def workflow(run: RunContext, input: Any) -> Any:
        return run.step("slow", blocked, timeout_s=0.2, retries=1)

    with Tidebase(live_server_url, retry=FAST_RETRY) as tide:
        sync_run = tide.runs.create("timeout-sync", input={})["id"]
        try:
            with pytest.raises(TimeoutError):
                tide.run("timeout-sync", workflow, run_id=sync_run)
        finally:
            release.set()
        for worker in workers:
            worker.join(60)  # the abandoned attempts finish in the background; nothing is written

    async def async_workflow(run: AsyncRunContext, input: Any) -> Any:
        return await run.step("slow", lambda: asyncio.sleep(60), timeout_s=0.2, retries=1)

    async def main() -> str:
        async with AsyncTidebase(live_server_url, retry=FAST_RETRY) as tide:
            run_id: str = (await tide.runs.create("timeout-async", input={}))["id"]
            with pytest.raises(TimeoutError):
                await tide.run("timeout-async", async_workflow, run_id=run_id)
            return run_id

    async_run = asyncio.run(main())
    assert len(workers) == 2
    sync_step = failed_step(live_server_url, sync_run, "slow")
    assert sync_step["status"] != "completed"
    assert sync_step == failed_step(live_server_url, async_run, "slow")
    assert detail(live_server_url, sync_run)["run"]["status"] == "failed"
