"""Receiving Tidebase webhooks: verify, de-duplicate, re-invoke the workflow.

::

    tide = Tidebase()

    @tide.workflow("bug-triage")
    def triage(run, input): ...

    handler = WebhookHandler(tide)            # secret: TIDEBASE_WEBHOOK_SECRET by default
    # WSGI: ``handler`` is a WSGI app.  ASGI: ``handler.asgi``.  Django: tidebase.django.webhook_view.
    # Standalone:  python -m tidebase.receiver --app myapp:tide --port 8088

A ``run.resume`` or ``run.invoke`` message re-invokes the registered workflow with the run id
(``tide.run(name, run_id=...)``): finished steps replay from their checkpoints and only the rest
executes. By default the run executes on a background thread and the handler answers ``202`` at
once, so the sender's attempt timeout never cuts a long run short; ``background=False`` runs it
to completion first and answers ``200`` (the upstream TypeScript behaviour).

Rejected with ``401``: unsigned messages (when a secret is configured), a bad signature (tampered
body, wrong secret) and a timestamp outside ``tolerance_s``. A message whose ``webhook-id`` was
already accepted is not processed again; it is answered ``200`` with ``{"accepted": false,
"duplicate": true}`` so the sender stops retrying (duplicates happen legitimately when a
sender's worker dies after sending, or when an attempt timed out while the receiver was
working). The id store is an in-memory LRU; pass ``replay_store=`` to share one across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from . import _tracing
from .webhooks import DEFAULT_TOLERANCE_S, WebhookVerificationError, verify

__all__ = ["MemoryReplayStore", "ReplayStore", "WebhookHandler", "WebhookResponse", "main", "serve"]

logger = logging.getLogger("tidebase.receiver")

RUN_TYPES = frozenset({"run.resume", "run.invoke"})
MAX_BODY_BYTES = 1024 * 1024


class ReplayStore(Protocol):
    """Remembers accepted ``webhook-id``s for at least ``ttl_s`` seconds."""

    def add(self, msg_id: str, ttl_s: float) -> bool:
        """Record ``msg_id``; False when it was already recorded (a replay)."""

    def discard(self, msg_id: str) -> None:
        """Forget ``msg_id`` (its processing failed, so a retry must be accepted)."""


class MemoryReplayStore:
    """Thread-safe LRU of ids with expiry. Ids are kept for the handler's tolerance window plus a
    margin: a replay older than that already fails the timestamp check."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, msg_id: str, ttl_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            expires = self._ids.get(msg_id)
            if expires is not None and expires > now:
                return False
            self._ids[msg_id] = now + ttl_s
            self._ids.move_to_end(msg_id)
            while self._ids:
                oldest, oldest_expiry = next(iter(self._ids.items()))
                if len(self._ids) <= self.max_size and oldest_expiry > now:
                    break
                del self._ids[oldest]
            return True

    def discard(self, msg_id: str) -> None:
        with self._lock:
            self._ids.pop(msg_id, None)


