"""Bug triage: a Pydantic AI agent made durable with Tidebase (the story of the docs page
"How to checkpoint Pydantic AI agents"), runnable offline.

The agent files a ticket, asks a human before deploying a fix, then answers. The whole
``agent.run(...)`` is one checkpointed step (``triage``); the tools that touch the outside
world (``create_ticket``, ``deploy``) are steps of their own with ``side_effects`` and an
``idempotency_key``, and ``deploy`` waits at a durable approval gate first.

No API keys: the model is a deterministic Pydantic AI ``FunctionModel`` (real model requests
are switched off). The "ticketing API" and the "deploy system" are JSON-lines files in
``$BUG_TRIAGE_DATA`` (default ``./bug-triage-data``), so you can see what happened, and how many
times. Needs a Tidebase server at ``TIDEBASE_URL`` (default http://localhost:7373).

    python -m examples.bug_triage.agent start --report "Save button crashes" [--crash]
    python -m examples.bug_triage.agent resume RUN_ID
    python -m examples.bug_triage.agent approve RUN_ID [--reject]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydantic_ai.models
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tidebase import RunLeased
from tidebase.aio import AsyncRunContext, AsyncTidebase

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # offline: only the FunctionModel below answers

WORKFLOW = "bug-triage"
SERVICE = "checkout-web"
MODEL_NAME = "triage-function-model"


def data_dir() -> Path:
    path = Path(os.environ.get("BUG_TRIAGE_DATA", "bug-triage-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_line(name: str, record: dict[str, Any]) -> None:
    with (data_dir() / name).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_lines(name: str) -> list[dict[str, Any]]:
    path = data_dir() / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- the outside world ---------------------------------------------------------------------


async def ticket_api_create(title: str, body: str, idempotency_key: str) -> str:
    """Stands in for a ticketing API: one line per ticket in tickets.jsonl. A real API would
    also deduplicate on ``idempotency_key``; this one records it so you can check."""
    ticket_id = f"BUG-{len(read_lines('tickets.jsonl')) + 1}"
    append_line("tickets.jsonl", {"id": ticket_id, "title": title, "body": body, "idempotencyKey": idempotency_key})
    return ticket_id


async def do_deploy(service: str, idempotency_key: str) -> str:
    append_line("deploys.jsonl", {"service": service, "idempotencyKey": idempotency_key})
    return f"{service} deployed"


# ---- the agent -----------------------------------------------------------------------------


@dataclass
class Deps:
    tide_run: AsyncRunContext


CRASH_AFTER_TICKET = False  # set by `start --crash`


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A deterministic stand-in for an LLM: file a ticket, then deploy, then answer.
    Every call is logged to model_calls.jsonl (what a real provider would bill)."""
    returned = [
        part.tool_name
        for message in messages
        for part in getattr(message, "parts", [])
        if isinstance(part, ToolReturnPart)
    ]
    append_line("model_calls.jsonl", {"after_tools": returned})
    if "create_ticket" not in returned:
        return ModelResponse(
            parts=[
                ToolCallPart(
                    "create_ticket",
                    {"title": "Save button crashes", "body": "Clicking Save throws a TypeError in the form handler."},
                )
            ]
        )
    if "deploy" not in returned:
        return ModelResponse(parts=[ToolCallPart("deploy", {"service": SERVICE})])
    deploy_result = next(
        part.content
        for message in messages
        for part in getattr(message, "parts", [])
        if isinstance(part, ToolReturnPart) and part.tool_name == "deploy"
    )
    return ModelResponse(parts=[TextPart(f"Filed a ticket for the crash. Deploy: {deploy_result}")])


agent = Agent(FunctionModel(scripted_model, model_name=MODEL_NAME), deps_type=Deps)


