"""How a web process is served: uvicorn on an event loop, in front of ``tidebase_core.gateway``.

``python -m tidebase_core.server --bind HOST:PORT --workers N --threads T`` is the one command
line, shared by ``tidebase_serve`` (``make run``), the test suite and ``make bench``
(``server_argv``). uvicorn (httptools parser, uvloop) holds every connection on one event loop
per process; the gateway runs Django on ``T`` threads only while there is work for it, so open
SSE streams, parked long-polls, idle keep-alive connections and slow clients cost memory, not
threads (docs/serving.md). ``N`` processes share the listening socket; uvicorn restarts one
that dies.

Two things uvicorn does not do on its own, added here:

- a deadline for a request's headers (``TIDEBASE_HEADER_TIMEOUT_S``): uvicorn waits forever for a
  connection that sends nothing, or half a request line. ``DeadlineProtocol`` answers 408 and
  closes it. The body has its own deadline in the gateway (``TIDEBASE_BODY_TIMEOUT_S``);
- a file-descriptor limit that fits thousands of connections: the soft limit is raised to the
  hard one at start.

``X-Forwarded-*`` headers are left to Django (``TIDEBASE_PROXY_COUNT``), not to uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from tidebase_core.exceptions import RequestTimeout

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

_TIMEOUT_BODY = json.dumps(RequestTimeout("the request did not arrive in time").body(), separators=(",", ":")).encode()
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%b" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


_draining: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None


def draining() -> asyncio.Future[None]:
    """Done once this process's server has begun its graceful shutdown: a parked long-poll
    answers with what it has and an SSE stream ends (its client reconnects elsewhere), instead
    of being cancelled at ``--graceful-timeout`` with a bare 500."""
    global _draining
    loop = asyncio.get_running_loop()
    if _draining is None or _draining[0] is not loop:
        _draining = (loop, loop.create_future())
    return _draining[1]


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline from the first byte a request may send (the
    connection opening, or the end of the previous answer) to the end of its headers."""

    header_timeout_s = float(os.environ.get("TIDEBASE_HEADER_TIMEOUT_S") or 10)
    _deadline: asyncio.TimerHandle | None = None
    _running: RequestResponseCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.cycle is not None:  # None: a websocket upgrade, which the gateway refuses anyway
            self.cycle.transport = _Coalescing(self.transport, self.loop)  # type: ignore[assignment]

    def shutdown(self) -> None:
        future = draining()
        if not future.done():
            future.set_result(None)
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        # uvicorn tells only ``self.cycle`` that the client left: with a request pipelined behind
        # the running one, that is the queued request, and a parked long-poll or SSE stream would
        # never hear of it (a claim would take runs for nobody; a stream would live forever).
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no request of ours is running
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()


class _Coalescing:
    """The transport as one request's answer sees it: writes made in the same loop iteration go
    out as one ``write`` (uvicorn writes a response's head and body separately: two segments,
    and two wake-ups of the client, for every answer). Flushed at the end of the iteration, and
    before the connection is closed."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def server_argv(*, bind: str, workers: int, threads: int, graceful_timeout: int = 5) -> list[str]:
    """The one command line that serves the project: ``tidebase_serve``, the tests, ``make bench``."""
    return [
        sys.executable,
        "-m",
        "tidebase_core.server",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--graceful-timeout",
        str(graceful_timeout),
    ]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tidebase_core.server")
    parser.add_argument("--bind", default="127.0.0.1:7373")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--graceful-timeout", type=int, default=5)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    _raise_fd_limit()
    from tidebase_core.metrics import metrics_directory

    metrics_directory(owner=True)  # before any worker imports prometheus_client: they all write there
    os.environ["TIDEBASE_WEB_THREADS"] = str(args.threads)  # read by the gateway in each worker
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    uvicorn.run(
        "config.asgi:application",
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        workers=args.workers,
        # By name, not the class: run as ``-m``, this module is ``__main__`` here and
        # ``__mp_main__`` in a worker, where the gateway would see a second copy of ``draining``.
        http="tidebase_core.server:DeadlineProtocol",
        loop="uvloop",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        access_log=args.access_log,
        timeout_keep_alive=int(os.environ.get("TIDEBASE_KEEPALIVE_S") or 75),
        timeout_graceful_shutdown=args.graceful_timeout,
        backlog=4096,
        log_level=os.environ.get("TIDEBASE_SERVER_LOG_LEVEL", "warning"),
    )


if __name__ == "__main__":
    main()
