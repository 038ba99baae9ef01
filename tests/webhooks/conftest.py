"""Fixtures for the webhook dispatcher: a real broker (the machine's Redis when
``TIDEBASE_TEST_BROKER_URL`` is set, else the embedded filesystem broker in a temporary folder),
real Celery worker processes, and real HTTP receivers on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kombu.pools
import pytest

from tests.conftest import ROOT, free_port
from webhooks.management.commands.tidebase_worker import celery_argv

TEST_ENV = {
    "TIDEBASE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
    "TIDEBASE_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1",
    "TIDEBASE_WEBHOOK_TIMEOUT_S": "2",
    "TIDEBASE_WEBHOOK_CONNECT_TIMEOUT_S": "1",
    "TIDEBASE_WEBHOOK_INFLIGHT_S": "4",
    "TIDEBASE_RECONCILE_MS": "300",
    "TIDEBASE_LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="session")
def broker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Broker settings shared by this process, workers and live servers; an empty broker."""
    url = os.environ.get("TIDEBASE_TEST_BROKER_URL", "")
    folder = tmp_path_factory.mktemp("broker")
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).flushdb()
    env = {"CELERY_BROKER_URL": url, "TIDEBASE_BROKER_DIR": str(folder)}
    _configure_this_process(env)
    return env


def _configure_this_process(env: dict[str, str]) -> None:
    """Point this test process's Celery app (used by the after-commit publisher) at the test broker."""
    from django.test import override_settings

    from config.celery import app, celery_settings

    with override_settings(CELERY_BROKER_URL=env["CELERY_BROKER_URL"], TIDEBASE_BROKER_DIR=env["TIDEBASE_BROKER_DIR"]):
        conf = celery_settings()
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    # kombu keeps producer pools in a process-wide registry keyed by connection: a pool closed
    # there (by an earlier test's broker, or a fork handler) would be handed out again, closed.
    kombu.pools.reset()
    app.conf.update(conf)
    if not env["CELERY_BROKER_URL"]:
        app.conf.broker_url = conf["broker_url"]
    app.amqp._producer_pool = None


class Worker:
    """A Celery worker process (threads pool) with beat embedded, in its own process group."""

    def __init__(self, database_url: str, broker: dict[str, str], env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **TEST_ENV, **broker, **env, "DATABASE_URL": database_url}
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.beat_schedule = Path(broker["TIDEBASE_BROKER_DIR"]) / f"beat-{id(self)}"

    def start(self, *, concurrency: int = 16, beat: bool = True) -> Worker:
        argv = celery_argv(
            concurrency=concurrency, beat=beat, loglevel="warning", pool="threads", schedule=self.beat_schedule
        )
        argv += ["--without-heartbeat", "--hostname", f"test-{id(self)}-{time.monotonic_ns()}@%h"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no graceful shutdown, no acknowledgements."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(
    test_database_url: str, broker_env: dict[str, str], transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker(test_database_url, broker_env, env, tmp_path / f"worker-{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@dataclass
class Receipt:
    webhook_id: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback HTTP server that records every request it gets. ``behaviour(receipt)`` returns
    ``(status, headers, body)`` or sleeps (a hung receiver)."""

    port: int = field(default_factory=free_port)
    receipts: list[Receipt] = field(default_factory=list)
    behaviour: Callable[[Receipt], tuple[int, dict[str, str], bytes]] | None = None
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receipt = Receipt(
                    webhook_id=self.headers.get("webhook-id", ""),
                    attempt=int(self.headers.get("x-tidebase-delivery-attempt") or 0),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                )
                with receiver.lock:
                    receiver.receipts.append(receipt)
                status, headers, content = (
                    (200, {}, b"ok") if receiver.behaviour is None else receiver.behaviour(receipt)
                )
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # many concurrent connects; the default backlog of 5 drops SYNs

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def by_id(self) -> dict[str, list[Receipt]]:
        out: dict[str, list[Receipt]] = {}
        with self.lock:
            for r in self.receipts:
                out.setdefault(r.webhook_id, []).append(r)
        return out

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r.body) for r in self.receipts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
