"""Cross-client crash/resume: a run started by one Python client and SIGKILLed mid-run is
resumed by the other, with finished steps replayed (never re-executed) and input hashes that
match across clients. The official client (``tidebase==0.7.0``) runs in var/interop-venv.

The dead worker's run lease lapses first (a server with ``TIDEBASE_LEASE_MS=1500``); until it
does, both clients get 409 ``run_leased`` and retry (see xclient_worker.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sdk_live.conftest import detail
from tests.sdk_live.xclient_worker import INPUTS  # the values the workers hashed
from tidebase import hash_input

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "xclient_worker.py"
INTEROP_PYTHON = ROOT / "var" / "interop-venv" / "bin" / "python"
OFFICIAL_VERSION = "0.7.0"

pytestmark = pytest.mark.interop


def _clean_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(TIDEBASE_URL=url, TIDEBASE_API_KEY="", PYTHONUNBUFFERED="1")
    return env


def _official_version() -> str | None:
    if not INTEROP_PYTHON.exists():
        return None
    probe = subprocess.run(
        [str(INTEROP_PYTHON), "-c", "import importlib.metadata as m; print(m.version('tidebase'))"],
        capture_output=True,
        text=True,
        cwd="/",
        env=_clean_env(""),
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


@pytest.fixture(scope="session")
def official_python() -> Path:
    if _official_version() != OFFICIAL_VERSION:
        subprocess.run(["bash", str(ROOT / "scripts" / "interop_venv.sh")], check=True, cwd=ROOT)
    assert _official_version() == OFFICIAL_VERSION
    return INTEROP_PYTHON


def run_worker(client: str, official: Path, url: str, run_id: str, log: Path, crash_after: int) -> Any:
    if client == "official":
        # cwd=/ and no PYTHONPATH: ``import tidebase`` can only be the PyPI client.
        command, cwd, env = [str(official)], "/", _clean_env(url)
    else:
        command, cwd, env = [sys.executable], str(ROOT), {**_clean_env(url), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*command, str(WORKER), run_id, str(log), str(crash_after)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=90,
        check=False,
    )
    if crash_after >= 0:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        return None
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["client"] == client
    return answer["result"]


@pytest.mark.parametrize(("first", "second"), [("official", "ours"), ("ours", "official")])
def test_a_run_killed_under_one_client_resumes_under_the_other(
    short_lease: str, official_python: Path, tmp_path: Path, first: str, second: str
) -> None:
    run_id = httpx.post(f"{short_lease}/runs/xclient", json={"input": {}}, timeout=30).json()["run"]["id"]
    log = tmp_path / "executions.log"

    run_worker(first, official_python, short_lease, run_id, log, crash_after=2)
    assert log.read_text().split() == [f"{first}:0", f"{first}:1", f"{first}:2"]

    result = run_worker(second, official_python, short_lease, run_id, log, crash_after=-1)
    assert result == sum(i * i for i in range(5))
    # Finished steps replayed: each step executed exactly once, across both processes.
    assert log.read_text().split() == [f"{first}:0", f"{first}:1", f"{first}:2", f"{second}:3", f"{second}:4"]

    body = detail(short_lease, run_id)
    assert body["run"]["status"] == "completed"
    assert body["run"]["result"] == result
    steps = body["steps"]
    assert [(s["name"], s["status"], s["attempt"]) for s in steps] == [(f"step-{i}", "completed", 1) for i in range(5)]
    # Both clients computed the same input hashes (a mismatch would have stopped the resume).
    assert [s["inputHash"] for s in steps] == [hash_input(value) for value in INPUTS]
