"""``TidebaseDurability`` checks each model request's projected cost against the run's budgets
before sending it (tokens from the model's own count, output from ``max_tokens``, priced with
genai-prices): the request that would cross the budget is not sent, the run parks at its budget
gate, and the agent waits there. An operator approving lets the request go; rejecting stops the
agent with ``BudgetExceeded`` and the run fails with ``budget_exceeded``. Offline: a FunctionModel
that calls itself gpt-4o at OpenAI (so genai-prices prices it) and logs every request it gets."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from tests.pydantic_ai.agents import MODEL_CALLS, append, lines
from tests.pydantic_ai.conftest import detail, pending_gate, resolve_gate, wait_for
from tidebase._budget import BudgetExceeded
from tidebase.aio import AsyncTidebase
from tidebase.pydantic_ai import TidebaseDurability, projected_cost

INPUT_TOKENS, OUTPUT_TOKENS = 10_000, 1_000
REQUEST_USD = 0.035  # gpt-4o: 10k input tokens at $2.50/M + 1k output tokens at $10/M


class PricedModel(FunctionModel):
    """gpt-4o at OpenAI as far as genai-prices can tell; counts its input tokens before a request."""

    @property
    def system(self) -> str:
        return "openai"

    async def count_tokens(self, messages: Any, model_settings: Any, model_request_parameters: Any) -> RequestUsage:
        return RequestUsage(input_tokens=INPUT_TOKENS)


def build_agent(data_dir: Path, **options: Any) -> Agent[None, str]:
    """Two model requests: the first asks for ``note``, the second answers."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        append(data_dir, MODEL_CALLS, {"n": len(messages)})
        done = any(isinstance(p, ToolReturnPart) for m in messages for p in m.parts)
        parts = [TextPart("done")] if done else [ToolCallPart("note", {"text": "hi"}, tool_call_id="n1")]
        usage = RequestUsage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
        return ModelResponse(parts=parts, usage=usage, provider_name="openai")

    agent = Agent(
        PricedModel(model, model_name="gpt-4o"),
        name="spender",
        model_settings={"max_tokens": OUTPUT_TOKENS},
        capabilities=[TidebaseDurability(**options)],
    )

    @agent.tool_plain
    def note(text: str) -> str:
        return f"noted {text}"

    return agent


def start(url: str, agent: Agent[None, str], budget_usd: float) -> tuple[str, threading.Thread, list[Any]]:
    """A run with its own budget, executing the agent in a thread; the outcome lands in the list."""
    run_id = httpx.post(f"{url}/runs/spend", json={"budgetUsd": budget_usd}, timeout=30).json()["run"]["id"]
    outcome: list[Any] = []

    async def workflow(run: Any, input: Any) -> Any:
        return (await agent.run("go")).output

    async def main() -> None:
        async with AsyncTidebase(url) as tide:
            try:
                outcome.append(await tide.run("spend", workflow, run_id=run_id))
            except Exception as error:
                outcome.append(error)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    return run_id, thread, outcome


def test_projected_cost_counts_tokens_and_prices_them(data_dir: Path) -> None:
    class Params:
        messages: list[Any] = []
        model_settings = {"max_tokens": OUTPUT_TOKENS}
        model_request_parameters = None

        class run_context:
            model = PricedModel(lambda m, i: ModelResponse(parts=[]), model_name="gpt-4o")

    assert asyncio.run(projected_cost(Params())) == pytest.approx(REQUEST_USD)
    Params.run_context.model = FunctionModel(lambda m, i: ModelResponse(parts=[]))  # type: ignore[misc]
    assert asyncio.run(projected_cost(Params())) is None  # no price: only the step's begin checks


def test_the_request_that_would_cross_the_budget_waits_for_an_approval(live_server_url: str, data_dir: Path) -> None:
    run_id, thread, outcome = start(live_server_url, build_agent(data_dir), budget_usd=0.05)
    gate = wait_for(lambda: pending_gate(live_server_url, run_id))
    assert len(lines(data_dir, MODEL_CALLS)) == 1  # 0.035 spent + 0.035 projected > 0.05: not sent
    assert gate["name"] == "budget:run:1"
    assert gate["data"]["step"] == "model:spender:2"
    assert gate["data"]["projectedUsd"] == pytest.approx(REQUEST_USD)
    assert gate["data"]["askedUsd"] == pytest.approx(0.02)  # what lets this request go
    assert [u["costUsd"] for u in detail(live_server_url, run_id)["usage"]] == [pytest.approx(REQUEST_USD)]

    resolve_gate(live_server_url, run_id, gate, "approved")
    thread.join(60)
    assert outcome == ["done"]
    assert len(lines(data_dir, MODEL_CALLS)) == 2
    run = detail(live_server_url, run_id)["run"]
    assert (run["status"], run["budgetUsd"]) == ("completed", pytest.approx(0.07))


def test_a_rejected_budget_stops_the_agent_and_fails_the_run(live_server_url: str, data_dir: Path) -> None:
    run_id, thread, outcome = start(live_server_url, build_agent(data_dir), budget_usd=0.05)
    gate = wait_for(lambda: pending_gate(live_server_url, run_id))
    resolve_gate(live_server_url, run_id, gate, "rejected")
    thread.join(60)
    assert len(outcome) == 1
    assert isinstance(outcome[0], BudgetExceeded)
    assert len(lines(data_dir, MODEL_CALLS)) == 1  # never sent
    run = detail(live_server_url, run_id)["run"]
    assert (run["status"], run["failureClass"]) == ("failed", "budget_exceeded")
    assert run["error"]["code"] == "budget_exceeded"


def test_no_check_without_a_price_or_when_switched_off(live_server_url: str, data_dir: Path) -> None:
    run_id, thread, outcome = start(live_server_url, build_agent(data_dir, check_budget=False), budget_usd=0.05)
    thread.join(60)
    assert outcome == ["done"]  # the step begins passed (0.035 < 0.05); nothing projected the second request
    assert len(lines(data_dir, MODEL_CALLS)) == 2
    assert detail(live_server_url, run_id)["gates"] == []
