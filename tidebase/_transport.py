"""A lean HTTP/1.1 transport for the SDK's own JSON calls (sync sockets and asyncio protocols).

Why it exists: a step is two round trips, and through httpx each one costs the client more
CPU than the server spends answering it (URL and header models, h11 events, a request object
and a response object, two ``send()`` calls per request). This transport keeps persistent
connections, writes a request with one ``sendall``/``write`` and parses the answer directly.

It only carries what httpx would carry byte for byte on the wire that matters: the same
method, request target, headers (``Host``, ``Accept-Encoding: gzip, deflate``,
``Connection: keep-alive``, the client's own headers, ``Content-Length`` when there is a body)
and body. Anything it does not handle is left to the client's httpx client: ``https``,
credentials in the URL, a proxy from the environment (:func:`lean_origin` returns ``None``),
or a path or query that httpx would normalise (:meth:`LeanOrigin.render` returns ``None``).

Failures are raised as the httpx exceptions httpx would raise (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``ReadError``, ``WriteError``,
``RemoteProtocolError``, ``DecodingError``), so the clients' retry rules stay the same.
As in httpx: ``timeout_s`` bounds each connect, write and read, not the whole call; an idle
connection is dropped after :data:`KEEPALIVE_EXPIRY_S` or when the server has closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import select
import socket
import threading
import time
import zlib
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import httpx

__all__ = ["AsyncLeanPool", "LeanOrigin", "LeanResponse", "ResponseParser", "SyncLeanPool", "lean_origin"]

KEEPALIVE_EXPIRY_S = 5.0
"""httpx's default: an idle connection older than this is closed, not reused."""
MAX_IDLE_CONNECTIONS = 20
"""httpx's default ``max_keepalive_connections``."""
MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 256 * 1024

# What httpx sends as is: unreserved, sub-delims, ":" "@" "/" and valid percent escapes. Anything
# else (spaces, non-ASCII, "?", "#", dot segments) httpx rewrites, so such calls go through httpx.
_PLAIN_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


class LeanResponse:
    """The parts of an answer the clients read (``status_code``, ``headers``, ``content``),
    named as on ``httpx.Response``. Header names are lower case."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


@dataclasses.dataclass(frozen=True)
class LeanOrigin:
    """Where the lean transport connects, and the request line and headers it sends there."""

    host: str
    port: int
    host_header: str
    base_path: str

    def render(
        self, method: str, path: str, params: Mapping[str, str] | None, headers: Mapping[str, str], body: bytes | None
    ) -> bytes | None:
        """The request bytes, or ``None`` when httpx would send something else for this call."""
        if not _PLAIN_PATH.fullmatch(path) or "/." in path:
            return None
        target = self.base_path + path
        if params:
            if not all(isinstance(v, str) for v in params.values()):
                return None
            target += "?" + urlencode(params)
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.host_header}",
            "Accept-Encoding: gzip, deflate",
            "Connection: keep-alive",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                return None  # httpx refuses these; let it say so
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError:  # httpx refuses non-ASCII header values too
            return None
        return head + body if body else head


def lean_origin(url: str) -> LeanOrigin | None:
    """The origin for ``url`` if the lean transport may carry its calls, else ``None``."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname
    if (
        parts.scheme != "http"
        or not host
        or not host.isascii()
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or (parts.path and (not _PLAIN_PATH.fullmatch(parts.path) or "/." in parts.path))
    ):
        return None
    proxies = getproxies_environment()
    if ("http" in proxies or "all" in proxies) and not proxy_bypass_environment(host, proxies):
        return None
    shown = f"[{host}]" if ":" in host else host
    return LeanOrigin(
        host=host,
        port=port,
        host_header=shown if port == 80 else f"{shown}:{port}",
        base_path=parts.path.rstrip("/"),
    )


# ---- response parsing (shared by both pools) ------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)


