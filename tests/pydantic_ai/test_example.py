"""examples/bug_triage_durable, run as its README says: start --crash (SIGKILL once the ticket
is checkpointed), resume, approve. Pins the numbers in the README's comparison table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.pydantic_ai.agents import lines
from tests.pydantic_ai.conftest import detail, pending_gate, wait_for

MODULE = "examples.bug_triage_durable.agent"


def test_crash_resume_approve(short_lease: str, data_dir: Path) -> None:
    env = {**os.environ, "TIDEBASE_URL": short_lease, "BUG_TRIAGE_DATA": str(data_dir), "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", MODULE, *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    crashed = cli("start", "--report", "Save button crashes", "--crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    match = re.search(r"run id: (\S+)", crashed.stdout)
    assert match is not None
    run_id = match.group(1)
    assert len(lines(data_dir, "tickets.jsonl")) == 1
    assert len(lines(data_dir, "model_calls.jsonl")) == 1

    resumed = subprocess.Popen(
        [sys.executable, "-m", MODULE, "resume", run_id], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        gate = wait_for(lambda: pending_gate(short_lease, run_id), timeout_s=60)
        assert gate["data"]["args"] == {"service": "checkout-web"}
        approved = cli("approve", run_id)
        assert approved.returncode == 0, approved.stderr
        out, _ = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0
    assert "Filed BUG-1. Deploy: checkout-web deployed" in out

    # The comparison table: 3 paid model requests (as without a crash), one ticket, one deploy,
    # 3 usage rows, each tied to its model step.
    assert len(lines(data_dir, "model_calls.jsonl")) == 3
    assert len(lines(data_dir, "tickets.jsonl")) == 1
    assert len(lines(data_dir, "deploys.jsonl")) == 1
    body = detail(short_lease, run_id)
    assert len(body["usage"]) == 3
    assert [s["name"].rsplit(":", 1)[0] for s in body["steps"] if s["name"].startswith("model:")] == [
        "model:bug-triage"
    ] * 3

    again = cli("resume", run_id)  # a completed run: replayed, no model call
    assert "Filed BUG-1" in again.stdout
    assert len(lines(data_dir, "model_calls.jsonl")) == 3
