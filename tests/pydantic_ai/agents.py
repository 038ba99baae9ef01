"""The agents under test: offline (FunctionModel, real requests switched off), with every model
call and every external write logged as a JSON line in a data directory, so tests can count what
was paid for and what was written. Also imported by ``worker.py`` (the process that gets killed)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic_ai.models
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tidebase.pydantic_ai import TidebaseDurability, idempotency_key, tool_contract

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False

MODEL_CALLS = "model_calls.jsonl"
EFFECTS = "effects.jsonl"


def append(data_dir: Path, name: str, record: dict[str, Any]) -> None:
    with (data_dir / name).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def lines(data_dir: Path, name: str) -> list[dict[str, Any]]:
    path = data_dir / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def returns(messages: list[ModelMessage]) -> dict[str, Any]:
    return {
        part.tool_name: part.content
        for message in messages
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


def build_triage_agent(
    data_dir: Path,
    *,
    crash_in: str | None = None,
    tool_call_ids: bool = False,
    name: str = "triage",
    durable: bool = True,
    streaming: bool = False,
) -> Agent[None, str]:
    """Two model turns and two tool calls: turn 1 asks for ``lookup_owner`` and ``file_ticket``
    (each writes one line to effects.jsonl), turn 2 answers. ``crash_in="file_ticket"`` SIGKILLs
    the process inside that tool, before its write (the first tool is checkpointed by then when
    tools run sequentially)."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        append(data_dir, MODEL_CALLS, {"after": sorted(done)})
        if not done:
            return ModelResponse(
                parts=[
                    ToolCallPart(
                        "lookup_owner",
                        {"component": "checkout"},
                        **({"tool_call_id": "call-lookup"} if tool_call_ids else {}),
                    ),
                    ToolCallPart(
                        "file_ticket",
                        {"title": "Save button crashes", "owner_hint": "payments"},
                        **({"tool_call_id": "call-ticket"} if tool_call_ids else {}),
                    ),
                ]
            )
        return ModelResponse(parts=[TextPart(f"Filed {done.get('file_ticket')} for {done.get('lookup_owner')}")])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        response = model(messages, info)
        for i, part in enumerate(response.parts):
            if isinstance(part, ToolCallPart):
                yield {i: DeltaToolCall(part.tool_name, part.args_as_json_str(), tool_call_id=part.tool_call_id)}
            elif isinstance(part, TextPart):
                for word in part.content.split(" "):
                    yield word + " "

    function_model = (
        FunctionModel(stream_function=stream, model_name="triage-fn")
        if streaming
        else FunctionModel(model, model_name="triage-fn")
    )
    agent: Agent[None, str] = Agent(function_model, name=name, capabilities=[TidebaseDurability()] if durable else [])

    @agent.tool_plain(metadata=tool_contract(side_effects=["directory-api"]))
    def lookup_owner(component: str) -> str:
        append(data_dir, EFFECTS, {"tool": "lookup_owner", "key": idempotency_key()})
        return f"team-{component}"

    @agent.tool_plain(metadata=tool_contract(side_effects=["ticketing-api"]))
    async def file_ticket(title: str, owner_hint: str) -> str:
        if crash_in == "file_ticket":
            os.kill(os.getpid(), signal.SIGKILL)
        append(data_dir, EFFECTS, {"tool": "file_ticket", "key": idempotency_key(), "title": title})
        return f"BUG-{len(lines(data_dir, EFFECTS))}"

    return agent


async def triage_workflow(agent: Agent[None, str], run: Any, input: Any) -> dict[str, Any]:
    with agent.parallel_tool_call_execution_mode("sequential"):
        result = await agent.run(input["report"])
    return {"output": result.output}
