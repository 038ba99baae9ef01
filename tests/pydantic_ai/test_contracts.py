"""The side-effect contract, usage accounting, transparency outside a run, streaming, the
``TidebaseAgent`` wrapper and the sync client."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.pydantic_ai.agents import EFFECTS, MODEL_CALLS, build_triage_agent, lines, triage_workflow
from tests.pydantic_ai.conftest import detail, step_names
from tidebase import Tidebase
from tidebase.aio import AsyncTidebase
from tidebase.pydantic_ai import TidebaseAgent, TidebaseDurability, tool_contract


def run_async(url: str, workflow_name: str, workflow: Any) -> tuple[str, Any]:
    async def main() -> tuple[str, Any]:
        async with AsyncTidebase(url) as tide:
            run_id = (await tide.runs.create(workflow_name, input={"report": "r"}))["id"]
            try:
                return run_id, await tide.run(workflow_name, workflow, run_id=run_id)
            except Exception as error:
                return run_id, error

    return asyncio.run(main())


def one_tool_model(tool: str, args: dict[str, Any]) -> FunctionModel:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for m in messages for p in m.parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id="t1")])

    return FunctionModel(model, model_name="one-tool-fn")


def test_unkeyed_write_that_fails_parks_manual_review(live_server_url: str) -> None:
    agent: Agent[None, str] = Agent(
        one_tool_model("charge", {"cents": 500}), name="billing", capabilities=[TidebaseDurability()]
    )

    @agent.tool_plain(metadata=tool_contract(side_effects=["payments"], idempotency_key=False))
    def charge(cents: int) -> str:
        raise RuntimeError("payment gateway timed out (did it charge?)")

    run_id, outcome = run_async(live_server_url, "pai-billing", lambda r, i: agent.run("bill"))
    assert isinstance(outcome, RuntimeError)
    step = next(s for s in detail(live_server_url, run_id)["steps"] if s["name"] == "tool:charge:t1")
    assert step["status"] == "manual_review"
    assert step["options"]["sideEffects"] == ["payments"]
    assert "idempotencyKey" not in step["options"]


def test_keyed_write_that_fails_is_safe_to_replay(live_server_url: str) -> None:
    agent: Agent[None, str] = Agent(
        one_tool_model("charge", {"cents": 500}), name="billing2", capabilities=[TidebaseDurability()]
    )

    @agent.tool_plain(metadata=tool_contract(side_effects=["payments"]))
    def charge(cents: int) -> str:
        raise RuntimeError("payment gateway timed out")

    run_id, outcome = run_async(live_server_url, "pai-billing", lambda r, i: agent.run("bill"))
    assert isinstance(outcome, RuntimeError)
    step = next(s for s in detail(live_server_url, run_id)["steps"] if s["name"] == "tool:charge:t1")
    assert step["status"] == "failed"
    assert step["options"]["idempotencyKey"] == f"tidebase:{run_id}:tool:charge:t1"


def test_tool_opted_out_runs_without_a_step(live_server_url: str) -> None:
    agent: Agent[None, str] = Agent(one_tool_model("now", {}), name="clock", capabilities=[TidebaseDurability()])

    @agent.tool_plain(metadata=tool_contract(durable=False))
    def now() -> str:
        return "12:00"

    run_id, outcome = run_async(live_server_url, "pai-clock", lambda r, i: agent.run("time?"))
    assert getattr(outcome, "output", None) == "done"
    assert step_names(live_server_url, run_id) == ["model:clock:1", "model:clock:2"]


def test_usage_rows(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, name="usage")
    run_id, _ = run_async(live_server_url, "pai-usage", lambda r, i: triage_workflow(agent, r, i))
    body = detail(live_server_url, run_id)
    steps = {s["id"]: s["name"] for s in body["steps"]}
    rows = body["usage"]
    assert [steps[r["stepId"]] for r in rows] == ["model:usage:1", "model:usage:2"]
    for row in rows:
        assert row["kind"] == "llm"
        assert row["model"] == "triage-fn"
        assert row["inputTokens"] > 0
        assert row["outputTokens"] > 0
        assert row["costUsd"] is None  # genai-prices has no price for a FunctionModel
        assert row["metadata"]["source"] == "tidebase.pydantic_ai"


def test_outer_step_with_manual_usage_warns(live_server_url: str, data_dir: Path) -> None:
    """The outer-step pattern still works around a durable agent (the model steps nest inside
    it), but recording the agent's usage by hand there would count it twice: warned."""
    agent = build_triage_agent(data_dir, name="outer")

    async def workflow(run: Any, input: Any) -> Any:
        async def triage() -> Any:
            result = await agent.run(input["report"])
            await run.usage_record(kind="llm", model="triage-fn", input_tokens=1, output_tokens=1)
            return result.output

        return await run.step("triage", triage, input=input)

    with pytest.warns(RuntimeWarning, match="counts those tokens twice"):
        run_id, outcome = run_async(live_server_url, "pai-outer", workflow)
    assert isinstance(outcome, str)
    names = step_names(live_server_url, run_id)
    assert {"triage", "model:outer:1", "model:outer:2"} <= set(names)
    assert len(names) == 5
    rows = detail(live_server_url, run_id)["usage"]
    assert len([r for r in rows if r["metadata"].get("source") == "tidebase.pydantic_ai"]) == 2


