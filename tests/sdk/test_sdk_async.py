from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic_ai import Agent
from pydantic_ai import RunContext as AgentContext
from pydantic_ai.models.test import TestModel

from tests.sdk.conftest import NO_WAIT, make_async
from tests.sdk.fake_server import FakeServer
from tidebase import InputMismatch, LeaseLost, RunCancelled, StepOutputNotSerializable, hash_input
from tidebase.aio import AsyncRunContext, AsyncTidebase


class AsyncOnlyTransport(httpx.MockTransport):
    """Fails the test if the async client ever takes a sync (thread) path."""

    def __init__(self, fake: FakeServer) -> None:
        super().__init__(fake.handle)
        self.threads: set[int] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise AssertionError("sync transport used by the async client")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.threads.add(threading.get_ident())
        return await super().handle_async_request(request)


def test_async_client__uses_async_transport_on_the_loop_thread(fake: FakeServer) -> None:
    transport = AsyncOnlyTransport(fake)
    assert isinstance(transport, httpx.AsyncBaseTransport)

    async def main() -> Any:
        async with AsyncTidebase("http://tidebase.test", transport=transport, retry=NO_WAIT) as tide:

            async def workflow(run: AsyncRunContext, input: Any) -> Any:
                first = await run.step("sync-fn", lambda: 1)
                second = await run.step("lambda-awaitable", lambda: asyncio.sleep(0, result=2))

                async def third() -> int:
                    return 3

                return [first, second, await run.step("async-fn", third)]

            return await tide.run("wf", workflow), threading.get_ident(), threading.active_count()

    before = threading.active_count()
    result, loop_thread, during = asyncio.run(main())
    assert result == [1, 2, 3]
    assert transport.threads == {loop_thread}
    assert during == before


# ---- the SEED-pydantic-ai page, verbatim shapes ---------------------------


@dataclass
class Deps:
    tide_run: AsyncRunContext


tickets: list[tuple[str, str]] = []

agent = Agent(TestModel(call_tools=["create_ticket"]), deps_type=Deps)


@agent.tool
async def create_ticket(ctx: AgentContext[Deps], title: str, body: str) -> str:
    run = ctx.deps.tide_run

    async def create() -> str:
        tickets.append((title, body))
        return f"ticket:{title}"

    return await run.step(  # type: ignore[no-any-return]
        f"create-ticket:{title}",
        lambda: create(),
        input={"title": title, "body": body},
        side_effects=["ticketing-api"],
        idempotency_key=f"ticket-{run.run_id}-{title}",
    )


async def workflow(run: AsyncRunContext, input: dict[str, Any]) -> Any:
    result = await run.step(
        "triage",
        lambda: agent.run(input["report"], deps=Deps(tide_run=run)),
        input={"report": input["report"]},
    )
    await run.state_set({"phase": "done"})
    return result.output


def test_seed_shape__pydantic_ai_agent_with_tool_checkpoints(fake: FakeServer) -> None:
    tickets.clear()

    async def main() -> tuple[Any, Any]:
        async with make_async(fake) as tide:
            first = await tide.run("bug-triage", workflow, input={"report": "crash on save"})
            run_id = next(iter(fake.runs))
            fake.runs[run_id]["status"] = "running"  # as if the process died before complete
            again = await tide.run("bug-triage", workflow, run_id=run_id, input={"report": "crash on save"})
            return first, again

    first, again = asyncio.run(main())
    assert first == again
    assert len(tickets) == 1  # the tool's external write ran once
    run_id = next(iter(fake.runs))
    steps = fake.steps[run_id]
    assert set(steps) == {"triage", f"create-ticket:{tickets[0][0]}"}
    assert steps["triage"]["output"] == {"output": first}
    assert json.loads(fake.calls("PUT", "/state$")[0].content) == {"value": {"phase": "done"}}


