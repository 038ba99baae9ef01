"""Checkpoint a Pydantic AI agent with Tidebase (the shapes from the docs page).

Runs offline as far as the model goes (Pydantic AI's ``TestModel``); it needs a
Tidebase server at ``TIDEBASE_URL`` (default http://localhost:7373).

    python examples/pydantic_ai_triage.py            # first run
    python examples/pydantic_ai_triage.py run_...    # resume: finished steps replay
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from pydantic_ai import Agent, RunContext
from pydantic_ai.models.test import TestModel

from tidebase.aio import AsyncRunContext, AsyncTidebase


@dataclass
class Deps:
    tide_run: AsyncRunContext


agent = Agent(TestModel(call_tools=["create_ticket"]), deps_type=Deps)
tickets: list[str] = []


async def create_in_tracker(title: str, body: str) -> str:
    tickets.append(title)  # stands in for the real ticketing API
    return f"TICKET-{len(tickets)}"


@agent.tool
async def create_ticket(ctx: RunContext[Deps], title: str, body: str) -> str:
    run = ctx.deps.tide_run
    result: str = await run.step(
        f"create-ticket:{title}",
        lambda: create_in_tracker(title, body),
        input={"title": title, "body": body},
        side_effects=["ticketing-api"],
        idempotency_key=f"ticket-{run.run_id}-{title}",
    )
    return result


async def workflow(run: AsyncRunContext, input: dict[str, Any]) -> Any:
    result = await run.step(
        "triage",
        lambda: agent.run(input["report"], deps=Deps(tide_run=run)),
        input={"report": input["report"]},
    )
    await run.state_set({"phase": "done"})
    return result.output


async def main(run_id: str | None) -> None:
    async with AsyncTidebase() as tide:
        output = await tide.run("bug-triage", workflow, run_id=run_id, input={"report": "Save button crashes"})
        print("output:", output)
        print("tickets created in this process:", tickets)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
