"""Bounded database connections (issue #11, goal 2): a web process uses at most
``TIDEBASE_DB_POOL_SIZE`` Postgres connections however many requests it serves at once, and a
long-poll gives its connection back while it waits, so waiting clients never starve the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ROOT, LiveServer
from tests.live import wait_for

APP = "tb_pool_probe"
POOL = 2
WORKERS = 2  # LiveServer's web processes
LISTENERS = WORKERS  # each process's LISTEN connection (tidebase_core.realtime), not pooled
LONG_POLLS = 12
"""More than the pools' connections: a waiting long-poll holds no connection (and, under the
gateway, no thread: tests/api/test_open_connections.py holds hundreds)."""


def pooled_server(database_url: str, workers: int) -> LiveServer:
    sep = "&" if "?" in database_url else "?"
    env = {
        "DATABASE_URL": f"{database_url}{sep}application_name={APP}",
        "TIDEBASE_API_KEY": "",
        "TIDEBASE_API_KEY_CACHE_S": "0",
        "TIDEBASE_DB_POOL_SIZE": str(POOL),
        "TIDEBASE_DB_POOL_TIMEOUT_S": "3",
        "TIDEBASE_LOCK_TIMEOUT_MS": "60000",  # requests parked on a row lock keep their connection
    }
    (ROOT / "var").mkdir(exist_ok=True)
    return LiveServer(env, workers=workers)


@pytest.fixture
def pooled(test_database_url: str) -> Iterator[LiveServer]:
    server = pooled_server(test_database_url, WORKERS)
    yield server
    server.stop()


@pytest.fixture
def one_process(test_database_url: str) -> Iterator[LiveServer]:
    """One web process, so a test knows which pool a request lands in."""
    server = pooled_server(test_database_url, 1)
    yield server
    server.stop()


def server_connections(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP]).fetchone()
    return int(row[0]) if row else 0


def test_pool__concurrent_long_polls_use_no_more_connections_than_the_pool(
    pooled: LiveServer, test_database_url: str
) -> None:
    api = httpx.Client(base_url=pooled.url, timeout=60)
    run_id = api.post("/runs/pool-probe", json={}).json()["run"]["id"]
    api.post(f"/runs/{run_id}/begin")
    gate_id = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "?"}).json()["gate"]["id"]

    sent = threading.Semaphore(0)
    answers: list[dict[str, Any]] = []

    def long_poll() -> None:
        hooks = {"request": [lambda _request: sent.release()]}
        with httpx.Client(base_url=pooled.url, timeout=60, event_hooks=hooks) as client:
            answers.append(client.get(f"/runs/{run_id}/gates/{gate_id}", params={"waitMs": 30000}).json())

    threads = [threading.Thread(target=long_poll) for _ in range(LONG_POLLS)]
    for t in threads:
        t.start()
    for _ in threads:
        assert sent.acquire(timeout=30)

    # While they wait, other clients are served: the waiting requests hold no connection (with
    # their connections held, a 2-connection pool would answer 503 pool_timeout here).
    created = api.post("/runs/pool-other", json={})
    assert created.status_code == 200, created.text
    other = created.json()["run"]["id"]  # not leased: any owner may begin its steps
    begun = api.post(f"/runs/{other}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": "w"})
    assert begun.status_code == 200, begun.text
    step_id = begun.json()["step"]["id"]
    done = api.post(f"/runs/{other}/steps/{step_id}/complete", json={"leaseOwner": "w", "output": 1})
    assert done.status_code == 200, done.text
    assert server_connections(test_database_url) <= WORKERS * POOL + LISTENERS

    resolved = api.post(f"/runs/{run_id}/gates/{gate_id}/resolve", json={"decision": "approved"})
    assert resolved.status_code == 200, resolved.text
    for t in threads:
        t.join(60)
    assert [a["gate"]["status"] for a in answers] == ["approved"] * LONG_POLLS

    # The long-polls ran at once, one thread each; one persistent connection per thread would
    # leave that many behind. The pool keeps at most its size per process.
    assert server_connections(test_database_url) <= WORKERS * POOL + LISTENERS
    api.close()


def test_pool__a_request_that_finds_no_free_connection_in_time_is_503_pool_timeout(
    one_process: LiveServer, test_database_url: str
) -> None:
    """Exhaust the pool from inside (requests parked on a locked row keep their connection),
    then one more request must wait for a connection and get a clear 503, not a 500."""
    pooled = one_process
    api = httpx.Client(base_url=pooled.url, timeout=60)
    run_id = api.post("/runs/pool-busy", json={}).json()["run"]["id"]
    with psycopg.connect(test_database_url) as holder:
        holder.execute("SELECT 1 FROM tb_run WHERE id = %s FOR UPDATE", [run_id])
        blocked: list[httpx.Response] = []

        def stuck() -> None:  # waits on the run row lock while holding a pooled connection
            with httpx.Client(base_url=pooled.url, timeout=60) as client:
                blocked.append(client.post(f"/runs/{run_id}/begin"))

        threads = [threading.Thread(target=stuck) for _ in range(POOL)]
        for t in threads:
            t.start()
        wait_for(lambda: lock_waiters(test_database_url) >= POOL, 30)
        busy = api.get(f"/runs/{run_id}")
        # A large body is authenticated before it is read (tidebase_core.gateway): that lookup
        # finds no connection either, and must be the same clear 503.
        large = b'{"value": "' + b"x" * 100_000 + b'"}'
        busy_large = api.put(f"/runs/{run_id}/state", content=large, headers={"Content-Type": "application/json"})
        holder.rollback()
    for t in threads:
        t.join(60)

    assert busy.status_code == 503, busy.text
    assert (busy.json()["code"], busy.headers["retry-after"]) == ("pool_timeout", "1")
    assert busy_large.status_code == 503, busy_large.text
    assert (busy_large.json()["code"], busy_large.headers["retry-after"]) == ("pool_timeout", "1")
    api.close()


def lock_waiters(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'", [APP]
        ).fetchone()
    return int(row[0]) if row else 0
