"""The ASGI front of a web process: connections on an event loop, Django on a thread pool.

uvicorn (``tidebase_core.server``) accepts and parses connections on one event loop per process.
This gateway answers ``GET /health`` on the loop, receives each request body on the loop (with a
deadline, a size limit and admission for large bodies), then runs the WSGI application
(``config.wsgi.application``: the step hot path, the protocol handler, the dashboard) on a
bounded pool of ``TIDEBASE_WEB_THREADS`` threads, and writes the answer back on the loop.

So a client costs a thread only while Django works for it:

- an idle keep-alive connection, a stalled request line or a slow body waits on the loop, and is
  cut off by the header deadline (``server.DeadlineProtocol``) or ``TIDEBASE_BODY_TIMEOUT_S``;
- a gate or claim long-poll that has nothing to answer yet is *parked*
  (``tidebase_core.waiting``): the thread is given back, the loop awaits the process's
  LISTEN hub, and the request is dispatched again when woken or when its wait is up;
- an SSE stream is a coroutine that asks a thread for the next chunk only when woken;
- a client that goes away while parked or streaming is noticed at once (``http.disconnect``),
  not at the next write.

The step hot path keeps its WSGI form (``hotpath.serve``), so the same code serves under plain
WSGI (Django's test client, ``runserver``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import OperationalError, close_old_connections

from tidebase_core import auth, metrics
from tidebase_core.db import operational_answer
from tidebase_core.exceptions import DomainError, RequestTimeout
from tidebase_core.middleware import (
    RESOLVE_PATH,
    UNAUTHORIZED,
    bearer_token,
    is_protocol_path,
    large_bodies_busy,
    too_large_body,
)
from tidebase_core.server import draining
from tidebase_core.waiting import DEADLINE, PARK, EventStream, Parked
from tidebase_core.wire import dumps

logger = logging.getLogger("tidebase.gateway")

Scope = dict[str, Any]
Message = dict[str, Any]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Coroutine[Any, Any, None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

EAGER_BODY_BYTES = 64 * 1024
"""Bodies up to this size are read before anything else; a larger protocol body is read only
once its API key is known to be valid (a stranger never makes the process buffer megabytes)."""

_HEALTH = dumps({"ok": True})
ENVIRON = "tidebase.environ"


def _json(status: int, body: dict[str, object], *extra: tuple[bytes, bytes]) -> Answer:
    content = dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"access-control-allow-origin", settings.TIDEBASE_CORS_ORIGIN.encode("latin-1")),
        *extra,
    ]
    return status, headers, content


class _Disconnected(Exception):
    pass


class Gateway:
    def __init__(self, wsgi: WSGIApp, threads: int | None = None) -> None:
        self.wsgi = wsgi
        self.threads = threads or settings.TIDEBASE_WEB_THREADS
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="tidebase-web")
        self._large: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if metrics.ENABLED:
                await self._measured(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets: not served; uvicorn answers 403 when the app returns without accepting

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._large = asyncio.Semaphore(max(1, settings.TIDEBASE_LARGE_BODY_CONCURRENCY))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- one request -------------------------------------------------------------------------

    async def _measured(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``_http``, observed once when it ends: method, route template (left in the environ by
        the WSGI side, ``metrics.ROUTE_ENVIRON``), status and duration (``tidebase_core.metrics``)."""
        started = time.perf_counter()
        answered = 0

        async def sending(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = message["status"]
            await send(message)

        try:
            await self._http(scope, receive, sending)
        finally:
            environ = scope.get(ENVIRON)
            operation = environ.get(metrics.ROUTE_ENVIRON) if environ is not None else None
            route = metrics.route_label(scope["path"], operation)
            # 499 (as nginx logs it): the client left before any answer was sent.
            metrics.observe_request(scope["method"], route, answered or 499, time.perf_counter() - started)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/health" and scope["method"] in ("GET", "HEAD"):
            # Liveness: answered on the loop, so it stays fast whatever the threads are doing.
            status, answer_headers, content = _json(200, {"ok": True})
            await _respond(send, status, answer_headers, b"" if scope["method"] == "HEAD" else content)
            return
        headers = _headers(scope)
        protocol = is_protocol_path(path)
        length_header = headers.get("CONTENT_LENGTH")
        length = int(length_header) if length_header and length_header.isdigit() else None
        chunked = length is None and "chunked" in headers.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit = settings.TIDEBASE_MAX_BODY_BYTES if protocol else settings.TIDEBASE_FORM_MAX_BODY_BYTES
        if length is not None and length > limit:
            await _respond(send, *_too_large(limit), close=True)
            return
        expected = limit if chunked else (length or 0)
        if protocol and (chunked or expected > EAGER_BODY_BYTES) and scope["method"] != "OPTIONS":
            refused = await self._authenticate(path, headers)
            if refused is not None:
                await _respond(send, *refused, close=True)
                return
        large = expected > settings.TIDEBASE_LARGE_BODY_BYTES
        if large:
            if self._large is None:  # a server that sent no lifespan startup
                self._large = asyncio.Semaphore(max(1, settings.TIDEBASE_LARGE_BODY_CONCURRENCY))
            try:
                await asyncio.wait_for(self._large.acquire(), settings.TIDEBASE_LARGE_BODY_WAIT_S)
            except TimeoutError:
                await _respond(send, *_domain(large_bodies_busy()), close=True)
                return
        try:
            try:
                async with asyncio.timeout(settings.TIDEBASE_BODY_TIMEOUT_S):  # no task per request
                    body = await _read_body(receive, limit)
            except TimeoutError:
                late = RequestTimeout("the request body did not arrive in time")
                await _respond(send, *_domain(late), close=True)
                return
            except _Disconnected:
                return
            if body is None:
                await _respond(send, *_too_large(limit), close=True)
                return
            environ = _environ(scope, headers, body, admitted=large)
            scope[ENVIRON] = environ  # where _measured finds the route the WSGI side served
            await self._dispatch(environ, body, receive, send)
        finally:
            if large:
                assert self._large is not None
                self._large.release()

    async def _authenticate(self, path: str, headers: dict[str, str]) -> Answer | None:
        """The protocol's 401, decided before a large body is read (the middleware decides it
        again, identically, for every request)."""
        header = headers.get("HTTP_AUTHORIZATION")
        if header is None and RESOLVE_PATH.match(path):
            return None  # the resolve token in the body is the credential
        loop = asyncio.get_running_loop()
        try:
            principal = await loop.run_in_executor(self.executor, _authenticate_in_thread, bearer_token(header))
        except OperationalError as exc:  # no pooled connection for the key lookup in time
            answer = operational_answer(exc, path)
            if answer is None:
                raise
            return _domain(answer)
        if principal is None:
            return _json(401, UNAUTHORIZED)
        return None

    async def _dispatch(self, environ: dict[str, Any], body: bytes, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        client = _Client(receive, send)
        try:
            while True:
                environ["wsgi.input"] = io.BytesIO(body)
                outcome = await loop.run_in_executor(self.executor, _call, self.wsgi, environ, client)
                if isinstance(outcome, Parked):
                    try:
                        await _wait(outcome.flag, outcome.wait_s, client.watch())
                    finally:
                        outcome.release()
                    if client.gone:
                        return
                    environ[DEADLINE] = outcome.deadline
                    if draining().done():  # dispatched once more with its wait over: it answers now
                        environ[DEADLINE] = min(outcome.deadline, time.monotonic())
                    continue
                if isinstance(outcome, EventStream):
                    await self._events(outcome, client)
                    return
                if outcome is None:  # streamed by the worker thread
                    return
                status, headers, content = outcome
                await _respond(send, status, headers, content)
                return
        finally:
            client.close()

    async def _events(self, stream: EventStream, client: _Client) -> None:
        """An SSE stream: a thread is asked for the next chunk only when the flag was set."""
        loop = asyncio.get_running_loop()
        left = client.watch()
        try:
            start = {"type": "http.response.start", "status": stream.status_code, "headers": _wire_headers(stream)}
            await client.send(start)
            await client.chunk(b": connected\n\n")
            while True:
                stream.flag.clear()
                try:
                    chunk = await loop.run_in_executor(self.executor, stream.poll)
                except Exception:  # e.g. no pooled connection, or the database went away
                    # End the stream cleanly: EventSource reconnects with Last-Event-ID and
                    # resumes where it left off, and nothing was sent that is not committed.
                    logger.exception("sse.poll.failed")
                    await client.send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if chunk:
                    await client.chunk(chunk)
                    continue
                woken = await _wait(stream.flag, stream.keepalive_s, left)
                if client.gone:
                    return
                if draining().done():  # shutting down: end the stream, the client reconnects
                    await client.send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if not woken:
                    await client.chunk(b": keep-alive\n\n")
        except _Disconnected:
            return
        finally:
            stream.release()


class _Client:
    """The client side of one request: how to write to it, and whether it has gone away. Its
    disconnect is watched (a task awaiting ``http.disconnect``) only once the request waits or
    streams: a plain request pays nothing for it."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        self._left: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    def watch(self) -> asyncio.Task[None]:
        if self._left is None:
            self._left = self.loop.create_task(_until_disconnect(self.receive))
        return self._left

    @property
    def gone(self) -> bool:
        return self._left is not None and self._left.done()

    async def chunk(self, data: bytes) -> None:
        self.watch()
        if self.gone:
            raise _Disconnected
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def emit(self, message: Message) -> None:
        """Write from a worker thread (a streaming response such as the usage CSV, whose
        generator may hold a cursor and so is consumed on the thread that started it)."""
        asyncio.run_coroutine_threadsafe(self._emit(message), self.loop).result()

    async def _emit(self, message: Message) -> None:
        self.watch()
        if self.gone:
            raise _Disconnected
        await self.send(message)

    def close(self) -> None:
        if self._left is not None:
            self._left.cancel()


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _authenticate_in_thread(token: str) -> object | None:
    try:
        return auth.authenticate(token)
    finally:
        close_old_connections()


def _call(wsgi: WSGIApp, environ: dict[str, Any], client: _Client) -> Parked | EventStream | Answer | None:
    """Run the WSGI application on this (worker) thread. A complete answer is read, and the
    response closed, here: on the thread whose database connection it used."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return _no_write

    result = wsgi(environ, start_response)
    if isinstance(result, (Parked, EventStream)):
        result.close()  # request_finished: the connection goes back to the pool meanwhile
        return result
    status = int(started[0].split(" ", 1)[0])
    headers = _encode(started[1])
    try:
        if not getattr(result, "streaming", False):
            return status, headers, b"".join(result)
        client.emit({"type": "http.response.start", "status": status, "headers": headers})
        try:
            for chunk in result:
                if chunk:
                    client.emit({"type": "http.response.body", "body": chunk, "more_body": True})
            client.emit({"type": "http.response.body", "body": b"", "more_body": False})
        except _Disconnected:
            pass
        return None
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _wire_headers(response: Any) -> list[tuple[bytes, bytes]]:
    return _encode(list(response.items()))


def _no_write(data: bytes) -> None:  # pragma: no cover - Django never uses write()
    raise RuntimeError("the WSGI write() callable is not supported")


async def _wait(flag: Any, wait_s: float, left: asyncio.Task[None]) -> bool:
    """Wait until the flag is set (True), ``wait_s`` passes, the client leaves or the server
    begins shutting down (False)."""
    future = flag.future()
    try:
        waits = {future, left, draining()}
        done, _ = await asyncio.wait(waits, timeout=max(wait_s, 0), return_when=asyncio.FIRST_COMPLETED)
        return future in done
    finally:
        flag.forget()


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    first: bytes = message.get("body", b"")
    if len(first) > limit:
        return None
    if not message.get("more_body", False):
        return first  # the usual case: the whole body came with the headers
    buffer = io.BytesIO()
    buffer.write(first)
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        buffer.write(chunk)
        if not message.get("more_body", False):
            return buffer.getvalue()


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], content: bytes, *, close: bool = False
) -> None:
    if close:  # the rest of the request was not read: the connection cannot carry another one
        headers = [*headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})


