"""A pull worker killed mid-run: its queue run is requeued once the lease lapses (by the
reconciler pass) and completed by another worker without re-executing finished steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, start_live_server
from tidebase_core.services.reconcile import reconcile_tick

SCRIPT = Path(__file__).with_name("worker_script.py")


def _worker(url: str, log: Path, stop: Path, crash_at: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TIDEBASE_URL": url, "PYTHONPATH": str(ROOT)}
    if crash_at is not None:
        env["CRASH_AT"] = str(crash_at)
    return subprocess.Popen([sys.executable, str(SCRIPT), str(log), str(stop)], env=env, cwd=ROOT)


def test_queue_run__killed_worker_is_requeued_and_finished_by_another(test_database_url: str, tmp_path: Path) -> None:
    server = start_live_server(test_database_url, TIDEBASE_LEASE_MS="1500")
    log, stop = tmp_path / "executions.log", tmp_path / "stop"
    try:
        client = httpx.Client(base_url=server.url, timeout=30)
        run = client.post("/queues/jobs/enqueue", json={"workflowName": "crashy", "maxAttempts": 3}).json()["run"]

        first = _worker(server.url, log, stop, crash_at=2)
        assert first.wait(60) == -signal.SIGKILL
        assert log.read_text().split() == ["0", "1", "2"]
        assert client.get(f"/runs/{run['id']}").json()["run"]["status"] == "running"

        # The lease lapses; the reconciler's pass requeues the run (with backoff).
        deadline = time.monotonic() + 30
        while client.get(f"/runs/{run['id']}").json()["run"]["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
            reconcile_tick()
        requeued = client.get(f"/runs/{run['id']}").json()
        assert requeued["run"]["status"] == "queued"
        assert [e["type"] for e in requeued["events"]].count("run.requeued") == 1

        second = _worker(server.url, log, stop)
        try:
            deadline = time.monotonic() + 60
            while client.get(f"/runs/{run['id']}").json()["run"]["status"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            stop.touch()
            second.wait(30)
        done = client.get(f"/runs/{run['id']}").json()
        assert done["run"]["result"] == sum(range(6))
        assert log.read_text().split() == ["0", "1", "2", "3", "4", "5"]  # nothing ran twice
        assert done["run"]["attempt"] == 2
    finally:
        stop.touch()
        server.stop()
