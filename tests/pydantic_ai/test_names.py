"""Step and gate names are compatibility data: a re-invoked run finds its checkpoints by name,
so a rename strands every in-flight run. These pins must only change with a migration plan."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from tests.pydantic_ai.agents import build_triage_agent, triage_workflow
from tests.pydantic_ai.conftest import step_names
from tidebase.aio import AsyncTidebase
from tidebase.pydantic_ai import approval_gate_name, arguments_digest, model_step_name, tool_step_name


def test_name_helpers_are_pinned() -> None:
    assert model_step_name("triage", 1) == "model:triage:1"
    assert tool_step_name("file_ticket", "call-7") == "tool:file_ticket:call-7"
    assert tool_step_name("deploy", "call-7", approved=True) == "tool:deploy:call-7:approved"
    digest = arguments_digest("deploy", {"service": "api", "replicas": 2})
    # sha256 of the canonical JSON {"args":{"replicas":2,"service":"api"},"tool":"deploy"}
    assert digest == hashlib.sha256(b'{"args":{"replicas":2,"service":"api"},"tool":"deploy"}').hexdigest()
    assert digest == "e4b0c941d33a32d5b566e2cf7667b87e977f57e8f962c9b9318477b9e2130385"
    assert digest == arguments_digest("deploy", {"replicas": 2, "service": "api"})  # key order is irrelevant
    assert approval_gate_name("deploy", "call-7", digest) == f"approve:deploy:call-7:{digest}"


def test_names_of_repeated_tool_call_ids_are_pinned() -> None:
    """A provider may reuse an id (``call_0`` for every call): the n-th call of a tool with that
    id in the run carries ``#n`` on the tool name. The first keeps the name it always had, so
    runs recorded before repeats were told apart keep replaying."""
    assert tool_step_name("refund", "call_0", occurrence=1) == "tool:refund:call_0"
    assert tool_step_name("refund", "call_0", occurrence=2) == "tool:refund#2:call_0"
    assert tool_step_name("refund", "call_0", approved=True, occurrence=3) == "tool:refund#3:call_0:approved"
    assert approval_gate_name("refund", "call_0", "d", occurrence=2) == "approve:refund#2:call_0:d"
    # The marker is on the tool name, which never holds "#": no provider id can fake a repeat.
    assert tool_step_name("refund", "call_0#2") != tool_step_name("refund", "call_0", occurrence=2)
    with pytest.raises(ValueError, match="occurrence counts from 1"):
        tool_step_name("refund", "call_0", occurrence=0)


def test_generated_step_names_are_pinned(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir, tool_call_ids=True)

    async def main() -> str:
        async with AsyncTidebase(live_server_url) as tide:
            run = await tide.runs.create("pai-names", input={"report": "Save button crashes"})
            await tide.run("pai-names", lambda r, i: triage_workflow(agent, r, i), run_id=run["id"])
            return str(run["id"])

    run_id = asyncio.run(main())
    assert step_names(live_server_url, run_id) == [
        "model:triage:1",
        "tool:lookup_owner:call-lookup",
        "tool:file_ticket:call-ticket",
        "model:triage:2",
    ]