def _too_large(limit: int) -> Answer:
    return _json(413, too_large_body(limit))


def _domain(exc: DomainError) -> Answer:
    return _json(exc.status_code, exc.body(), *_encode(exc.headers()))


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers as WSGI names them (repeated headers joined with a comma)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        if b"_" in raw_name:
            # ``X_Forwarded_For`` would pass for ``X-Forwarded-For`` (and be joined to the
            # proxy's): dropped, as gunicorn and runserver drop them.
            continue
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        out[name] = out[name] + "," + value if name in out else value
    return out


def _environ(scope: Scope, headers: dict[str, str], body: bytes, *, admitted: bool) -> dict[str, Any]:
    query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query,
        # The undecoded request target: ``%2F`` inside a name must not split it (§19.9).
        "RAW_URI": raw_path.decode("latin-1") + ("?" + query if query else ""),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        PARK: True,
        **headers,
    }
    if body or "CONTENT_LENGTH" in headers or "HTTP_TRANSFER_ENCODING" in headers:
        environ["CONTENT_LENGTH"] = str(len(body))  # a chunked body arrives whole
        environ.pop("HTTP_TRANSFER_ENCODING", None)
    if admitted:
        environ["tidebase.admitted"] = True  # LargeBodies: the gateway already holds the slot
    return environ