@dataclass
class WebhookResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    @property
    def content(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


EventCallback = Callable[[dict[str, Any]], Any]


class WebhookHandler:
    """A framework-agnostic endpoint for Tidebase webhooks (see the module docstring).

    ``tide`` is a :class:`tidebase.Tidebase` (or ``AsyncTidebase``) with workflows registered
    through ``@tide.workflow(name)``. ``secret`` defaults to ``tide.webhook_secret``
    (``TIDEBASE_WEBHOOK_SECRET``); pass a list to accept several during a rotation. With no
    secret at all, messages are accepted unsigned (as upstream) but still de-duplicated.
    ``require_standard=False`` also accepts messages signed only with ``x-tidebase-signature``
    (an upstream server; such messages cannot be checked for staleness or replays).
    ``workflows=`` names the workflows accepted when ``tide`` is not a client with
    ``@tide.workflow`` registrations but any object whose ``run(name, run_id=...)`` resumes a run
    (it may return a coroutine, which is run to completion on the handler's thread).
    """

    def __init__(
        self,
        tide: Any,
        secret: str | Sequence[str] | None = None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        replay_store: ReplayStore | None = None,
        background: bool = True,
        require_standard: bool = True,
        workflows: Iterable[str] | None = None,
    ) -> None:
        self.tide = tide
        self.workflow_names = None if workflows is None else frozenset(workflows)
        configured = secret if secret is not None else getattr(tide, "webhook_secret", None)
        self.secrets: list[str] = [configured] if isinstance(configured, str) else list(configured or [])
        self.tolerance_s = tolerance_s
        self.replay_store: ReplayStore = replay_store or MemoryReplayStore()
        self.background = background
        self.require_standard = require_standard
        self._callbacks: dict[str, EventCallback] = {}
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    # ---- channel events ------------------------------------------------------

    def on(self, event_type: str) -> Callable[[EventCallback], EventCallback]:
        """Handle channel deliveries (``gate.created``, ``run.completed`` …; ``"*"`` for all):
        ``@handler.on("gate.created") def notify(message): ...`` gets the whole decoded body."""

        def decorator(fn: EventCallback) -> EventCallback:
            self._callbacks[event_type] = fn
            return fn

        return decorator

    # ---- the framework-agnostic core ---------------------------------------------

    def handle(self, method: str, headers: Mapping[str, str], body: bytes) -> WebhookResponse:
        """Process one request and return the response to send."""
        if method.upper() != "POST":
            return WebhookResponse(
                405, {"error": "method not allowed"}, {"content-type": "application/json", "allow": "POST"}
            )
        lower = {k.lower(): v for k, v in headers.items()}
        msg_id: str | None = lower.get("webhook-id")
        if self.secrets:
            try:
                verified = verify(
                    body, lower, self.secrets, tolerance_s=self.tolerance_s, require_standard=self.require_standard
                )
            except WebhookVerificationError as exc:
                return WebhookResponse(401, {"error": str(exc), "code": exc.reason})
            msg_id = verified
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return WebhookResponse(400, {"error": "invalid JSON body"})
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return WebhookResponse(400, {"error": "missing type"})
        kind = message["type"]
        if kind in RUN_TYPES:
            if str(message.get("workflowName")) not in self._workflows() or not isinstance(message.get("runId"), str):
                return WebhookResponse(404, {"error": f"workflow {message.get('workflowName')!r} is not registered"})
        elif kind not in self._callbacks and "*" not in self._callbacks:
            return WebhookResponse(400, {"error": f"unsupported webhook type {kind!r}"})
        if msg_id and not self.replay_store.add(msg_id, self.tolerance_s * 2 + 60):
            return WebhookResponse(
                200,
                {"accepted": False, "duplicate": True, "webhookId": msg_id},
                {"content-type": "application/json", "webhook-duplicate": "true"},
            )
        try:
            if kind in RUN_TYPES:
                return self._run(message, msg_id, lower)
            callback = self._callbacks.get(kind) or self._callbacks["*"]
            result = callback(message)
            if inspect.isawaitable(result):
                _await(result)
            return WebhookResponse(200, {"accepted": True, "type": kind})
        except Exception as exc:
            if msg_id:
                self.replay_store.discard(msg_id)  # let the sender's retry through
            logger.exception("tidebase.webhook.failed")
            return WebhookResponse(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _workflows(self) -> Iterable[str]:
        if self.workflow_names is not None:
            return self.workflow_names
        registered: Mapping[str, Any] = getattr(self.tide, "_workflows", {})
        return registered.keys()

    def _run(self, message: dict[str, Any], msg_id: str | None, headers: Mapping[str, str]) -> WebhookResponse:
        name, run_id = str(message["workflowName"]), str(message["runId"])
        answer = {"accepted": True, "runId": run_id, "workflowName": name, "reason": message.get("reason")}
        # The webhook's traceparent (sent by the server's delivery): the resumed run's steps join
        # the trace of the step that failed or the gate that was decided (tidebase/_tracing.py).
        trace = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate", "baggage")}
        if not self.background:
            _invoke(self.tide, name, run_id, trace)
            return WebhookResponse(200, answer)
        thread = threading.Thread(
            target=self._run_background, args=(name, run_id, trace), name=f"tidebase-run-{run_id}", daemon=True
        )
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return WebhookResponse(202, answer)

    def _run_background(self, name: str, run_id: str, trace: Mapping[str, str]) -> None:
        try:
            _invoke(self.tide, name, run_id, trace)
        except Exception:
            # The SDK has already reported the failure to the server (run.fail), which sends a
            # new run_failed recovery webhook when the run has one.
            logger.exception("tidebase.webhook.run_failed", extra={"run_id": run_id})
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for background runs to finish; True when none is left."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._threads_lock:
                threads = list(self._threads)
            if not threads:
                return True
            for t in threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                t.join(left)
            if deadline is not None and time.monotonic() >= deadline:
                with self._threads_lock:
                    return not self._threads

    # ---- WSGI / ASGI adapters ----------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI application."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            response = WebhookResponse(413, {"error": "payload too large"})
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            if environ.get("CONTENT_TYPE"):
                headers["content-type"] = environ["CONTENT_TYPE"]
            response = self.handle(environ.get("REQUEST_METHOD", "GET"), headers, body)
        content = response.content
        status = f"{response.status} {HTTPStatus(response.status).phrase}"
        start_response(status, [*response.headers.items(), ("content-length", str(len(content)))])
        return [content]

    async def asgi(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """ASGI application (HTTP only). Verification and the run happen on a worker thread."""
        if scope.get("type") != "http":
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            event = await receive()
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                break
            chunks.append(chunk)
            more = bool(event.get("more_body"))
        if size > MAX_BODY_BYTES:
            response = WebhookResponse(413, {"error": "payload too large"})
        else:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            response = await asyncio.to_thread(self.handle, scope.get("method", "GET"), headers, b"".join(chunks))
        content = response.content
        raw_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


def _await(value: Awaitable[Any]) -> Any:
    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


def _invoke(tide: Any, name: str, run_id: str, trace: Mapping[str, str]) -> Any:
    with _tracing.continue_trace(trace):
        result = tide.run(name, run_id=run_id)
        if inspect.isawaitable(result):
            return _await(result)  # asyncio.run copies the current context: the trace goes along
        return result


# ---- standalone server ---------------------------------------------------------------


def serve(handler: WebhookHandler, host: str = "127.0.0.1", port: int = 8088, path: str = "/") -> ThreadingHTTPServer:
    """A threaded stdlib HTTP server passing requests on ``path`` to ``handler``. Call
    ``serve_forever()`` on the result (or run it in a thread)."""

    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "tidebase-receiver"

        def _dispatch(self) -> None:
            if self.path.split("?", 1)[0] != path:
                response = WebhookResponse(404, {"error": "not found"})
            else:
                length = int(self.headers.get("content-length") or 0)
                if length > MAX_BODY_BYTES:
                    response = WebhookResponse(413, {"error": "payload too large"})
                else:
                    body = self.rfile.read(length) if length else b""
                    response = handler.handle(self.command, dict(self.headers.items()), body)
            content = response.content
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s - %s", self.address_string(), format % args)

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default backlog of 5 drops connections under bursts
        daemon_threads = True

    server = Server((host, port), RequestHandler)
    return server


def load_app(spec: str, **options: Any) -> WebhookHandler:
    """``module:attr`` naming a Tidebase client (wrapped in a handler) or a WebhookHandler."""
    module_name, _, attr = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in (attr or "tide").split("."):
        target = getattr(target, part)
    if isinstance(target, WebhookHandler):
        return target
    return WebhookHandler(target, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tidebase.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--app", required=True, help="module:attr of a Tidebase client or a WebhookHandler")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--path", default="/", help="URL path to serve (default /)")
    parser.add_argument("--inline", action="store_true", help="run workflows before answering (200, not 202)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_S, help="timestamp tolerance (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler = load_app(args.app, background=not args.inline, tolerance_s=args.tolerance)
    server = serve(handler, args.host, args.port, args.path)
    logger.info("tidebase receiver on http://%s:%s%s", args.host, server.server_port, args.path)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
