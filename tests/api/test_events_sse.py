"""The SSE event stream against a real server: framing, resume points, keep-alives, and that a
subscriber sees exactly the committed events, whichever process wrote them."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection, transaction

from tests.conftest import start_live_server
from tidebase_core.services.events import event_append


class Stream:
    """Reads an SSE response line by line on a thread, so tests can wait with a bound."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._cm = self._client.stream("GET", url, headers=headers or {})
        self.response = self._cm.__enter__()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for line in self.response.iter_lines():
                self.lines.put(line)
        except httpx.HTTPError:
            pass

    def next_event(self, timeout: float = 10) -> dict[str, object]:
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith("data: "):
                return json.loads(line[len("data: ") :])  # type: ignore[no-any-return]

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def open_stream(live_server_url: str) -> Iterator[list[Stream]]:
    streams: list[Stream] = []
    yield streams
    for s in streams:
        s.close()


def _run_with_events(api: httpx.Client, n_state_writes: int) -> str:
    run_id = api.post("/runs/sse", json={}).json()["run"]["id"]
    for i in range(n_state_writes):
        api.put(f"/runs/{run_id}/state", json={"value": {"i": i}})
    return run_id


def test_stream__backlog_after_n_is_framed_one_data_line_then_id(
    api: httpx.Client, live_server_url: str, open_stream: list[Stream]
) -> None:
    run_id = _run_with_events(api, 3)  # seq 1 run.created, 2..4 state.updated
    stream = Stream(f"{live_server_url}/runs/{run_id}/events?after=2")
    open_stream.append(stream)
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    raw: list[str] = []
    while len([line for line in raw if line.startswith("data: ")]) < 2:
        raw.append(stream.lines.get(timeout=10))
    frames = [line for line in raw if line and not line.startswith(":")]
    assert frames[0].startswith("data: {")
    first = json.loads(frames[0][len("data: ") :])
    assert first["seq"] == 3
    assert first["type"] == "state.updated"
    assert frames[1] == "id: 3"
    assert not any(line.startswith("event:") for line in raw)


def test_stream__last_event_id_resumes_when_after_is_absent(
    api: httpx.Client, live_server_url: str, open_stream: list[Stream]
) -> None:
    run_id = _run_with_events(api, 2)
    stream = Stream(f"{live_server_url}/runs/{run_id}/events", headers={"Last-Event-ID": "2"})
    open_stream.append(stream)
    assert stream.next_event()["seq"] == 3


def test_stream__live_events_arrive_only_after_commit_from_another_process(
    api: httpx.Client, live_server_url: str, open_stream: list[Stream]
) -> None:
    run_id = _run_with_events(api, 0)
    stream = Stream(f"{live_server_url}/runs/{run_id}/events?after=1")
    open_stream.append(stream)
    # This test process is not the server: the event crosses processes through Postgres.
    with transaction.atomic():
        event_append(run_id=run_id, type="custom.probe", payload={"n": 1})
        with pytest.raises(queue.Empty):
            stream.next_event(timeout=0.5)  # written but not committed: invisible
    event = stream.next_event()
    assert (event["seq"], event["type"], event["payload"]) == (2, "custom.probe", {"n": 1})
    connection.close()


def test_stream__rolled_back_events_are_never_sent(
    api: httpx.Client, live_server_url: str, open_stream: list[Stream]
) -> None:
    run_id = _run_with_events(api, 0)
    stream = Stream(f"{live_server_url}/runs/{run_id}/events?after=1")
    open_stream.append(stream)
    with transaction.atomic():
        event_append(run_id=run_id, type="custom.rolled_back", payload={})
        transaction.set_rollback(True)
    api.put(f"/runs/{run_id}/state", json={"value": {"after": "rollback"}})
    event = stream.next_event()
    assert (event["seq"], event["type"]) == (2, "state.updated")


def test_stream__sends_keepalive_comments_while_idle(test_database_url: str) -> None:
    server = start_live_server(test_database_url, TIDEBASE_SSE_KEEPALIVE_S="0.2")
    try:
        run_id = httpx.post(f"{server.url}/runs/idle", json={}).json()["run"]["id"]
        stream = Stream(f"{server.url}/runs/{run_id}/events?after=1")
        try:
            lines = [stream.lines.get(timeout=10) for _ in range(4)]
            assert ": keep-alive" in lines
        finally:
            stream.close()
    finally:
        server.stop()


def test_stream__bad_after_is_a_400_with_a_code(api: httpx.Client) -> None:
    response = api.get("/runs/run_x/events?after=abc")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
