"""Against a live server: a run whose worker dies gets a signed ``run.resume`` after its lease
expires, and the SDK receiver finishes it without re-running finished steps. With the broker
down, API requests still succeed quickly and their deliveries go out once it is back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, start_live_server
from tidebase import Tidebase
from tidebase.receiver import WebhookHandler, serve
from tidebase_core.models import ChannelDelivery, Event

from . import agent_app
from .conftest import TEST_ENV, Receiver, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "e2e-secret"


def test_dead_worker_is_resumed_by_the_sdk_receiver(
    test_database_url: str, start_worker, broker_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_live_server(
        test_database_url, TIDEBASE_LEASE_MS="1500", TIDEBASE_WEBHOOK_SECRET=SECRET, **broker_env, **TEST_ENV
    )
    tide = agent_app.register(Tidebase(url=server.url, webhook_secret=SECRET))
    handler = WebhookHandler(tide)
    http = serve(handler, "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{http.server_port}/"
    log = tmp_path / "agent.log"
    agent = None
    try:
        start_worker(TIDEBASE_WEBHOOK_SECRET=SECRET)
        agent = subprocess.Popen(
            [sys.executable, "-m", "tests.webhooks.agent_app", server.url, webhook, str(log)],
            cwd=ROOT,
            env={**os.environ, "AGENT_HANG": "1"},
            stdout=subprocess.PIPE,
        )
        assert agent.stdout is not None
        run_id = agent.stdout.readline().decode().strip()
        wait_for(lambda: log.exists() and "slow" in log.read_text(), 20, what="the agent to reach step 2")
        agent.kill()  # SIGKILL mid-step: no fail report, the lease just lapses
        agent.wait(10)

        wait_for(lambda: tide.runs.get(run_id)["run"]["status"] == "completed", 30, what="the resumed run")
        assert handler.join(10)

        assert log.read_text().splitlines() == ["fetch", "slow", "slow"]  # fetch replayed from its checkpoint
        assert tide.runs.get(run_id)["run"]["result"] == {"fetch": {"n": 1}, "slow": "done"}
        events = [(e.type, e.payload) for e in Event.objects.filter(run_id=run_id).order_by("seq")]
        started = [p for t, p in events if t == "recovery.started"]
        assert started[0]["reason"] == "lease_expired"
        assert (
            "recovery.delivered",
            {"recoveryAttemptId": started[0]["recoveryAttemptId"], "httpStatus": 202},
        ) in events
    finally:
        if agent and agent.poll() is None:
            agent.kill()
        http.shutdown()
        http.server_close()
        tide.close()
        server.stop()


def test_broker_down_requests_commit_fast_and_deliveries_follow(
    test_database_url: str, start_worker, broker_env: dict[str, str], receiver: Receiver
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    server = start_live_server(test_database_url, **{**broker_env, "CELERY_BROKER_URL": closed}, **TEST_ENV)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as api:
            timings = []
            run_ids = []
            for _ in range(5):
                t0 = time.monotonic()
                answer = api.post(
                    "/runs/wf", json={"channels": [{"type": "webhook", "url": receiver.url, "secret": "s"}]}
                )
                assert answer.status_code == 200, answer.text
                run = answer.json()["run"]
                api.post(f"/runs/{run['id']}/begin").raise_for_status()
                api.post(f"/runs/{run['id']}/complete", json={"result": {"ok": True}}).raise_for_status()
                timings.append(time.monotonic() - t0)
                run_ids.append(run["id"])
        assert max(timings) < 1.5, timings  # three requests each, none waits for the broker
        pending = ChannelDelivery.objects.filter(run_id__in=run_ids)
        assert pending.count() == 5
        assert set(pending.values_list("status", flat=True)) == {"pending"}
        time.sleep(1)
        assert receiver.receipts == []

        start_worker()  # the broker is back (the worker uses the real one): the sweep sends them
        wait_for(lambda: pending.filter(status="delivered").count() == 5, 30, what="deliveries after the outage")
        assert sorted(b["runId"] for b in receiver.bodies()) == sorted(run_ids)
        assert {b["type"] for b in receiver.bodies()} == {"run.completed"}
    finally:
        server.stop()
