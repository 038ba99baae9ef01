"""The lean transport (tidebase/_transport.py): what the clients use for their own calls when no
``transport=``/``http_client=`` is injected. Driven against a raw-socket loopback server, so the
bytes on the wire are what is checked: the same requests as through httpx, one connection kept
across calls, stale connections replaced, and httpx's error classes (hence the same retries)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.sdk.conftest import NO_WAIT
from tidebase import APIConnectionError, PayloadTooLarge, Tidebase
from tidebase import _base as base
from tidebase._base import Call
from tidebase._transport import ResponseParser, lean_origin
from tidebase.aio import AsyncTidebase

ANSWER = {"run": {"id": "run_1", "workflowName": "wf"}, "runs": [], "queues": [], "ok": True}


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def comparable(self) -> tuple[str, str, list[tuple[str, str]], bytes]:
        return self.method, self.target, sorted((k.lower(), v) for k, v in self.headers), self.body


def json_answer(body: Any = ANSWER, status: int = 200, extra: str = "") -> bytes:
    content = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {len(content)}\r\n\r\n"
    return head.encode() + content


@dataclass
class RawServer:
    """HTTP/1.1 on raw sockets. ``respond(request, n)`` (``n``: the request's number on its
    connection) returns the bytes to send, or ``None`` to close without answering;
    ``close_after`` closes the connection after that many answers."""

    respond: Callable[[RawRequest, int], bytes | None] = lambda request, n: json_answer()
    close_after: int | None = None
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ValueError):  # the client or close() may end it anytime
            buf, n = b"", 0
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                request = RawRequest(method, target, headers, buf[:length])
                buf = buf[length:]
                self.requests.append(request)
                n += 1
                answer = self.respond(request, n)
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after is not None and n >= self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()
        for conn in self._open:
            conn.close()


@pytest.fixture
def no_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's own calls must not reach httpx (its event streams aside)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the call went through httpx, not the lean transport")

    monkeypatch.setattr(httpx.Client, "send", refuse)
    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


def calls(tide: Any) -> list[Call]:
    return [
        Call("POST", f"/runs/{base.quote('a b/é')}", base.run_create_body({"x": "é", "n": 1.5}, None, None, None)),
        Call("POST", "/runs/run_1/begin", safe=True, extra_headers={"x-tidebase-worker": "w-1"}),
        Call("GET", "/runs/run_1/steps", params={"status": "completed", "q": "a b&c/é"}, safe=True),
        Call("PUT", "/queues/q/config", {"concurrency": 2}, safe=True),
        Call("PATCH", "/runs/run_1/state", {"value": {"k": [1, None, True]}}),
        Call("DELETE", "/schedules/s", safe=True),
    ]


# ---- the wire --------------------------------------------------------------------------------


def test_wire__lean_requests_are_the_bytes_httpx_sends(server: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "new_idempotency_key", lambda: "k" * 32)
    with Tidebase(server.url, api_key="secret") as lean:
        assert lean._lean is not None
        for call in calls(lean):
            lean._send(call)
    through_lean = list(server.requests)
    server.requests.clear()
    with Tidebase(server.url, api_key="secret", http_client=httpx.Client()) as plain:
        assert plain._lean is None
        for call in calls(plain):
            plain._send(call)
    assert [r.comparable() for r in through_lean] == [r.comparable() for r in server.requests]
    assert through_lean[0].header("idempotency-key") == "k" * 32
    assert through_lean[2].target == "/runs/run_1/steps?status=completed&q=a+b%26c%2F%C3%A9"


def test_wire__async_lean_requests_are_the_bytes_httpx_sends(
    server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "new_idempotency_key", lambda: "k" * 32)

    async def main(**kwargs: Any) -> None:
        async with AsyncTidebase(server.url, api_key="secret", **kwargs) as tide:
            assert (tide._lean is None) == bool(kwargs)
            for call in calls(tide):
                await tide._send(call)

    asyncio.run(main())
    through_lean = list(server.requests)
    server.requests.clear()
    asyncio.run(main(http_client=httpx.AsyncClient()))
    assert [r.comparable() for r in through_lean] == [r.comparable() for r in server.requests]


def test_wire__paths_httpx_would_rewrite_go_through_httpx(server: RawServer) -> None:
    with Tidebase(server.url + "/base/") as tide:
        tide.request("GET", "/runs/a b")
        tide.request("GET", "/runs/ok")
    assert [r.target for r in server.requests] == ["/base/runs/a%20b", "/base/runs/ok"]


# ---- connections -------------------------------------------------------------------------------


def test_connections__one_connection_carries_many_calls(server: RawServer, no_httpx: None) -> None:
    with Tidebase(server.url) as tide:
        for _ in range(5):
            tide.runs.list()

    async def main() -> None:
        async with AsyncTidebase(server.url) as tide:
            for _ in range(5):
                await tide.runs.list()

    asyncio.run(main())
    assert len(server.requests) == 10
    assert server.connections == 2


def test_connections__closed_by_the_server_are_replaced_without_an_error(no_httpx: None) -> None:
    srv = RawServer(close_after=1)  # like a keep-alive timeout after every answer
    try:
        with Tidebase(srv.url, retry=NO_WAIT) as tide:
            for _ in range(3):
                time.sleep(0.05)  # the server's FIN arrives while the connection is idle
                tide.request("POST", "/runs/run_1/complete", {"result": 1})  # unsafe: never retried

        async def main() -> None:
            async with AsyncTidebase(srv.url, retry=NO_WAIT) as tide:
                for _ in range(3):
                    await asyncio.sleep(0.05)
                    await tide.request("POST", "/runs/run_1/complete", {"result": 1})

        asyncio.run(main())
    finally:
        srv.close()
    assert len(srv.requests) == 6
    assert srv.connections == 6


def test_connections__threads_each_get_their_own(server: RawServer, no_httpx: None) -> None:
    gate = threading.Barrier(4)

    def respond(request: RawRequest, n: int) -> bytes:
        if request.target == "/wait":
            gate.wait(5)  # all four requests are in flight at once
        return json_answer()

    server.respond = respond
    with Tidebase(server.url) as tide:
        threads = [threading.Thread(target=tide.request, args=("GET", "/wait")) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert server.connections == 4
        tide.request("GET", "/again")
    assert server.connections == 4  # an idle one was reused


def test_connections__an_answer_delimited_by_close_is_read_and_the_connection_dropped(
    server: RawServer, no_httpx: None
) -> None:
    server.respond = lambda request, n: b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"ok": 1}'
    server.close_after = 1
    with Tidebase(server.url) as tide:
        assert tide.request("GET", "/a") == {"ok": 1}
        assert tide.request("GET", "/b") == {"ok": 1}
    assert server.connections == 2


def test_connections__a_cancelled_async_call_does_not_leave_its_connection_for_reuse(
    server: RawServer, no_httpx: None
) -> None:
    def respond(request: RawRequest, n: int) -> bytes:
        if request.target == "/slow":
            time.sleep(0.3)
        return json_answer({"path": request.target})

    server.respond = respond

    async def main() -> Any:
        async with AsyncTidebase(server.url) as tide:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(tide.request("GET", "/slow"), 0.05)
            return await tide.request("GET", "/fast")

    assert asyncio.run(main()) == {"path": "/fast"}  # not the late answer to /slow
    assert server.connections == 2


def test_connections__an_async_client_outlives_its_event_loop(server: RawServer, no_httpx: None) -> None:
    tide = AsyncTidebase(server.url)
    assert asyncio.run(tide.request("GET", "/one")) == ANSWER
    assert asyncio.run(tide.request("GET", "/two")) == ANSWER  # the first loop's connection is not reused
    asyncio.run(tide.aclose())
    assert server.connections == 2


# ---- errors and retries ----------------------------------------------------------------------


def closed_port_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_errors__connect_failures_are_retried_then_raised(no_httpx: None) -> None:
    url = closed_port_url()
    with Tidebase(url, retry=NO_WAIT) as tide, pytest.raises(APIConnectionError, match="ConnectError"):
        tide.request("POST", "/runs/run_1/complete", {"result": 1})

    async def main() -> None:
        async with AsyncTidebase(url, retry=NO_WAIT) as tide:
            await tide.request("POST", "/runs/run_1/complete", {"result": 1})

    with pytest.raises(APIConnectionError, match="ConnectError"):
        asyncio.run(main())


@pytest.mark.parametrize("safe", [False, True])
def test_errors__a_lost_answer_is_retried_only_for_safe_calls(safe: bool, no_httpx: None) -> None:
    srv = RawServer(respond=lambda request, n: None)  # read the request, close without answering
    try:
        with Tidebase(srv.url, retry=NO_WAIT) as tide, pytest.raises(APIConnectionError, match="RemoteProtocolError"):
            tide.request("POST", "/runs/run_1/x", {"a": 1}, safe=safe)
        sync_count = len(srv.requests)

        async def main() -> None:
            async with AsyncTidebase(srv.url, retry=NO_WAIT) as tide:
                await tide.request("POST", "/runs/run_1/x", {"a": 1}, safe=safe)

        with pytest.raises(APIConnectionError, match="RemoteProtocolError"):
            asyncio.run(main())
    finally:
        srv.close()
    expected = NO_WAIT.max_retries + 1 if safe else 1
    assert (sync_count, len(srv.requests) - sync_count) == (expected, expected)


def test_errors__read_timeout_uses_the_client_timeout(server: RawServer, no_httpx: None) -> None:
    def respond(request: RawRequest, n: int) -> bytes:
        time.sleep(0.5)
        return json_answer()

    server.respond = respond
    started = time.monotonic()
    with (
        Tidebase(server.url, timeout_s=0.1, retry=NO_WAIT) as tide,
        pytest.raises(APIConnectionError, match="ReadTimeout"),
    ):
        tide.request("POST", "/runs/run_1/complete", {"result": 1})

    async def main() -> None:
        async with AsyncTidebase(server.url, timeout_s=0.1, retry=NO_WAIT) as tide:
            await tide.request("POST", "/runs/run_1/complete", {"result": 1})

    with pytest.raises(APIConnectionError, match="ReadTimeout"):
        asyncio.run(main())
    assert time.monotonic() - started < 0.9


def test_errors__status_retries_and_typed_errors_are_unchanged(server: RawServer, no_httpx: None) -> None:
    def respond(request: RawRequest, n: int) -> bytes:
        if request.target == "/busy" and len([r for r in server.requests if r.target == "/busy"]) < 3:
            return json_answer({"error": "busy"}, 503, "retry-after: 0\r\n")
        if request.target == "/big":
            return json_answer({"error": "too big", "code": "payload_too_large"}, 413)
        return json_answer()

    server.respond = respond
    with Tidebase(server.url, retry=NO_WAIT) as tide:
        assert tide.request("GET", "/busy") == ANSWER
        with pytest.raises(PayloadTooLarge):
            tide.request("POST", "/big", {"a": 1})
    assert [r.target for r in server.requests] == ["/busy"] * 3 + ["/big"]


# ---- when the lean path is not used ------------------------------------------------------------


def test_lean_origin__only_plain_http_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    origin = lean_origin("http://localhost:7373/api")
    assert origin is not None
    assert (origin.host, origin.port, origin.host_header, origin.base_path) == (
        "localhost",
        7373,
        "localhost:7373",
        "/api",
    )
    ipv6 = lean_origin("http://[::1]/")
    assert ipv6 is not None
    assert ipv6.host_header == "[::1]"
    assert lean_origin("https://example.com") is None
    assert lean_origin("http://user:pw@example.com") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert lean_origin("http://example.com") is None
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert lean_origin("http://example.com") is not None


def test_lean_origin__injected_transports_and_clients_are_always_used(server: RawServer) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=ANSWER)

    with Tidebase(server.url, transport=httpx.MockTransport(handler)) as tide:
        tide.runs.list()
    with Tidebase(server.url, http_client=httpx.Client(transport=httpx.MockTransport(handler))) as tide:
        tide.runs.list()
    assert seen == ["/runs", "/runs"]
    assert server.requests == []


# ---- response parsing ------------------------------------------------------------------------


def parse(raw: bytes, method: str = "GET", step: int = 1) -> ResponseParser:
    parser = ResponseParser(method)
    for i in range(0, len(raw), step):
        if parser.feed(raw[i : i + step]):
            return parser
    parser.feed_eof()
    return parser


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_parser__framings(step: int) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\nT: 1\r\n\r\n"
    assert parse(chunked, step=step).response().content == b"abcdef"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"
    parsed = parse(interim, step=step)
    assert (parsed.status, parsed.headers["x-a"], parsed.response().content, parsed.keep_alive) == (
        201,
        "1, 2",
        b"abc",
        True,
    )
    until_close = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it", step=step)
    assert (until_close.response().content, until_close.keep_alive) == (b"all of it", False)
    head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", method="HEAD", step=step)
    assert (head.done, head.response().content) == (True, b"")
    body = gzip.compress(b'{"a": 1}')
    zipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert parse(zipped, step=step).response().content == b'{"a": 1}'


def test_parser__truncated_and_malformed_answers_raise_httpx_errors() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        parse(b"")
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(httpx.RemoteProtocolError):
        parse(b"SMTP ready\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(httpx.DecodingError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc").response()