@agent.tool
async def create_ticket(ctx: RunContext[Deps], title: str, body: str) -> str:
    """File a bug ticket."""
    run = ctx.deps.tide_run
    key = f"ticket-{run.run_id}-{title}"
    ticket: str = await run.step(
        f"create-ticket:{title}",
        lambda: ticket_api_create(title, body, key),
        input={"title": title, "body": body},
        side_effects=["ticketing-api"],
        idempotency_key=key,
    )
    if CRASH_AFTER_TICKET:
        print("ticket checkpointed; crashing now (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return ticket


@agent.tool
async def deploy(ctx: RunContext[Deps], service: str) -> str:
    """Deploy a service (a human approves first)."""
    run = ctx.deps.tide_run
    decision = await run.gate(f"approve-deploy:{service}", f"Deploy {service}?")
    if not decision.approved:
        return "Deploy denied by operator."
    key = f"deploy-{run.run_id}-{service}"
    result: str = await run.step(
        f"deploy:{service}",
        lambda: do_deploy(service, key),
        input={"service": service},
        side_effects=["deploy"],
        idempotency_key=key,
    )
    return result


# ---- the workflow --------------------------------------------------------------------------


def usage_of(result: Any) -> Any:
    """``result.usage`` is a property in current Pydantic AI and a method in older releases."""
    usage = result.usage
    return usage() if callable(usage) else usage


async def workflow(run: AsyncRunContext, input: dict[str, Any]) -> Any:
    async def triage() -> Any:
        result = await agent.run(input["report"], deps=Deps(tide_run=run))
        usage = usage_of(result)
        # Recorded inside the step: a replay returns the checkpoint and records nothing again.
        await run.usage_record(
            kind="llm",
            provider="function",
            model=MODEL_NAME,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        return result  # checkpointed as {"output": ...}; replays give it back as data

    result = await run.step("triage", triage, input={"report": input["report"]})
    await run.state_set({"phase": "done"})
    return result.output


async def run_workflow(run_id: str, report: str | None = None, wait_lease_s: float = 120.0) -> Any:
    """Run (or resume) the workflow. After a crash the dead worker's run lease has to lapse
    before another worker may take the run (409 ``run_leased``): wait for it."""
    deadline = time.monotonic() + wait_lease_s
    async with AsyncTidebase() as tide:
        while True:
            try:
                return await tide.run(WORKFLOW, workflow, run_id=run_id, input={"report": report})
            except RunLeased:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)


# ---- CLI -----------------------------------------------------------------------------------


async def start(report: str, crash: bool) -> None:
    global CRASH_AFTER_TICKET
    CRASH_AFTER_TICKET = crash
    async with AsyncTidebase() as tide:
        run = await tide.runs.create(WORKFLOW, input={"report": report})
    print(f"run id: {run['id']}", flush=True)
    output = await run_workflow(run["id"], report)
    print(f"output: {output}")


async def resume(run_id: str) -> None:
    print(f"output: {await run_workflow(run_id)}")


def approve(run_id: str, reject: bool) -> None:
    """Resolve the run's pending gate over HTTP with its resolve token, as an approval link
    does. Works against an open server, or with TIDEBASE_API_KEY set to an operator/admin key."""
    base = os.environ.get("TIDEBASE_URL", "http://localhost:7373").rstrip("/")
    api_key = os.environ.get("TIDEBASE_API_KEY")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        detail = http.get(f"/runs/{run_id}")
        detail.raise_for_status()
        pending = [g for g in detail.json()["gates"] if g["status"] == "pending"]
        if not pending:
            sys.exit(f"run {run_id} has no pending gate")
        gate = pending[0]
        if not gate.get("resolveToken"):  # agent keys never see it, and cannot resolve
            sys.exit("no resolve token visible: set TIDEBASE_API_KEY to an operator or admin key")
        body = {
            "token": gate["resolveToken"],
            "decision": "rejected" if reject else "approved",
            "actor": f"cli:{os.environ.get('USER', 'operator')}",
        }
        answer = http.post(f"/runs/{run_id}/gates/{gate['id']}/resolve", json=body)
        answer.raise_for_status()
    print(f"{gate['name']}: {body['decision']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bug_triage.agent",
        description="Bug triage: a Pydantic AI agent made durable with Tidebase.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start a triage run")
    start_cmd.add_argument("--report", required=True)
    start_cmd.add_argument("--crash", action="store_true", help="SIGKILL after the ticket step is checkpointed")
    commands.add_parser("resume", help="re-invoke a run (finished steps replay)").add_argument("run_id")
    approve_cmd = commands.add_parser("approve", help="resolve the run's pending gate")
    approve_cmd.add_argument("run_id")
    approve_cmd.add_argument("--reject", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "start":
        asyncio.run(start(args.report, args.crash))
    elif args.command == "resume":
        asyncio.run(resume(args.run_id))
    else:
        approve(args.run_id, args.reject)


if __name__ == "__main__":
    main()
