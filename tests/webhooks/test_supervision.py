"""Supervision, heartbeats and readiness against real processes (issue #13, item 2):
``manage.py tidebase_run`` (what ``make run`` runs) restarts a killed worker and leaves nothing
behind on SIGTERM; workers and beats record heartbeats; ``GET /ready`` says which part fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port, start_live_server
from tests.webhooks.conftest import TEST_ENV, Worker, wait_for
from webhooks.models import ProcessHeartbeat

FAST_HEARTBEATS = {"TIDEBASE_HEARTBEAT_S": "0.3", "TIDEBASE_HEARTBEAT_STALE_S": "1.5"}


def ready(url: str) -> tuple[int, dict[str, Any]]:
    """``GET /ready``; (0, {}) while nothing listens (the supervised server is starting)."""
    try:
        response = httpx.get(f"{url}/ready", timeout=10)
    except httpx.TransportError:
        return 0, {}
    return response.status_code, response.json()


def descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def running(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def supervised(
    test_database_url: str, broker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], tuple[subprocess.Popen[bytes], str, Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], str, Path]:
        port = free_port()
        env = {
            **os.environ,
            **TEST_ENV,
            **broker_env,
            **FAST_HEARTBEATS,
            "DATABASE_URL": test_database_url,
            "TIDEBASE_API_KEY": "",
            "TIDEBASE_BROKER_DIR": str(tmp_path / "broker"),
            "TIDEBASE_RESTART_BACKOFF_MAX_S": "1",
            "TIDEBASE_STOP_TIMEOUT_S": "10",
        }
        log = tmp_path / "run.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "tidebase_run", "--port", str(port), "--workers", "2", "--threads", "4"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}", log

    yield start
    for proc in procs:
        tree = descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in running(tree):
            os.kill(pid, signal.SIGKILL)


def test_tidebase_run__restarts_a_killed_worker_and_leaves_no_orphan_on_sigterm(
    supervised: Callable[[], tuple[subprocess.Popen[bytes], str, Path]],
) -> None:
    proc, url, log = supervised()

    # Heartbeats appear, and with them readiness.
    wait_for(lambda: ready(url)[0] == 200, 60, what=f"/ready 200; see {log}")
    worker = ProcessHeartbeat.objects.filter(kind="worker", stopped_at__isnull=True).latest("last_seen")
    beat = ProcessHeartbeat.objects.filter(kind="beat", stopped_at__isnull=True).latest("last_seen")
    before = descendants(proc.pid)
    assert {worker.pid, beat.pid} <= before  # the embedded beat is the worker's child

    os.kill(worker.pid, signal.SIGKILL)

    # A new worker (and its embedded beat) comes up; the dead one's beat does not linger.
    def restarted() -> bool:
        pids = set(ProcessHeartbeat.objects.filter(kind="worker").values_list("pid", flat=True))
        return bool(pids - {worker.pid}) and ready(url)[0] == 200

    wait_for(restarted, 60, what=f"a restarted worker; see {log}")
    assert not running({worker.pid, beat.pid})
    assert "worker killed by SIGKILL" in log.read_text()
    after = descendants(proc.pid)
    assert after - before  # the new worker and beat

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert running(before | after) == set(), log.read_text()[-2000:]
    stopped = ProcessHeartbeat.objects.exclude(pid=worker.pid).get(kind="worker")
    assert stopped.stopped_at is not None  # a clean stop is not mistaken for a crash


def test_ready__names_the_stale_worker_and_beat(
    test_database_url: str, broker_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_live_server(test_database_url, **broker_env, **FAST_HEARTBEATS)
    worker = Worker(test_database_url, broker_env, FAST_HEARTBEATS, tmp_path / "worker.log")
    try:
        status, body = ready(server.url)
        assert (status, body["code"], body["ready"]) == (503, "not_ready", False)
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "database": True,
            "migrations": True,
            "broker": True,
            "worker": False,
            "beat": False,
        }
        assert body["checks"]["worker"]["code"] == "no_worker"

        worker.start(concurrency=2)
        status, body = wait_for(lambda: (r := ready(server.url))[0] == 200 and r, 60, what="/ready 200")
        assert body["ready"] is True
        assert (body["checks"]["worker"]["alive"], body["checks"]["beat"]["alive"]) == (1, 1)
        first = ProcessHeartbeat.objects.get(kind="worker").last_seen
        wait_for(lambda: ProcessHeartbeat.objects.get(kind="worker").last_seen > first, 10, what="a second beat")
        assert ProcessHeartbeat.objects.filter(kind="worker").count() == 1  # one row per process, upserted

        worker.kill()  # SIGKILL: no clean stop, the heartbeat just goes stale

        # The two heartbeats were last written at slightly different moments, so they go stale
        # one after the other: wait until both are (the first 503 may name only one).
        def both_stale() -> tuple[int, dict[str, Any]] | None:
            answer = ready(server.url)
            return answer if answer[0] == 503 and answer[1]["error"] == "not ready: worker, beat" else None

        status, body = wait_for(both_stale, 30, what="/ready 503 naming worker and beat")
        assert body["code"] == "not_ready"
        assert body["checks"]["worker"]["code"] == "no_worker"
        assert body["checks"]["worker"]["lastSeenS"] >= 1.5
        assert body["checks"]["beat"]["code"] == "no_beat"
        assert (body["checks"]["database"]["ok"], body["checks"]["broker"]["ok"]) == (True, True)
    finally:
        worker.stop()
        server.stop()


def test_ready__a_check_left_out_of_tidebase_ready_checks_is_reported_but_does_not_decide(
    test_database_url: str, broker_env: dict[str, str]
) -> None:
    server = start_live_server(test_database_url, **broker_env, TIDEBASE_READY_CHECKS="database,migrations,broker")
    try:
        status, body = ready(server.url)
    finally:
        server.stop()

    assert (status, body["ready"]) == (200, True)
    assert body["checks"]["worker"] == {**body["checks"]["worker"], "ok": False, "required": False}


def test_ready__a_broker_that_does_not_answer_fails_fast(test_database_url: str, broker_env: dict[str, str]) -> None:
    if not broker_env["CELERY_BROKER_URL"]:
        pytest.skip("needs a network broker (TIDEBASE_TEST_BROKER_URL)")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    server = start_live_server(test_database_url, CELERY_BROKER_URL=dead)
    try:
        status, body = ready(server.url)
    finally:
        server.stop()

    assert status == 503
    assert body["checks"]["broker"]["code"] == "broker_unavailable"
    assert "127.0.0.1" not in body["checks"]["broker"]["error"]  # names the part, not the address
