"""Against a live server: a run whose worker dies gets a signed ``run.resume`` after its lease
expires, and the SDK receiver finishes it without re-running finished steps. With the broker
hung, API requests do not wait for it and their deliveries go out once it is back."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, start_live_server
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
        wait_for(lambda: log.exists() and "slow" in log.read_text(), 60, what="the agent to reach step 2")
        agent.kill()  # SIGKILL mid-step: no fail report, the lease just lapses
        agent.wait(60)

        wait_for(lambda: tide.runs.get(run_id)["run"]["status"] == "completed", 30, what="the resumed run")
        assert handler.join(60)

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


class HungBroker:
    """A TCP listener that accepts connections, reads what is sent and never answers: a broker
    that hangs. Counts the connections open now and those the other side gave up on."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.lock = threading.Lock()
        self.open = 0
        self.given_up = 0
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # stopped
                return
            with self.lock:
                self.open += 1
                self.connections.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        with self.lock:
            self.open -= 1
            self.given_up += 1

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()


def test_broker_hung__requests_do_not_wait_for_it_and_deliveries_follow(
    test_database_url: str, start_worker, broker_env: dict[str, str], receiver: Receiver
) -> None:
    """Proved by order, not by a stopwatch: the first request returns while its publish is still
    stuck on the hung broker. A server that published inside the request would have had to give up
    on the broker (its socket timeout) and close that connection before answering."""
    broker = HungBroker()
    server = start_live_server(test_database_url, **{**broker_env, "CELERY_BROKER_URL": broker.url}, **TEST_ENV)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            run_ids = []
            for _ in range(5):
                answer = api.post(
                    "/runs/wf", json={"channels": [{"type": "webhook", "url": receiver.url, "secret": "s"}]}
                )
                assert answer.status_code == 200, answer.text
                run = answer.json()["run"]
                api.post(f"/runs/{run['id']}/begin").raise_for_status()
                api.post(f"/runs/{run['id']}/complete", json={"result": {"ok": True}}).raise_for_status()
                run_ids.append(run["id"])
                if len(run_ids) == 1:
                    wait_for(lambda: broker.open, 30, interval=0.01, what="a publish to reach the hung broker")
                    assert broker.given_up == 0  # the answers above came while the publish was stuck
        pending = ChannelDelivery.objects.filter(run_id__in=run_ids)
        assert pending.count() == 5
        assert set(pending.values_list("status", flat=True)) == {"pending"}
        assert receiver.receipts == []

        start_worker()  # the broker is back (the worker uses the real one): the sweep sends them
        wait_for(lambda: pending.filter(status="delivered").count() == 5, 30, what="deliveries after the outage")
        assert sorted(b["runId"] for b in receiver.bodies()) == sorted(run_ids)
        assert {b["type"] for b in receiver.bodies()} == {"run.completed"}
    finally:
        server.stop()
        broker.stop()
