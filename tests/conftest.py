"""Shared fixtures. Tests run against real Postgres: the machine's (``DATABASE_URL``) in CI, the
embedded one on a fresh machine. ``live_server_url`` is a real server process on the test
database, so HTTP tests cross a real socket and a real server, as clients do."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.db import connection

from tidebase_core.server import server_argv

ROOT = Path(__file__).resolve().parent.parent


def database_url_for(settings_dict: dict[str, object]) -> str:
    user = quote(str(settings_dict.get("USER") or "postgres"))
    password = quote(str(settings_dict.get("PASSWORD") or ""))
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    name = quote(str(settings_dict["NAME"]))
    auth = f"{user}:{password}@" if password else f"{user}@"
    if host.startswith("/"):
        return f"postgresql://{auth}/{name}?host={quote(host)}"
    return f"postgresql://{auth}{host or '127.0.0.1'}{':' + port if port else ''}/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The project served as ``make run`` serves it (``tidebase_core.server``), on the test database."""

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int = 16) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "PORT": str(self.port), "TIDEBASE_PUBLIC_URL": self.url}
        self.log = open(ROOT / "var" / f"live-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            server_argv(bind=f"127.0.0.1:{self.port}", workers=workers, threads=threads, graceful_timeout=2),
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"live server did not start; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def test_database_url(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> str:
    return database_url_for(connection.settings_dict)


def start_live_server(database_url: str, **env: str) -> LiveServer:
    (ROOT / "var").mkdir(exist_ok=True)
    base = {"DATABASE_URL": database_url, "TIDEBASE_API_KEY": "", "TIDEBASE_API_KEY_CACHE_S": "0"}
    return LiveServer({**base, **env})


@pytest.fixture(scope="session")
def live_server_url(test_database_url: str) -> Iterator[str]:
    """An open server (no API key), shared by the session."""
    server = start_live_server(test_database_url)
    yield server.url
    server.stop()


@pytest.fixture
def api(live_server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server_url, timeout=30) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that talk to a live server need the test database set up, and must not hold a
    transaction the server cannot see: mark them transactional."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "test_database_url" in fixtures and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.django_db(transaction=True))


SHORT_LEASE_MS = 1500
"""Lease of the ``short_lease`` server: a SIGKILLed worker's run lease lapses quickly."""


@pytest.fixture(scope="session")
def short_lease_server(test_database_url: str) -> Iterator[str]:
    server = start_live_server(test_database_url, TIDEBASE_LEASE_MS=str(SHORT_LEASE_MS))
    yield server.url
    server.stop()


@pytest.fixture
def short_lease(short_lease_server: str, test_database_url: str) -> str:
    """URL of an open server with a short lease, for crash, takeover and session tests
    (depends on ``test_database_url`` so the test is marked transactional)."""
    return short_lease_server


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDK clients in the test must not pick up a developer's TIDEBASE_* settings."""
    for name in ("TIDEBASE_URL", "TIDEBASE_API_KEY", "TIDEBASE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


def lock_waiters(table: str) -> int:
    """Sessions of the test database (other than this one) waiting for a lock in a statement
    on ``table``: how a test knows a concurrent writer has reached the lock it holds."""
    with connection.cursor() as cur:
        cur.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND wait_event_type = 'Lock' AND query LIKE %s""",
            [f"%{table}%"],
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0