def test_seed_shape__usage_record_and_gate(fake: FakeServer) -> None:
    fake.resolve_gate_after_polls = 1

    async def flow(run: AsyncRunContext, input: Any) -> Any:
        result = await run.step("model", lambda: Agent(TestModel()).run("hi"))
        usage = result.usage
        await run.usage_record(
            kind="llm",
            provider="openai",
            model="gpt-4.1-mini",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        decision = await run.gate("approve-deploy:api", "Deploy api?")
        if not decision.approved:
            return "Deploy denied by operator."
        return await run.step(
            "deploy:api",
            lambda: "deployed",
            input={"service": "api"},
            side_effects=["deploy"],
            idempotency_key=f"deploy-{run.run_id}-api",
        )

    async def main() -> Any:
        async with make_async(fake) as tide:
            return await tide.run("deploy", flow)

    assert asyncio.run(main()) == "deployed"
    (usage,) = fake.usage
    assert usage["kind"] == "llm"
    assert usage["inputTokens"] > 0
    assert "outputTokens" in usage


# ---- async protocol details -------------------------------------------------


def test_async_resume_cache_and_mismatch(fake: FakeServer) -> None:
    run = fake.add_run()
    fake.add_completed_step(run["id"], "a", hash_input(None), {"n": 1})

    async def main() -> None:
        async with make_async(fake) as tide:
            out = await tide.run("wf", lambda r, i: r.step("a", lambda: pytest.fail("no")), run_id=run["id"])
            assert out == {"n": 1}
            assert out.n == 1
            fake.runs[run["id"]]["status"] = "running"
            with pytest.raises(InputMismatch):
                await tide.run("wf", lambda r, i: r.step("a", lambda: 2, input=5), run_id=run["id"])

    asyncio.run(main())
    assert not fake.calls("POST", "/steps/begin$")


def test_async_unencodable_output_fails_hard(fake: FakeServer) -> None:
    async def main() -> None:
        async with make_async(fake) as tide:
            with pytest.raises(StepOutputNotSerializable):
                await tide.run("wf", lambda r, i: r.step("s", lambda: asyncio.sleep(0, result=object()), retries=2))

    asyncio.run(main())
    assert len(fake.calls("POST", "/steps/begin$")) == 1


def test_async_step_timeout_counts_as_a_failed_attempt(fake: FakeServer) -> None:
    async def main() -> None:
        async with make_async(fake) as tide:
            with pytest.raises(TimeoutError):
                await tide.run("wf", lambda r, i: r.step("slow", lambda: asyncio.sleep(5), timeout_s=0.01, retries=1))

    asyncio.run(main())
    fails = [json.loads(r.content) for r in fake.calls("POST", "/steps/step_\\w+/fail$")]
    assert [f["retryable"] for f in fails] == [True, False]


def test_async_cancellation_via_steps_begin(fake: FakeServer) -> None:
    async def flow(run: AsyncRunContext, input: Any) -> Any:
        await run.step("one", lambda: 1)
        await AsyncTidebase.cancel(tide, run.run_id)
        return await run.step("two", lambda: 2)

    tide = make_async(fake)

    async def main() -> None:
        async with tide:
            with pytest.raises(RunCancelled):
                await tide.run("wf", flow)

    asyncio.run(main())
    assert not fake.calls("POST", "/runs/run_\\w+/fail$")


def test_async_lease_lost_on_step_complete(fake: FakeServer) -> None:
    def take_over(request: httpx.Request) -> httpx.Response:
        for step in fake.steps[request.url.path.split("/")[2]].values():
            step["leaseOwner"] = "someone-else"
        return httpx.Response(409, json={"error": "step not found or lease lost", "code": "lease_lost"})

    fake.inject("POST", "/steps/step_\\w+/complete$", take_over)

    async def main() -> None:
        async with make_async(fake) as tide:
            with pytest.raises(LeaseLost):
                await tide.run("wf", lambda r, i: r.step("s", lambda: 1))

    asyncio.run(main())


def test_async_session_heartbeat_stops_on_lease_loss(fake: FakeServer) -> None:
    lost: list[BaseException] = []

    async def main() -> None:
        seen = asyncio.Event()

        def on_lease_lost(error: BaseException) -> None:
            lost.append(error)
            seen.set()

        async with make_async(fake) as tide:
            session = await tide.runs.attach("gateway", heartbeat_s=0.01, on_lease_lost=on_lease_lost)
            await session.step("hello", lambda: "hi")
            # Conditions, not sleeps: one heartbeat went through before the lease is taken away.
            deadline = time.monotonic() + 60
            while not fake.calls("POST", "/heartbeat$") and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert session.heartbeating
            fake.runs[session.run_id]["leaseOwner"] = "someone-else"
            await asyncio.wait_for(seen.wait(), 60)
            assert not session.heartbeating
            await session.fail("gave up")

    asyncio.run(main())
    assert len(lost) == 1
    assert isinstance(lost[0], LeaseLost)
    beats = fake.calls("POST", "/heartbeat$")
    assert len(beats) >= 2
    assert all(json.loads(b.content)["leaseOwner"] for b in beats)
