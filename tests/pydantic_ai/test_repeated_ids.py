"""Provider tool-call ids are not unique within a run: some OpenAI-compatible servers answer
``call_0`` for every call. Each call must still get its own step, its own approval gate (bound to
that call, not to an earlier call with the same id and arguments) and its own idempotency key,
and a re-invoked run must replay exactly the same names in the same order."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai import Agent, ApprovalRequired, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.pydantic_ai.agents import EFFECTS, MODEL_CALLS, append, lines
from tests.pydantic_ai.conftest import detail, pending_gate, resolve_gate, step_names, wait_for
from tidebase.aio import AsyncTidebase
from tidebase.pydantic_ai import (
    TidebaseDurability,
    approval_gate_name,
    arguments_digest,
    idempotency_key,
    tool_contract,
    tool_step_name,
)

# Every call the model makes carries the id "call_0", as some OpenAI-compatible servers do.
PLAN: list[tuple[str, dict[str, Any]]] = [
    ("lookup", {"account": "acme"}),
    ("refund", {"amount": 100}),  # requires approval: approved
    ("refund", {"amount": 1000}),  # the issue: approved, must run (was InputMismatch)
    ("refund", {"amount": 100}),  # same id, same arguments as the first: asked again, rejected
    ("scale", {"replicas": 10}),  # the tool raises ApprovalRequired itself: approved
    ("scale", {"replicas": 10}),  # again, same id and arguments: asked again, approved
    ("lookup", {"account": "acme"}),  # same id and arguments as the first lookup: runs again
]
# (tool, arguments, occurrence of (tool, "call_0"), decision) for each gate, in order.
GATES = [
    ("refund", {"amount": 100}, 1, "approved"),
    ("refund", {"amount": 1000}, 2, "approved"),
    ("refund", {"amount": 100}, 3, "rejected"),
    ("scale", {"replicas": 10}, 1, "approved"),
    ("scale", {"replicas": 10}, 2, "approved"),
]


def build_agent(data_dir: Path, name: str = "ops", plan: list[tuple[str, dict[str, Any]]] = PLAN) -> Agent[None, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        append(data_dir, MODEL_CALLS, {"agent": name})
        results = [str(p.content) for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
        if len(results) < len(plan):
            tool, args = plan[len(results)]
            return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id="call_0")])
        return ModelResponse(parts=[TextPart(" | ".join(results))])

    agent: Agent[None, str] = Agent(
        FunctionModel(model, model_name="ops-fn"), name=name, capabilities=[TidebaseDurability()]
    )

    @agent.tool_plain(metadata=tool_contract(side_effects=["crm"]))
    def lookup(account: str) -> str:
        append(data_dir, EFFECTS, {"tool": "lookup", "account": account, "key": idempotency_key()})
        return f"{name} looked up {account} #{len(lines(data_dir, EFFECTS))}"

    @agent.tool_plain(requires_approval=True, metadata=tool_contract(side_effects=["payments"]))
    def refund(amount: int) -> str:
        append(data_dir, EFFECTS, {"tool": "refund", "amount": amount, "key": idempotency_key()})
        return f"refunded {amount}"

    @agent.tool(metadata=tool_contract(side_effects=["deploy"]))
    def scale(ctx: RunContext[None], replicas: int) -> str:
        if not ctx.tool_call_approved:
            raise ApprovalRequired()
        append(data_dir, EFFECTS, {"tool": "scale", "replicas": replicas, "key": idempotency_key()})
        return f"scaled to {replicas} #{len(lines(data_dir, EFFECTS))}"

    return agent


def create_run(url: str) -> str:
    response = httpx.post(f"{url}/runs/pai-repeated-ids", json={"input": {}}, timeout=30)
    response.raise_for_status()
    return str(response.json()["run"]["id"])


def invoke(url: str, agent: Agent[None, str], run_id: str, outcome: dict[str, Any]) -> None:
    async def main() -> None:
        async with AsyncTidebase(url) as tide:

            async def workflow(run: Any, input: Any) -> str:
                return (await agent.run("go")).output

            outcome["output"] = await tide.run("pai-repeated-ids", workflow, run_id=run_id)

    try:
        asyncio.run(main())
    except BaseException as error:  # surfaced by the assertions of the test
        outcome["error"] = error


def run_answering_gates(
    url: str, agent: Agent[None, str], gates: list[tuple[str, dict[str, Any], int, str]]
) -> tuple[str, dict[str, Any]]:
    """Run the agent in a thread and answer its gates in order, each after checking that it asks
    about the expected call; fails if the run ends or fails while a gate is still expected."""
    run_id = create_run(url)
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=invoke, args=(url, agent, run_id, outcome), daemon=True)
    worker.start()
    seen: set[str] = set()
    for tool, args, _, decision in gates:

        def next_gate() -> dict[str, Any] | None:
            gate = pending_gate(url, run_id)
            if gate is not None and gate["id"] not in seen:
                return gate
            if "error" in outcome:
                raise AssertionError(f"the agent run failed: {outcome['error']!r}")
            if "output" in outcome:
                raise AssertionError(f"the run ended without opening gate {len(seen) + 1} of {len(gates)}")
            return None

        gate = wait_for(next_gate)
        seen.add(gate["id"])
        assert (gate["data"]["tool"], gate["data"]["toolCallId"], gate["data"]["args"]) == (tool, "call_0", args)
        resolve_gate(url, run_id, gate, decision)
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    return run_id, outcome


def test_repeated_tool_call_ids__every_call_runs_and_is_approved_on_its_own(
    live_server_url: str, data_dir: Path
) -> None:
    url = live_server_url
    run_id, outcome = run_answering_gates(url, build_agent(data_dir), GATES)
    assert "The call to refund was rejected by test:operator." in outcome["output"]

    effects = lines(data_dir, EFFECTS)
    assert [(e["tool"], e.get("amount", e.get("replicas", e.get("account")))) for e in effects] == [
        ("lookup", "acme"),
        ("refund", 100),
        ("refund", 1000),  # the approved refund ran
        ("scale", 10),
        ("scale", 10),
        ("lookup", "acme"),  # a repeated call is not answered from the first one's checkpoint
    ]
    keys = [e["key"] for e in effects]
    assert len(set(keys)) == len(keys)  # an external API does not drop the second write as a retry

    names = [
        "model:ops:1",
        tool_step_name("lookup", "call_0"),
        "model:ops:2",
        tool_step_name("refund", "call_0", approved=True),
        "model:ops:3",
        tool_step_name("refund", "call_0", approved=True, occurrence=2),
        "model:ops:4",
        "model:ops:5",  # the rejected third refund has no step
        tool_step_name("scale", "call_0"),
        tool_step_name("scale", "call_0", approved=True),
        "model:ops:6",
        tool_step_name("scale", "call_0", occurrence=2),
        tool_step_name("scale", "call_0", approved=True, occurrence=2),
        "model:ops:7",
        tool_step_name("lookup", "call_0", occurrence=2),
        "model:ops:8",
    ]
    assert step_names(url, run_id) == names
    gates = [(g["name"], g["decision"]) for g in detail(url, run_id)["gates"]]
    assert gates == [(approval_gate_name(t, "call_0", arguments_digest(t, a), occurrence=n), d) for t, a, n, d in GATES]

    # Re-invoked, the run replays the same names in the same order: no model call, no write,
    # no new step or gate.
    calls = len(lines(data_dir, MODEL_CALLS))
    again: dict[str, Any] = {}
    invoke(url, build_agent(data_dir), run_id, again)
    assert "error" not in again, again.get("error")
    assert again["output"] == outcome["output"]
    assert len(lines(data_dir, MODEL_CALLS)) == calls
    assert lines(data_dir, EFFECTS) == effects
    assert step_names(url, run_id, status=None) == names
    assert [(g["name"], g["decision"]) for g in detail(url, run_id)["gates"]] == gates


def test_repeated_tool_call_ids__same_arguments_are_asked_and_run_again(live_server_url: str, data_dir: Path) -> None:
    """Same tool, same id, same arguments: a second call, not a replay of the first (its gate is
    not the first call's decision, its result not the first call's checkpoint)."""
    plan = [
        ("refund", {"amount": 100}),
        ("refund", {"amount": 100}),
        ("lookup", {"account": "acme"}),
        ("lookup", {"account": "acme"}),
    ]
    gates = [("refund", {"amount": 100}, 1, "approved"), ("refund", {"amount": 100}, 2, "approved")]
    run_id, outcome = run_answering_gates(live_server_url, build_agent(data_dir, plan=plan), gates)
    assert outcome["output"] == "refunded 100 | refunded 100 | ops looked up acme #3 | ops looked up acme #4"
    assert [e["tool"] for e in lines(data_dir, EFFECTS)] == ["refund", "refund", "lookup", "lookup"]
    assert [g["decision"] for g in detail(live_server_url, run_id)["gates"]] == ["approved", "approved"]


def test_repeated_tool_call_ids__across_two_agents_of_one_run(live_server_url: str, data_dir: Path) -> None:
    """Two agents in one run whose models both answer ``call_0`` for ``lookup``: tool step names
    do not carry the agent, so the second agent's call is a repeat of the first agent's id."""
    plan_a = [("lookup", {"account": "acme"})]
    plan_b = [("lookup", {"account": "globex"})]
    first, second = build_agent(data_dir, "a", plan_a), build_agent(data_dir, "b", plan_b)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncTidebase(live_server_url) as tide:
            run_id = (await tide.runs.create("pai-two-agents", input={}))["id"]
            outcome["run_id"] = run_id

            async def workflow(run: Any, input: Any) -> list[str]:
                return [(await first.run("go")).output, (await second.run("go")).output]

            outcome["output"] = await tide.run("pai-two-agents", workflow, run_id=run_id)

    asyncio.run(main())
    assert outcome["output"] == ["a looked up acme #1", "b looked up globex #2"]
    assert step_names(live_server_url, outcome["run_id"]) == [
        "model:a:1",
        "tool:lookup:call_0",
        "model:a:2",
        "model:b:1",
        "tool:lookup#2:call_0",
        "model:b:2",
    ]
