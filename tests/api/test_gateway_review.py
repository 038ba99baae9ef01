"""Review of the ASGI gateway (``tidebase_core.gateway``, ``tidebase_core.server``): the cases a
live server got wrong."""

from __future__ import annotations

import socket
import time

import httpx

from tests.api.test_open_connections import _connect, _post
from tests.conftest import start_live_server


def test_header_with_underscores__is_not_taken_for_its_dashed_twin(live_server_url: str) -> None:
    """``X_Forwarded_For`` must not pass for ``X-Forwarded-For`` (the login throttle's client
    address); the request id shows it on any route."""
    answer = httpx.get(live_server_url + "/runs/no-such-run", headers={"X_Request_ID": "underscoredrequestid42"})
    assert answer.status_code == 404
    assert answer.headers["x-request-id"] != "underscoredrequestid42"


def test_parked_claim_with_a_pipelined_request__hears_its_client_leave(live_server_url: str) -> None:
    """The client of a parked claim pipelines another request, then leaves: the claim must not be
    dispatched again for nobody when a run arrives (it would lease the run to a closed socket)."""
    queue = f"pipelined-gone-{time.monotonic_ns()}"
    sock = _connect(live_server_url)
    claim = _post("/queues/claim", f'{{"queues":["{queue}"],"waitMs":20000}}'.encode())
    sock.sendall(claim + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)  # parked
    sock.close()
    time.sleep(0.5)
    run = httpx.post(live_server_url + f"/queues/{queue}/enqueue", json={"workflowName": "w"}).json()["run"]
    time.sleep(1.5)  # a parked claim is woken within milliseconds of the enqueue
    assert httpx.get(live_server_url + f"/runs/{run['id']}").json()["run"]["status"] == "queued"


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_server_shutdown__answers_parked_long_polls_and_ends_streams(test_database_url: str) -> None:
    """A restart must not cancel what waits into a bare text/plain 500: a parked claim answers
    with what it has (no runs), an SSE stream ends cleanly so its client reconnects."""
    server = start_live_server(test_database_url)
    try:
        run_id = httpx.post(server.url + "/runs/shutdown-probe", json={}).json()["run"]["id"]
        claim = _connect(server.url)
        claim.sendall(
            _post("/queues/claim", f'{{"queues":["shutdown-{time.monotonic_ns()}"],"waitMs":20000}}'.encode())
        )
        stream = _connect(server.url)
        stream.sendall(f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b": connected" in stream.recv(4096)
        time.sleep(0.5)  # the claim is parked
    finally:
        server.stop()
    claimed = _read_until_closed(claim, 5)
    assert claimed.startswith(b"HTTP/1.1 200 "), claimed
    assert b'"runs":[]' in claimed
    assert _read_until_closed(stream, 5).endswith(b"0\r\n\r\n")  # the chunked stream's last chunk