class ResponseParser:
    """Incremental HTTP/1.1 response parser: ``feed`` bytes until it returns ``True``."""

    __slots__ = ("_body", "_buf", "_method", "_need", "_seen", "_state", "headers", "keep_alive", "status")

    def __init__(self, method: str) -> None:
        self._method = method
        self._buf = bytearray()
        self._body = bytearray()
        self._state = _HEAD
        self._need = 0
        self._seen = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bool:
        if data:
            self._seen = True
            self._buf += data
        return self._advance()

    def feed_eof(self) -> None:
        """The server closed the connection: finish the answer, or raise."""
        self.keep_alive = False
        if self._state == _UNTIL_CLOSE:
            self._body += self._buf
            self._buf.clear()
            self._state = _DONE
        elif self._state != _DONE:
            if not self._seen:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def response(self) -> LeanResponse:
        return LeanResponse(self.status, self.headers, _decode(bytes(self._body), self.headers.get("content-encoding")))

    def _advance(self) -> bool:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise httpx.RemoteProtocolError("response headers too large")
                    return False
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._start(head)
            elif state == _LENGTH:
                if len(buf) < self._need:
                    return False
                self._body += buf[: self._need]
                del buf[: self._need]
                self._state = _DONE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise httpx.RemoteProtocolError("chunk size line too long")
                    return False
                try:
                    size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("malformed chunk size") from None
                del buf[: end + 2]
                self._need, self._state = size, (_CHUNK_DATA if size else _TRAILER)
            elif state == _CHUNK_DATA:
                if len(buf) < self._need + 2:
                    return False
                if buf[self._need : self._need + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed chunk")
                self._body += buf[: self._need]
                del buf[: self._need + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                del buf[: end + 2]
                if end == 0:
                    self._state = _DONE
            elif state == _UNTIL_CLOSE:
                self._body += buf
                buf.clear()
                return False
            else:
                if buf:  # bytes after the answer: the connection cannot be trusted for another request
                    self.keep_alive = False
                return True

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        try:
            status = int(rest[:3])
        except ValueError:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0]!r}") from None
        if not version.startswith("HTTP/1.") or status < 100:
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0]!r}")
        headers: dict[str, str] = {}
        last = ""
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and last:  # obsolete line folding
                headers[last] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line!r}")
            last, value = name.lower(), value.strip()
            headers[last] = f"{headers[last]}, {value}" if last in headers else value
        if status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status, self.headers = status, headers
        connection = headers.get("connection", "").lower()
        if "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection):
            self.keep_alive = False
        if self._method == "HEAD" or status in (204, 304):
            self._state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            lengths = {v.strip() for v in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise httpx.RemoteProtocolError("malformed content-length")
            self._need = int(lengths.pop())
            self._state = _LENGTH if self._need else _DONE
        else:
            self._state, self.keep_alive = _UNTIL_CLOSE, False


def _decode(content: bytes, encoding: str | None) -> bytes:
    if not encoding or not content:
        return content
    for coding in reversed([c.strip().lower() for c in encoding.split(",")]):
        try:
            if coding == "gzip" or coding == "x-gzip":
                content = zlib.decompress(content, zlib.MAX_WBITS | 16)
            elif coding == "deflate":
                try:
                    content = zlib.decompress(content)
                except zlib.error:
                    content = zlib.decompress(content, -zlib.MAX_WBITS)
            elif coding not in ("identity", ""):
                raise httpx.DecodingError(f"unsupported content-encoding {coding!r}")
        except zlib.error as error:
            raise httpx.DecodingError(str(error)) from error
    return content


# ---- sync ---------------------------------------------------------------------------------


class _SyncConnection:
    __slots__ = ("idle_since", "poller", "sock", "timeout_s")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout_s: float | None = None
        self.idle_since = 0.0
        # ``poll`` where there is one: ``select`` fails on descriptors >= 1024.
        self.poller = select.poll() if hasattr(select, "poll") else None
        if self.poller is not None:
            self.poller.register(sock, select.POLLIN)

    def usable(self, now: float) -> bool:
        """Fresh enough, and nothing to read while idle: else the server closed it (or sent
        bytes nobody asked for)."""
        if now - self.idle_since > KEEPALIVE_EXPIRY_S:
            return False
        try:
            if self.poller is not None:
                return not self.poller.poll(0)
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def exchange(self, data: bytes, method: str, timeout_s: float) -> tuple[LeanResponse, bool]:
        sock = self.sock
        if self.timeout_s != timeout_s:
            sock.settimeout(timeout_s)
            self.timeout_s = timeout_s
        try:
            sock.sendall(data)
        except TimeoutError as error:
            raise httpx.WriteTimeout(str(error) or "timed out") from error
        except OSError:
            # As httpcore does: a server may answer (413, 401...) and close before reading the
            # whole body, so read its answer; if there is none, the read error is raised.
            pass
        parser = ResponseParser(method)
        while True:
            try:
                chunk = sock.recv(_RECV_BYTES)
            except TimeoutError as error:
                raise httpx.ReadTimeout(str(error) or "timed out") from error
            except OSError as error:
                raise httpx.ReadError(str(error)) from error
            if not chunk:
                parser.feed_eof()
                break
            if parser.feed(chunk):
                break
        return parser.response(), parser.keep_alive

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class SyncLeanPool:
    """Persistent connections to one origin, shared by threads (one request per connection)."""

    def __init__(self, origin: LeanOrigin) -> None:
        self.origin = origin
        self._idle: list[_SyncConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    def request(self, data: bytes, method: str, timeout_s: float) -> LeanResponse:
        conn = self._acquire(timeout_s)
        try:
            response, reusable = conn.exchange(data, method, timeout_s)
        except BaseException:
            conn.close()
            raise
        self._release(conn, reusable)
        return response

    def _acquire(self, timeout_s: float) -> _SyncConnection:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours to use
            self._idle, self._pid = [], os.getpid()
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeout_s)
            if conn.usable(now):
                return conn
            conn.close()

    def _connect(self, timeout_s: float) -> _SyncConnection:
        try:
            sock = socket.create_connection((self.origin.host, self.origin.port), timeout=timeout_s)
        except TimeoutError as error:
            raise httpx.ConnectTimeout(str(error) or "timed out") from error
        except OSError as error:
            raise httpx.ConnectError(str(error)) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _SyncConnection(sock)
        conn.timeout_s = timeout_s
        return conn

    def _release(self, conn: _SyncConnection, reusable: bool) -> None:
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            with self._lock:
                if len(self._idle) < MAX_IDLE_CONNECTIONS:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


# ---- asyncio ------------------------------------------------------------------------------


class _AsyncConnection(asyncio.Protocol):
    """One connection driven by callbacks: an answer resolves a future, no task per read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[tuple[LeanResponse, bool]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = 0.0
        self._active_at = 0.0

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: do not reuse this connection
            self.close()
            return
        self._active_at = self.loop.time()
        try:
            done = parser.feed(data)
        except httpx.HTTPError as error:
            self._fail(error)
            return
        if done:
            self._finish(parser)

    def eof_received(self) -> bool:
        self.closed = True
        parser = self._parser
        if parser is not None:
            try:
                parser.feed_eof()
            except httpx.HTTPError as error:
                self._fail(error)
            else:
                self._finish(parser)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if exc is None:
                self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
            else:
                self._fail(httpx.ReadError(str(exc) or type(exc).__name__))

    # requests

    def usable(self, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        return (
            not self.closed
            and self.loop is loop
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since <= KEEPALIVE_EXPIRY_S
        )

    async def exchange(self, data: bytes, method: str, timeout_s: float) -> tuple[LeanResponse, bool]:
        assert self.transport is not None
        self._parser = ResponseParser(method)
        self._waiter = self.loop.create_future()
        self._timeout_s = timeout_s
        self._active_at = self.loop.time()
        self._timer = self.loop.call_at(self._active_at + timeout_s, self._check_timeout)
        try:
            self.transport.write(data)
            return await self._waiter
        finally:
            self._timer.cancel()
            self._parser = self._waiter = self._timer = None

    def _check_timeout(self) -> None:
        # Each read gets the whole timeout (as in httpx), so re-arm from the last bytes received.
        due = self._active_at + self._timeout_s
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_timeout)
            return
        writing = self.transport is not None and self.transport.get_write_buffer_size() > 0
        self._fail(httpx.WriteTimeout("timed out") if writing else httpx.ReadTimeout("timed out"))
        self.close()

    def _finish(self, parser: ResponseParser) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = parser.response(), parser.keep_alive
        except httpx.HTTPError as error:
            waiter.set_exception(error)
        else:
            waiter.set_result(answer)

    def _fail(self, error: BaseException) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class AsyncLeanPool:
    """Persistent connections to one origin for one event loop at a time (connections made on
    another loop are dropped, not reused)."""

    def __init__(self, origin: LeanOrigin) -> None:
        self.origin = origin
        self._idle: list[_AsyncConnection] = []
        self._closed = False

    async def request(self, data: bytes, method: str, timeout_s: float) -> LeanResponse:
        conn = await self._acquire(timeout_s)
        try:
            response, reusable = await conn.exchange(data, method, timeout_s)
        except BaseException:  # includes cancellation: a half-read answer poisons the connection
            conn.close()
            raise
        if reusable and not self._closed and not conn.closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _acquire(self, timeout_s: float) -> _AsyncConnection:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(loop, now):
                return conn
            _close_quietly(conn)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _AsyncConnection(loop), self.origin.host, self.origin.port),
                timeout_s,
            )
        except TimeoutError as error:
            raise httpx.ConnectTimeout(str(error) or "timed out") from error
        except OSError as error:
            raise httpx.ConnectError(str(error)) from error
        return conn

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: _AsyncConnection) -> None:
    """Close a connection that may belong to another event loop (the client was used under an
    earlier ``asyncio.run``): a transport is closed on its own loop; one whose loop is closed
    is left to the garbage collector, which closes its socket."""
    with contextlib.suppress(OSError, RuntimeError):
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if conn.loop is current:
            conn.close()
        elif not conn.loop.is_closed():
            conn.loop.call_soon_threadsafe(conn.close)