def test_transparent_outside_a_run(data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, name="plain")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = agent.run_sync("Save button crashes")
    assert result.output.startswith("Filed BUG-")
    assert [e["key"] for e in lines(data_dir, EFFECTS)] == [None, None]  # no run, no key


def test_streaming_model_requests_are_steps(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, name="stream", streaming=True)

    async def workflow(run: Any, input: Any) -> str:
        async with agent.run_stream(input["report"]) as stream:
            return await stream.get_output()

    run_id, output = run_async(live_server_url, "pai-stream", workflow)
    assert isinstance(output, str)
    assert output.startswith("Filed BUG-")
    assert len(lines(data_dir, MODEL_CALLS)) == 2
    names = step_names(live_server_url, run_id)
    assert names[0] == "model:stream:1"
    assert names[-1] == "model:stream:2"
    assert len(names) == 4
    assert len(detail(live_server_url, run_id)["usage"]) == 2


def test_tidebase_agent_wrapper(live_server_url: str, data_dir: Path) -> None:
    durable = TidebaseAgent(build_triage_agent(data_dir, name="wrapped", durable=False))
    run_id, result = run_async(live_server_url, "pai-wrapped", lambda r, i: durable.run(i["report"]))
    assert result.output.startswith("Filed BUG-")
    names = step_names(live_server_url, run_id)
    assert names[0] == "model:wrapped:1"
    assert len(names) == 4
    assert len(lines(data_dir, MODEL_CALLS)) == 2


def test_sync_client(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, name="sync")
    with Tidebase(live_server_url) as tide:
        run_id = tide.runs.create("pai-sync", input={"report": "r"})["id"]
        output = tide.run("pai-sync", lambda run, input: agent.run_sync(input["report"]).output, run_id=run_id)
        assert output.startswith("Filed BUG-")
        again = tide.run("pai-sync", lambda run, input: agent.run_sync(input["report"]).output, run_id=run_id)
    assert again == output
    assert len(step_names(live_server_url, run_id)) == 4
    assert len(lines(data_dir, MODEL_CALLS)) == 2


def test_attached_session_is_the_current_run(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, name="session")

    async def main() -> str:
        async with AsyncTidebase(live_server_url) as tide:
            session = await tide.attach("pai-session", input={"report": "r"})
            async with session as run:
                result = await agent.run("Save button crashes")
                await run.complete({"output": result.output})
                return str(run.run_id)

    run_id = asyncio.run(main())
    assert len(step_names(live_server_url, run_id)) == 4


def test_runtime_toolsets_are_refused_inside_a_run(live_server_url: str, data_dir: Path) -> None:
    from pydantic_ai import FunctionToolset

    agent = build_triage_agent(data_dir, name="runtime")
    extra: FunctionToolset[None] = FunctionToolset(id="extra")

    @extra.tool_plain
    def ping() -> str:
        return "pong"

    _, outcome = run_async(live_server_url, "pai-runtime", lambda r, i: agent.run("x", toolsets=[extra]))
    assert isinstance(outcome, Exception)
    assert "Tidebase" in str(outcome)
