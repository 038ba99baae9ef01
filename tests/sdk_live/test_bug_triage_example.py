"""The bug-triage example (examples/bug_triage/) end to end, as a user runs it: separate
processes against a live server with a short lease.

start --crash (killed after the ticket step) → resume (waits out the dead worker's lease, then
blocks at the deploy gate) → approve over HTTP → the run completes. Exactly one ticket, one
deploy after the approval, usage recorded once per completed triage step, and re-invoking the
completed run calls no model and records nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.sdk_live.conftest import detail, pending_gate, wait_for

ROOT = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_crash_resume_approve_complete(short_lease: str, tmp_path: Path) -> None:
    env = {**os.environ, "TIDEBASE_URL": short_lease, "BUG_TRIAGE_DATA": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("TIDEBASE_API_KEY", None)
    cli = [sys.executable, "-m", "examples.bug_triage.agent"]

    def example(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)

    started = example("start", "--report", "Save button crashes on the checkout page", "--crash")
    assert started.returncode == -signal.SIGKILL, started.stderr
    match = re.search(r"run id: (run_\w+)", started.stdout)
    assert match, started.stdout
    run_id = match.group(1)
    tickets, deploys, model_calls = (
        tmp_path / "tickets.jsonl",
        tmp_path / "deploys.jsonl",
        tmp_path / "model_calls.jsonl",
    )
    assert len(lines(tickets)) == 1
    calls_before_crash = len(lines(model_calls))
    assert calls_before_crash == 1  # the call that asked for create_ticket

    # Resume: retries while the dead worker's lease lasts, re-runs the agent (the ticket step
    # replays), then blocks at the deploy gate.
    resumed = subprocess.Popen(
        [*cli, "resume", run_id], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        gate = wait_for(lambda: pending_gate(short_lease, run_id), timeout_s=60)
        assert gate["name"] == "approve-deploy:checkout-web"
        assert lines(deploys) == []  # nothing deployed before the approval

        approved = example("approve", run_id)
        assert approved.returncode == 0, approved.stderr
        out, err = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    assert resumed.returncode == 0, err
    assert "output: Filed a ticket for the crash. Deploy: checkout-web deployed" in out

    assert len(lines(tickets)) == 1  # the replayed ticket step did not file another one
    assert [d["service"] for d in lines(deploys)] == ["checkout-web"]
    body = detail(short_lease, run_id)
    assert body["run"]["status"] == "completed"
    steps = {s["name"]: s for s in body["steps"]}
    assert set(steps) == {"create-ticket:Save button crashes", "deploy:checkout-web", "triage"}
    # triage was begun by the crashed process too; the tool steps ran once each.
    assert {name: (s["status"], s["attempt"]) for name, s in steps.items()} == {
        "create-ticket:Save button crashes": ("completed", 1),
        "deploy:checkout-web": ("completed", 1),
        "triage": ("completed", 2),
    }
    (gate_row,) = body["gates"]
    assert (gate_row["decision"], gate_row["actor"]) == ("approved", f"cli:{os.environ.get('USER', 'operator')}")
    # Deployed only after the approval, in the run's own event order.
    events = [(e["type"], e["payload"]) for e in body["events"]]
    resolved_at = next(i for i, (t, _) in enumerate(events) if t == "gate.resolved")
    deploy_started = next(
        i for i, (t, p) in enumerate(events) if t == "step.started" and p["name"] == "deploy:checkout-web"
    )
    assert resolved_at < deploy_started
    # Usage: one row per completed triage step (recorded inside the step, so never twice).
    completed_triage = [s for s in body["steps"] if s["name"] == "triage" and s["status"] == "completed"]
    assert len(body["usage"]) == len(completed_triage) == 1
    (usage,) = body["usage"]
    assert (usage["kind"], usage["model"]) == ("llm", "triage-function-model")
    assert usage["inputTokens"] > 0
    assert usage["outputTokens"] > 0
    # The agent re-run after the crash paid for its first model call again (3 calls after).
    assert len(lines(model_calls)) == calls_before_crash + 3

    # Re-invoking the completed run: no model call, no usage, the same answer.
    again = example("resume", run_id)
    assert again.returncode == 0, again.stderr
    assert "output: Filed a ticket for the crash. Deploy: checkout-web deployed" in again.stdout
    assert len(lines(model_calls)) == calls_before_crash + 3
    assert len(detail(short_lease, run_id)["usage"]) == 1
    assert len(lines(tickets)) == 1
    assert len(lines(deploys)) == 1
