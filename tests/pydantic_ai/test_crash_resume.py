"""A durable agent killed mid-run (SIGKILL, a real subprocess) and re-invoked with the same
run id: finished model requests and tool calls replay from their checkpoints, so the model is
paid for exactly as often as without a crash, each tool writes once, and the usage ledger has
one row per paid request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.pydantic_ai.agents import EFFECTS, MODEL_CALLS, build_triage_agent, lines, triage_workflow
from tests.pydantic_ai.conftest import detail, step_names
from tidebase.aio import AsyncTidebase


def create_run(url: str, workflow: str = "pai-triage") -> str:
    response = httpx.post(f"{url}/runs/{workflow}", json={"input": {"report": "Save button crashes"}}, timeout=30)
    response.raise_for_status()
    return str(response.json()["run"]["id"])


def worker(url: str, run_id: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.pydantic_ai.worker", url, run_id, str(data_dir), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def usage_rows(url: str, run_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = detail(url, run_id)["usage"]
    return rows


def test_uncrashed_baseline(short_lease: str, data_dir: Path) -> None:
    run_id = create_run(short_lease)
    done = worker(short_lease, run_id, data_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["output"].startswith("Filed BUG-2 for team-checkout")
    assert len(lines(data_dir, MODEL_CALLS)) == 2
    assert len(lines(data_dir, EFFECTS)) == 2
    assert len(usage_rows(short_lease, run_id)) == 2


def test_sigkill_after_first_tool_then_resume(short_lease: str, data_dir: Path) -> None:
    run_id = create_run(short_lease)

    crashed = worker(short_lease, run_id, data_dir, "--crash-in", "file_ticket")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # The first model response and the first tool call were checkpointed before the kill.
    done_before = step_names(short_lease, run_id)
    assert done_before[0] == "model:triage:1"
    assert done_before[1].startswith("tool:lookup_owner:")
    assert len(done_before) == 2
    assert [e["tool"] for e in lines(data_dir, EFFECTS)] == ["lookup_owner"]
    assert len(lines(data_dir, MODEL_CALLS)) == 1
    assert len(usage_rows(short_lease, run_id)) == 1

    resumed = worker(short_lease, run_id, data_dir)  # retries 409 run_leased until the lease lapses
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["output"].startswith("Filed BUG-2 for team-checkout")

    # Replayed, not re-executed: 2 paid model requests in total, as without the crash.
    assert len(lines(data_dir, MODEL_CALLS)) == 2
    effects = lines(data_dir, EFFECTS)
    assert [e["tool"] for e in effects] == ["lookup_owner", "file_ticket"]  # one write per tool call
    tool_steps = [n for n in step_names(short_lease, run_id) if n.startswith("tool:")]
    # The idempotency key a tool saw is derived from the run and its step: stable across replays.
    assert effects[0]["key"] == f"tidebase:{run_id}:{tool_steps[0]}"
    assert effects[1]["key"] == f"tidebase:{run_id}:{tool_steps[1]}"
    names = step_names(short_lease, run_id)
    assert names[:2] == done_before
    assert names[-1] == "model:triage:2"
    assert len(names) == 4
    rows = usage_rows(short_lease, run_id)
    assert len(rows) == 2  # usage rows == paid requests
    model_steps = {s["id"]: s["name"] for s in detail(short_lease, run_id)["steps"] if s["name"].startswith("model:")}
    assert sorted(model_steps[r["stepId"]] for r in rows) == ["model:triage:1", "model:triage:2"]
    assert detail(short_lease, run_id)["run"]["status"] == "completed"


def test_reinvoking_a_completed_run_calls_no_model(live_server_url: str, data_dir: Path) -> None:
    agent = build_triage_agent(data_dir)

    async def run(run_id: str | None = None) -> Any:
        async with AsyncTidebase(live_server_url) as tide:
            if run_id is None:
                run_id = (await tide.runs.create("pai-again", input={"report": "x"}))["id"]
            result = await tide.run("pai-again", lambda r, i: triage_workflow(agent, r, i), run_id=run_id)
            return run_id, result

    run_id, first = asyncio.run(run())
    calls, rows = len(lines(data_dir, MODEL_CALLS)), len(usage_rows(live_server_url, run_id))
    assert (calls, rows) == (2, 2)
    _, again = asyncio.run(run(run_id))
    assert again["output"] == first["output"]
    assert len(lines(data_dir, MODEL_CALLS)) == calls
    assert len(usage_rows(live_server_url, run_id)) == rows
    assert len(lines(data_dir, EFFECTS)) == 2
