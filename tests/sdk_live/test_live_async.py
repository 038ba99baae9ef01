"""Our async client (``tidebase.aio.AsyncTidebase``) against a real server: the same contract
as test_live_sync.py — replay, retries, gates, cancellation, sessions and fencing, JSON round
trips, and the cost of a resume."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tests.sdk_live.conftest import (
    FAST_RETRY,
    AsyncLoggingTransport,
    Crash,
    RequestLog,
    cancel_run,
    detail,
    pending_gate,
    resolve_gate,
    until_unleased_async,
    wait_for,
)
from tests.sdk_live.models import EXPECTED_INPUT_JSON, EXPECTED_JSON, FIELDS, STEP_INPUT, TicketDC, TicketModel
from tidebase import CheckpointDict, InputMismatch, LeaseLost, RunCancelled, hash_input
from tidebase.aio import AsyncRunContext, AsyncTidebase

T = TypeVar("T")


def client(url: str, log: RequestLog | None = None) -> AsyncTidebase:
    transport = AsyncLoggingTransport(log) if log is not None else None
    return AsyncTidebase(url, retry=FAST_RETRY, transport=transport)


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def in_thread(fn: Callable[[], Any]) -> None:
    threading.Thread(target=fn, daemon=True).start()


# ---- replay, retries -------------------------------------------------------------------------


def test_replay_never_reexecutes_a_finished_step(live_server_url: str) -> None:
    executed: Counter[str] = Counter()
    fail_before_c = True

    async def work(name: str, value: int) -> int:
        executed[name] += 1
        await asyncio.sleep(0)
        return value

    async def workflow(run: AsyncRunContext, input: Any) -> int:
        a = await run.step("a", lambda: work("a", 1), input={"n": 1})
        b = await run.step("b", lambda: work("b", 2), input={"n": 2})
        if fail_before_c:
            raise RuntimeError("flaky dependency")
        c = await run.step("c", lambda: work("c", 3), input={"n": 3})
        return int(a + b + c)

    async def main() -> None:
        nonlocal fail_before_c
        async with client(live_server_url) as tide:
            run_id = (await tide.runs.create("replay-async", input={}))["id"]
            with pytest.raises(RuntimeError, match="flaky dependency"):
                await tide.run("replay-async", workflow, run_id=run_id)
            fail_before_c = False
            assert await tide.run("replay-async", workflow, run_id=run_id) == 6
            assert executed == {"a": 1, "b": 1, "c": 1}
            assert await tide.run("replay-async", workflow, run_id=run_id) == 6
            assert executed == {"a": 1, "b": 1, "c": 1}
            steps = detail(live_server_url, run_id)["steps"]
            assert [(s["name"], s["status"], s["attempt"]) for s in steps] == [
                ("a", "completed", 1),
                ("b", "completed", 1),
                ("c", "completed", 1),
            ]

    run_async(main)


def test_retries_re_begin_the_step(live_server_url: str) -> None:
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"attempt {attempts} failed")
        return "ok"

    async def main() -> str:
        async with client(live_server_url) as tide:
            run = await tide.runs.create("retries-async", input={})
            result: str = await tide.run(
                "retries-async", lambda run, _: run.step("call", flaky, retries=2), run_id=run["id"]
            )
            return f"{run['id']}:{result}"

    run_id, result = run_async(main).split(":")
    assert (result, attempts) == ("ok", 3)
    body = detail(live_server_url, run_id)
    (step,) = body["steps"]
    assert (step["status"], step["attempt"]) == ("completed", 3)
    assert sum(e["type"] == "step.started" for e in body["events"]) == 3
    failed = [e["payload"] for e in body["events"] if e["type"] == "step.failed"]
    assert [(f["retryable"], f["resumeDecision"]) for f in failed] == [(True, "auto_retry")] * 2


# ---- gates -----------------------------------------------------------------------------------


def test_gate_decision_replays_after_a_crash(short_lease: str) -> None:
    log = RequestLog()

    async def crashing(run: AsyncRunContext, input: Any) -> None:
        decision = await run.gate("approve-deploy", "Deploy api?")
        assert decision.approved
        raise Crash

    async def workflow(run: AsyncRunContext, input: Any) -> str:
        decision = await run.gate("approve-deploy", "Deploy api?")
        return f"{decision.decision} by {decision.actor}"

    async def main() -> tuple[str, str]:
        async with client(short_lease) as tide, client(short_lease, log) as resumed:
            run_id = (await tide.runs.create("gate-replay-async", input={}))["id"]
            in_thread(lambda: resolve_gate(short_lease, run_id, wait_for(lambda: pending_gate(short_lease, run_id))))
            with pytest.raises(Crash):
                await tide.run("gate-replay-async", crashing, run_id=run_id)
            result = await until_unleased_async(lambda: resumed.run("gate-replay-async", workflow, run_id=run_id))
            return run_id, result

    run_id, result = run_async(main)
    assert result == "approved by test:operator"
    assert log.matching("GET", "/gates/") == []
    assert [(g["name"], g["decision"]) for g in detail(short_lease, run_id)["gates"]] == [
        ("approve-deploy", "approved")
    ]


def test_gate_returns_promptly_through_the_long_poll(live_server_url: str) -> None:
    log = RequestLog()

    async def main() -> Any:
        async with client(live_server_url, log) as tide:
            run_id = (await tide.runs.create("gate-latency-async", input={}))["id"]

            def approve_later() -> None:
                gate = wait_for(lambda: pending_gate(live_server_url, run_id))
                wait_for(lambda: log.matching("GET", "/gates/"))  # the waiter's long-poll is on its way
                resolve_gate(live_server_url, run_id, gate)

            in_thread(approve_later)
            return await tide.run(
                "gate-latency-async", lambda run, _: run.gate("ship", "Ship it?", poll_s=0.02), run_id=run_id
            )

    assert run_async(main).approved
    polls = log.matching("GET", "/gates/")
    assert 1 <= len(polls) <= 3
    assert all("waitMs=" in query for _, _, query in polls)


# ---- cancellation ----------------------------------------------------------------------------


def test_cancel_is_observed_at_the_next_step(live_server_url: str) -> None:
    executed: list[str] = []

    async def main() -> str:
        async with client(live_server_url) as tide:
            run_id: str = (await tide.runs.create("cancel-step-async", input={}))["id"]

            async def first() -> int:
                executed.append("first")
                await asyncio.to_thread(cancel_run, live_server_url, run_id)
                return 1

            async def workflow(run: AsyncRunContext, input: Any) -> None:
                await run.step("first", first)
                await run.step("second", lambda: executed.append("second"))

            with pytest.raises(RunCancelled):
                await tide.run("cancel-step-async", workflow, run_id=run_id)
            return run_id

    run_id = run_async(main)
    assert executed == ["first"]
    body = detail(live_server_url, run_id)
    assert body["run"]["status"] == "cancelled"
    assert "run.failed" not in [e["type"] for e in body["events"]]


def test_cancel_unblocks_a_waiting_gate(live_server_url: str) -> None:
    async def main() -> str:
        async with client(live_server_url) as tide:
            run_id: str = (await tide.runs.create("cancel-gate-async", input={}))["id"]

            def cancel_when_pending() -> None:
                wait_for(lambda: pending_gate(live_server_url, run_id))
                cancel_run(live_server_url, run_id)

            in_thread(cancel_when_pending)
            with pytest.raises(RunCancelled):
                await tide.run("cancel-gate-async", lambda run, _: run.gate("approve", "Go?"), run_id=run_id)
            return run_id

    assert detail(live_server_url, run_async(main))["run"]["status"] == "cancelled"


# ---- sessions and fencing --------------------------------------------------------------------


def test_session_is_fenced_after_losing_its_lease(short_lease: str) -> None:
    executed: list[str] = []

    async def main() -> None:
        async with client(short_lease) as old_client, client(short_lease) as new_client:
            old = await old_client.runs.attach("session-async", input={}, heartbeat_s=None)
            assert await old.step("a", lambda: executed.append("old:a") or "a") == "a"
            new = await until_unleased_async(
                lambda: new_client.runs.attach("session-async", run_id=old.run_id, heartbeat_s=None)
            )
            with pytest.raises(LeaseLost):
                await old.step("b", lambda: executed.append("old:b"))
            assert await new.step("b", lambda: executed.append("new:b") or "b") == "b"
            await new.complete("done")

    run_async(main)
    assert executed == ["old:a", "new:b"]


def test_session_step_in_flight_at_takeover_cannot_complete(short_lease: str) -> None:
    async def main() -> str:
        async with client(short_lease) as old_client, client(short_lease) as new_client:
            old = await old_client.runs.attach("session-inflight-async", input={}, heartbeat_s=None)

            async def slow() -> str:
                new = await until_unleased_async(
                    lambda: new_client.runs.attach("session-inflight-async", run_id=old.run_id, heartbeat_s=None)
                )
                slow.new = new  # type: ignore[attr-defined]
                return "old result"

            with pytest.raises(LeaseLost):
                await old.step("slow", slow)
            new = slow.new  # type: ignore[attr-defined]
            assert await new.step("slow", lambda: "new result") == "new result"
            await new.complete(None)
            run_id: str = old.run_id
            return run_id

    run_id = run_async(main)
    slow = next(s for s in detail(short_lease, run_id)["steps"] if s["name"] == "slow")
    assert (slow["status"], slow["output"]) == ("completed", "new result")


def test_on_lease_lost_fires_when_the_heartbeat_is_refused(short_lease: str) -> None:
    async def main() -> BaseException:
        lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        async with client(short_lease) as old_client, client(short_lease) as new_client:
            # The first heartbeat comes well after the 1.5 s lease lapsed and was taken over.
            old = await old_client.runs.attach(
                "session-lost-async", input={}, heartbeat_s=4.0, on_lease_lost=lost.set_result
            )
            new = await until_unleased_async(
                lambda: new_client.runs.attach("session-lost-async", run_id=old.run_id, heartbeat_s=None)
            )
            error = await asyncio.wait_for(lost, 30)
            assert not old.heartbeating
            await new.complete(None)
            return error

    assert isinstance(run_async(main), LeaseLost)


# ---- JSON ------------------------------------------------------------------------------------


def test_json_values_round_trip_through_the_server(live_server_url: str) -> None:
    executed: Counter[str] = Counter()
    crash = True

    async def make(kind: str) -> Any:
        executed[kind] += 1
        return TicketDC(**FIELDS) if kind == "dc" else TicketModel(**FIELDS)

    async def workflow(run: AsyncRunContext, input: Any) -> dict[str, Any]:
        dc = await run.step("dc", lambda: make("dc"), input=STEP_INPUT)
        model = await run.step("model", lambda: make("model"), input=STEP_INPUT, returns=TicketModel)
        if crash:
            raise RuntimeError("crash after the checkpoints")
        return {"dc": dc, "model": model}

    async def main() -> tuple[str, Any]:
        nonlocal crash
        async with client(live_server_url) as tide:
            run_id = (await tide.runs.create("json-async", input={"ticket": TicketModel(**FIELDS)}))["id"]
            with pytest.raises(RuntimeError):
                await tide.run("json-async", workflow, run_id=run_id)
            crash = False
            return run_id, await tide.run("json-async", workflow, run_id=run_id)

    run_id, replayed = run_async(main)
    assert executed == {"dc": 1, "model": 1}
    assert isinstance(replayed["dc"], CheckpointDict)
    assert replayed["dc"] == EXPECTED_JSON
    assert replayed["model"] == TicketModel(**FIELDS)
    # our encoding sorts sets (mode="json" keeps their hash-seed-dependent order)
    model_json = {**TicketModel(**FIELDS).model_dump(mode="json"), "tags": sorted(FIELDS["tags"])}
    body = detail(live_server_url, run_id)
    assert body["run"]["input"] == {"ticket": model_json}
    assert body["run"]["result"] == {"dc": EXPECTED_JSON, "model": model_json}
    for step in body["steps"]:
        assert step["input"] == EXPECTED_INPUT_JSON
        assert step["inputHash"] == hash_input(STEP_INPUT)


# ---- the cost of a resume --------------------------------------------------------------------

K = 5


async def crashed_run(tide: AsyncTidebase, name: str, executed: Counter[str]) -> str:
    async def workflow(run: AsyncRunContext, input: Any) -> None:
        for i in range(K):
            await run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
        raise Crash

    run_id: str = (await tide.runs.create(name, input={}))["id"]
    with pytest.raises(Crash):
        await tide.run(name, workflow, run_id=run_id)
    return run_id


def test_resume_loads_all_checkpoints_in_one_request(short_lease: str) -> None:
    executed: Counter[str] = Counter()
    log = RequestLog()

    async def workflow(run: AsyncRunContext, input: Any) -> int:
        total = 0
        for i in range(K + 1):
            total += await run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
        return total

    async def main() -> int:
        async with client(short_lease) as tide, client(short_lease, log) as resumed:
            run_id = await crashed_run(tide, "resume-cost-async", executed)
            result: int = await until_unleased_async(lambda: resumed.run("resume-cost-async", workflow, run_id=run_id))
            return result

    assert run_async(main) == sum(range(K + 1))
    assert executed == {f"s{i}": 1 for i in range(K + 1)}
    loads = log.matching("GET", "/steps")
    assert len(loads) == 1
    assert "status=completed" in loads[0][2]
    assert log.count("POST", "/steps/begin") == 1


def test_resume_still_checks_input_hashes(short_lease: str) -> None:
    executed: Counter[str] = Counter()

    async def changed(run: AsyncRunContext, input: Any) -> None:
        for i in range(K + 1):
            step_input = {"i": i, "changed": True} if i == 2 else {"i": i}
            await run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input=step_input)

    async def main() -> None:
        async with client(short_lease) as tide, client(short_lease) as resumed:
            run_id = await crashed_run(tide, "resume-mismatch-async", executed)
            with pytest.raises(InputMismatch) as raised:
                await until_unleased_async(lambda: resumed.run("resume-mismatch-async", changed, run_id=run_id))
            assert raised.value.step_name == "s2"

    run_async(main)
    assert executed == {f"s{i}": 1 for i in range(K)}


def test_resume_observes_cancellation_at_the_first_executing_step(short_lease: str) -> None:
    executed: Counter[str] = Counter()

    async def main() -> str:
        async with client(short_lease) as tide, client(short_lease) as resumed:
            run_id = await crashed_run(tide, "resume-cancel-async", executed)

            async def workflow(run: AsyncRunContext, input: Any) -> None:
                for i in range(K + 1):
                    await run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
                    if i == 1:
                        await asyncio.to_thread(cancel_run, short_lease, run_id)

            with pytest.raises(RunCancelled):
                await until_unleased_async(lambda: resumed.run("resume-cancel-async", workflow, run_id=run_id))
            return run_id

    run_id = run_async(main)
    assert executed == {f"s{i}": 1 for i in range(K)}
    assert detail(short_lease, run_id)["run"]["status"] == "cancelled"
