"""Approvals bound to arguments: a tool Pydantic AI marks as needing approval waits at a
Tidebase gate whose data is the exact call (tool, arguments, their sha256), resolved over HTTP
with the resolve token as the dashboard does. Approval lets that call through; a call with
other arguments is asked again; a rejection reaches the model as the tool's denial."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from pydantic_ai import Agent, ApprovalRequired, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.pydantic_ai.agents import EFFECTS, MODEL_CALLS, append, lines
from tests.pydantic_ai.conftest import detail, pending_gate, resolve_gate, step_names, wait_for
from tidebase.aio import AsyncTidebase
from tidebase.pydantic_ai import TidebaseDurability, approval_gate_name, arguments_digest, tool_contract


def build_ops_agent(data_dir: Path, seen: list[list[ModelMessage]]) -> Agent[None, str]:
    """Turn 1 deploys ``api``; turn 2 deploys ``db`` (other arguments); turn 3 scales ``api`` to
    10 replicas (the tool itself raises ``ApprovalRequired`` above 5); turn 4 answers."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        append(data_dir, MODEL_CALLS, {})
        n = sum(1 for m in messages for p in m.parts if isinstance(p, ToolReturnPart))
        if n == 0:
            return ModelResponse(parts=[ToolCallPart("deploy", {"service": "api"}, tool_call_id="c1")])
        if n == 1:
            return ModelResponse(parts=[ToolCallPart("deploy", {"service": "db"}, tool_call_id="c2")])
        if n == 2:
            return ModelResponse(parts=[ToolCallPart("scale", {"service": "api", "replicas": 10}, tool_call_id="c3")])
        results = [str(p.content) for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
        return ModelResponse(parts=[TextPart(" | ".join(results))])

    agent: Agent[None, str] = Agent(
        FunctionModel(model, model_name="ops-fn"), name="ops", capabilities=[TidebaseDurability()]
    )

    @agent.tool_plain(requires_approval=True, metadata=tool_contract(side_effects=["deploy"]))
    def deploy(service: str) -> str:
        append(data_dir, EFFECTS, {"tool": "deploy", "service": service})
        return f"deployed {service}"

    @agent.tool(metadata=tool_contract(side_effects=["deploy"]))
    def scale(ctx: RunContext[None], service: str, replicas: int) -> str:
        if replicas > 5 and not ctx.tool_call_approved:
            raise ApprovalRequired(metadata={"why": "more than 5 replicas"})
        append(data_dir, EFFECTS, {"tool": "scale", "service": service, "replicas": replicas})
        return f"scaled {service} to {replicas}"

    return agent


def test_gates_bound_to_arguments(live_server_url: str, data_dir: Path) -> None:
    url = live_server_url
    seen: list[list[ModelMessage]] = []
    agent = build_ops_agent(data_dir, seen)
    run_id = ""
    created = threading.Event()
    outcome: dict[str, Any] = {}

    async def main() -> None:
        nonlocal run_id
        async with AsyncTidebase(url) as tide:
            run_id = (await tide.runs.create("pai-ops", input={}))["id"]
            created.set()

            async def workflow(run: Any, input: Any) -> str:
                return (await agent.run("ship it")).output

            outcome["output"] = await tide.run("pai-ops", workflow, run_id=run_id)

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced by the assertions below
            outcome["error"] = error
            created.set()

    def gate_after(previous: dict[str, Any] | None) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if "error" in outcome:
                raise AssertionError(f"the agent run failed: {outcome['error']!r}")
            gate = pending_gate(url, run_id)
            return gate if gate is not None and (previous is None or gate["id"] != previous["id"]) else None

        return wait_for(ready)

    worker = threading.Thread(target=thread_main, daemon=True)
    worker.start()
    assert created.wait(30)

    # 1. deploy(service="api") waits at a gate named after the call and its exact arguments.
    gate = gate_after(None)
    digest = arguments_digest("deploy", {"service": "api"})
    assert gate["name"] == approval_gate_name("deploy", "c1", digest)
    assert gate["data"] == {
        "agent": "ops",
        "tool": "deploy",
        "toolCallId": "c1",
        "args": {"service": "api"},
        "argsDigest": digest,
    }
    assert lines(data_dir, EFFECTS) == []  # nothing ran before the decision
    token = gate["resolveToken"]
    resolve_gate(url, run_id, gate, "approved")

    # 2. The model now calls deploy with other arguments: a new decision is needed.
    second = gate_after(gate)
    assert second["name"] == approval_gate_name("deploy", "c2", arguments_digest("deploy", {"service": "db"}))
    assert second["data"]["args"] == {"service": "db"}
    assert lines(data_dir, EFFECTS) == [{"tool": "deploy", "service": "api"}]  # the approved call ran
    resolve_gate(url, run_id, second, "rejected")

    # 3. scale raises ApprovalRequired itself: gate, then the approved call runs in its own step.
    third = gate_after(second)
    assert third["data"]["args"] == {"service": "api", "replicas": 10}
    resolve_gate(url, run_id, third, "approved")

    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    output = outcome["output"]
    assert "deployed api" in output
    assert "The call to deploy was rejected by test:operator." in output  # the denial the model saw
    assert "scaled api to 10" in output
    assert lines(data_dir, EFFECTS) == [
        {"tool": "deploy", "service": "api"},
        {"tool": "scale", "service": "api", "replicas": 10},
    ]
    # Pinned names: a requires_approval tool runs only once approved (one step, ":approved");
    # a tool that raised ApprovalRequired has its first (deferring) call and the approved one.
    assert step_names(url, run_id) == [
        "model:ops:1",
        "tool:deploy:c1:approved",
        "model:ops:2",
        "model:ops:3",
        "tool:scale:c3",
        "tool:scale:c3:approved",
        "model:ops:4",
    ]
    gates = {g["name"]: g["decision"] for g in detail(url, run_id)["gates"]}
    assert list(gates.values()) == ["approved", "rejected", "approved"]
    # The resolve token never reached the agent (nor, through it, the model).
    assert not any(token in json.dumps([str(m) for m in messages]) for messages in seen)
