"""Bug triage with the TidebaseDurability capability: every model request and tool call is
its own checkpoint, so a crash costs at most the one request or tool call that was in flight.

The same story as ``examples/bug_triage`` (the outer-step pattern), built the other way: the
agent gets ``capabilities=[TidebaseDurability()]`` and the workflow just calls ``agent.run``.
Tools declare their side-effect contract in metadata; ``deploy`` is ``requires_approval=True``,
which Tidebase turns into a gate bound to the exact arguments.

Offline: the model is a deterministic ``FunctionModel`` (real model requests are switched off)
and the "ticketing API" / "deploy system" are JSON-lines files in ``$BUG_TRIAGE_DATA`` (default
``./bug-triage-durable-data``). Needs a Tidebase server at ``TIDEBASE_URL``.

    python -m examples.bug_triage_durable.agent start --report "Save button crashes" [--crash]
    python -m examples.bug_triage_durable.agent resume RUN_ID
    python -m examples.bug_triage_durable.agent approve RUN_ID [--reject]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydantic_ai.models
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tidebase import RunLeased
from tidebase.aio import AsyncRunContext, AsyncTidebase
from tidebase.pydantic_ai import TidebaseDurability, idempotency_key, tool_contract

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # offline: only the FunctionModel below answers

WORKFLOW = "bug-triage-durable"
SERVICE = "checkout-web"
MODEL_NAME = "triage-function-model"
CRASH = False  # set by `start --crash`


def data_dir() -> Path:
    path = Path(os.environ.get("BUG_TRIAGE_DATA", "bug-triage-durable-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_line(name: str, record: dict[str, Any]) -> None:
    with (data_dir() / name).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_lines(name: str) -> list[dict[str, Any]]:
    path = data_dir() / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- the model: file a ticket, deploy, answer ----------------------------------------------------


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returned = {
        part.tool_name: part.content
        for message in messages
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }
    if CRASH and "create_ticket" in returned:
        # The first model response and the ticket are checkpointed by now: die before this
        # request reaches the "provider" (so it is not billed), as a killed worker would.
        print("ticket checkpointed; crashing now (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    append_line("model_calls.jsonl", {"after_tools": sorted(returned)})  # what a provider would bill
    if "create_ticket" not in returned:
        title, body = "Save button crashes", "Clicking Save throws a TypeError in the form handler."
        return ModelResponse(parts=[ToolCallPart("create_ticket", {"title": title, "body": body})])
    if "deploy" not in returned:
        return ModelResponse(parts=[ToolCallPart("deploy", {"service": SERVICE})])
    return ModelResponse(parts=[TextPart(f"Filed {returned['create_ticket']}. Deploy: {returned['deploy']}")])


agent = Agent(
    FunctionModel(scripted_model, model_name=MODEL_NAME),
    name="bug-triage",  # step names are built from it: model:bug-triage:1, ...
    capabilities=[TidebaseDurability()],
)


@agent.tool_plain(metadata=tool_contract(side_effects=["ticketing-api"]))
async def create_ticket(title: str, body: str) -> str:
    """File a bug ticket."""
    key = idempotency_key()  # tidebase:<run id>:tool:create_ticket:<tool call id>, stable on replay
    ticket_id = f"BUG-{len(read_lines('tickets.jsonl')) + 1}"
    append_line("tickets.jsonl", {"id": ticket_id, "title": title, "idempotencyKey": key})
    return ticket_id


@agent.tool_plain(requires_approval=True, metadata=tool_contract(side_effects=["deploy"]))
async def deploy(service: str) -> str:
    """Deploy a service (runs only once a human approved this exact call)."""
    append_line("deploys.jsonl", {"service": service, "idempotencyKey": idempotency_key()})
    return f"{service} deployed"


# ---- the workflow: no outer step, no deps plumbing, no manual usage --------------------------


async def workflow(run: AsyncRunContext, input: dict[str, Any]) -> str:
    result = await agent.run(input["report"])
    await run.state_set({"phase": "done"})
    return result.output


async def run_workflow(run_id: str, wait_lease_s: float = 120.0) -> Any:
    """Run (or resume) the workflow; after a crash, wait for the dead worker's run lease to
    lapse (409 ``run_leased`` until then)."""
    deadline = time.monotonic() + wait_lease_s
    async with AsyncTidebase() as tide:
        while True:
            try:
                return await tide.run(WORKFLOW, workflow, run_id=run_id)
            except RunLeased:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)


async def start(report: str, crash: bool) -> None:
    global CRASH
    CRASH = crash
    async with AsyncTidebase() as tide:
        run = await tide.runs.create(WORKFLOW, input={"report": report})
    print(f"run id: {run['id']}", flush=True)
    print(f"output: {await run_workflow(run['id'])}")


async def resume(run_id: str) -> None:
    print(f"output: {await run_workflow(run_id)}")


def approve(run_id: str, reject: bool) -> None:
    """Resolve the pending approval gate with its resolve token from GET /runs/:id (as the
    dashboard does). Needs an open server or an operator/admin TIDEBASE_API_KEY."""
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
        if not gate.get("resolveToken"):
            sys.exit("no resolve token visible: set TIDEBASE_API_KEY to an operator or admin key")
        body = {
            "token": gate["resolveToken"],
            "decision": "rejected" if reject else "approved",
            "actor": f"cli:{os.environ.get('USER', 'operator')}",
        }
        http.post(f"/runs/{run_id}/gates/{gate['id']}/resolve", json=body).raise_for_status()
    print(f"{gate['data']['tool']}({json.dumps(gate['data']['args'])}): {body['decision']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.bug_triage_durable.agent")
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start a triage run")
    start_cmd.add_argument("--report", required=True)
    start_cmd.add_argument("--crash", action="store_true", help="SIGKILL once the ticket is checkpointed")
    commands.add_parser("resume", help="re-invoke a run (finished steps replay)").add_argument("run_id")
    approve_cmd = commands.add_parser("approve", help="resolve the run's pending approval gate")
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
