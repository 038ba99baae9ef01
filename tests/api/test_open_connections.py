"""Open connections cost memory, not threads (issue #11, goal 1).

A server of 2 processes x 4 threads holds 400 open connections: SSE streams, gate and claim
long-polls, keep-alive connections that sent half a request line, and request bodies that
trickle in. Each of the first three used to take a thread for as long as it was open, and so did
each slow client: here 50 times more connections than threads are held while other clients are
served, a held long-poll still answers the moment its gate is decided, the stalled and slow
clients are cut off by the header and body deadlines (408), and the Postgres connections stay
within the pools however many clients wait.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.conftest import ROOT, LiveServer
from tests.live import wait_for

APP = "tb_open_connections"
WORKERS = 2
THREADS = 4
POOL = 3
PER_KIND = 80
"""Connections of each of the five kinds: 400 in all, 50 times the server's threads."""


@pytest.fixture
def server(test_database_url: str) -> Iterator[LiveServer]:
    sep = "&" if "?" in test_database_url else "?"
    env = {
        "DATABASE_URL": f"{test_database_url}{sep}application_name={APP}",
        "TIDEBASE_API_KEY": "",
        "TIDEBASE_API_KEY_CACHE_S": "0",
        "TIDEBASE_DB_POOL_SIZE": str(POOL),
        "TIDEBASE_WEB_THREADS": str(THREADS),
        "TIDEBASE_HEADER_TIMEOUT_S": "3",
        "TIDEBASE_BODY_TIMEOUT_S": "4",
        "TIDEBASE_SSE_KEEPALIVE_S": "2",
        # Longer than the test can take: the held long-poll must answer because the gate was
        # decided, not because its wait ran out.
        "TIDEBASE_GATE_WAIT_MAX_MS": "600000",
    }
    (ROOT / "var").mkdir(exist_ok=True)
    live = LiveServer(env, workers=WORKERS, threads=THREADS)
    yield live
    live.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _open(url: str, request: bytes) -> socket.socket:
    sock = _connect(url)
    sock.sendall(request)
    return sock


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _read_head(sock: socket.socket) -> bytes:
    """Read until the end of the response's status line and headers (or the connection closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _server_connections(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP]).fetchone()
    return int(row[0]) if row else 0


def test_hundreds_of_open_connections__do_not_block_other_clients(server: LiveServer, test_database_url: str) -> None:
    api = httpx.Client(base_url=server.url, timeout=60)
    run_id = api.post("/runs/open-connections", json={}).json()["run"]["id"]
    api.post(f"/runs/{run_id}/begin")
    gate_id = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "?"}).json()["gate"]["id"]
    queue = f"empty-{time.monotonic_ns()}"

    held: list[socket.socket] = []
    try:
        for _ in range(PER_KIND):
            held.append(_open(server.url, _get(f"/runs/{run_id}/events?after=0")))
            held.append(_open(server.url, _get(f"/runs/{run_id}/gates/{gate_id}?waitMs=600000")))
            held.append(_open(server.url, _post("/queues/claim", f'{{"queues":["{queue}"],"waitMs":600000}}'.encode())))
        stalled = [_open(server.url, b"GET /runs HT") for _ in range(PER_KIND)]
        slow = [_open(server.url, _post("/runs/slow", b"{" + b" " * 1000 + b"}")[:-900]) for _ in range(PER_KIND)]
        held += stalled + slow

        # Every SSE stream was accepted and answered (so each one is really open on the server).
        streams = held[0 : 3 * PER_KIND : 3]
        for sock in streams:
            assert _read_head(sock).startswith(b"HTTP/1.1 200")

        # Meanwhile other clients are served: 8 threads and 400 connections.
        assert api.get("/health").status_code == 200
        other = api.post("/runs/other", json={}).json()["run"]["id"]
        owner = api.post(f"/runs/{other}/begin").json()["run"]["leaseOwner"]
        step = api.post(f"/runs/{other}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner})
        step_id = step.json()["step"]["id"]
        done = api.post(f"/runs/{other}/steps/{step_id}/complete", json={"output": 1, "leaseOwner": owner})
        assert done.status_code == 200, done.text
        assert api.get(f"/runs/{other}").json()["run"]["id"] == other

        # A parked long-poll answers when the gate is decided (woken through LISTEN/NOTIFY).
        waiter = held[1]
        resolved = api.post(f"/runs/{run_id}/gates/{gate_id}/resolve", json={"decision": "approved"})
        assert resolved.status_code == 200, resolved.text
        answer = _read_head(waiter)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

        # Postgres connections: each process's pool and its one LISTEN connection, whatever waits.
        assert _server_connections(test_database_url) <= WORKERS * (POOL + 1)

        # Stalled and slow clients are cut off by the deadlines, with a 408.
        for sock in (stalled[0], stalled[-1], slow[0], slow[-1]):
            sock.settimeout(60)
            head = _read_head(sock)
            assert head.startswith(b"HTTP/1.1 408"), head[:200]
            assert b"request_timeout" in head + sock.recv(4096)
    finally:
        for sock in held:
            sock.close()
    api.close()


def test_a_client_that_leaves__frees_its_long_poll(server: LiveServer) -> None:
    """Parked long-polls of clients that went away are dropped at once (no CLOSE-WAIT pile-up):
    after 200 abandoned long-polls the server still answers every request."""
    api = httpx.Client(base_url=server.url, timeout=60)
    run_id = api.post("/runs/leavers", json={}).json()["run"]["id"]
    api.post(f"/runs/{run_id}/begin")
    gate_id = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "?"}).json()["gate"]["id"]
    for _ in range(200):
        _open(server.url, _get(f"/runs/{run_id}/gates/{gate_id}?waitMs=60000")).close()

    def established() -> bool:
        with open("/proc/net/tcp") as f:  # CLOSE-WAIT (08) sockets on the server's port
            port = f"{int(server.url.rsplit(':', 1)[1]):04X}"
            return not any(line.split()[1].endswith(":" + port) and line.split()[3] == "08" for line in f)

    wait_for(established, timeout_s=30)
    assert api.get(f"/runs/{run_id}/gates/{gate_id}").json()["gate"]["status"] == "pending"
    api.close()
