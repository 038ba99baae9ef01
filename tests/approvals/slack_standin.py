"""A local stand-in for Slack: a real HTTP server on loopback that answers as Slack does and
records every call, for tests of approval messages (outbound) and of the interactive callback
(inbound).

- ``webhook_url(name)``: an incoming webhook (``POST /services/<name>``), answers ``ok``.
- ``api_url``: the Web API (``TIDEBASE_SLACK_API_URL``): ``chat.postMessage`` and ``chat.update``
  check ``Authorization: Bearer <token>`` and answer ``{"ok": true, "channel", "ts", ...}`` or,
  as Slack does for API errors, HTTP 200 with ``{"ok": false, "error": ...}``.
- ``response_url(name)``: a click's ``response_url`` (``POST /actions/<name>``), answers
  ``{"ok": true}``.
- ``fail_next(...)``: the next calls answer with a scripted error instead.
- ``click(...)``: the signed ``block_actions`` callback Slack would send when a user clicks a
  button of a recorded message (``slack_sdk``'s signature), for the inbound tests.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_sdk.signature import SignatureVerifier

from tests.conftest import free_port

TOKEN = "xoxb-standin-token"


@dataclass
class SlackCall:
    kind: str
    """``webhook``, ``chat.postMessage``, ``chat.update`` or ``response_url``."""
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answer: dict[str, Any] | str
    at: float

    @property
    def ok(self) -> bool:
        return self.answer == "ok" or (isinstance(self.answer, dict) and self.answer.get("ok") is True)

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))

    def block(self, block_id: str) -> dict[str, Any] | None:
        return next((b for b in self.body.get("blocks", []) if b.get("block_id") == block_id), None)

    def all_text(self) -> str:
        """Every text of the message (its fallback, sections and context), for assertions."""
        parts = [self.text]

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if isinstance(value.get("text"), str):
                    parts.append(value["text"])
                for inner in value.values():
                    walk(inner)
            elif isinstance(value, list):
                for inner in value:
                    walk(inner)

        walk(self.body.get("blocks", []))
        return "\n".join(parts)


@dataclass
class SlackStandIn:
    token: str = TOKEN
    port: int = field(default_factory=free_port)
    calls: list[SlackCall] = field(default_factory=list)
    scripted: deque[tuple[int, dict[str, Any] | str]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    _ts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api"

    def webhook_url(self, name: str = "T000/B000/standin") -> str:
        return f"{self.base}/services/{name}"

    def response_url(self, name: str = "click") -> str:
        return f"{self.base}/actions/{name}"

    def fail_next(self, n: int = 1, *, error: str = "ratelimited", status: int = 200) -> None:
        """The next ``n`` calls answer HTTP ``status`` with ``{"ok": false, "error": error}`` (the
        Web API's way) instead of doing anything."""
        with self.lock:
            for _ in range(n):
                self.scripted.append((status, {"ok": False, "error": error}))

    def of_kind(self, kind: str) -> list[SlackCall]:
        with self.lock:
            return [c for c in self.calls if c.kind == kind]

    def wait(self, predicate: Callable[[list[SlackCall]], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                value = predicate(list(self.calls))
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"Slack stand-in: condition not met in {timeout}s; calls: {self.calls!r}")
            time.sleep(0.05)

    def _answer(self, kind: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any] | str]:
        if self.scripted:
            return self.scripted.popleft()
        if not body.get("text") and not body.get("blocks"):
            return (400, "no_text") if kind in ("webhook", "response_url") else (200, {"ok": False, "error": "no_text"})
        if kind == "webhook":
            return 200, "ok"
        if kind == "response_url":
            return 200, {"ok": True}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if not body.get("channel"):
            return 200, {"ok": False, "error": "channel_not_found"}
        if kind == "chat.update":
            if not body.get("ts"):
                return 200, {"ok": False, "error": "message_not_found"}
            return 200, {"ok": True, "channel": body["channel"], "ts": body["ts"], "text": body.get("text", "")}
        self._ts += 1
        ts = f"{int(time.time())}.{self._ts:06d}"
        message = {"type": "message", "text": body.get("text", ""), "ts": ts, "blocks": body.get("blocks", [])}
        return 200, {"ok": True, "channel": body["channel"], "ts": ts, "message": message}

    def start(self) -> SlackStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                path = self.path.split("?", 1)[0]
                if path.startswith("/services/"):
                    kind = "webhook"
                elif path.startswith("/actions/"):
                    kind = "response_url"
                elif path in ("/api/chat.postMessage", "/api/chat.update"):
                    kind = path.removeprefix("/api/")
                else:
                    kind = "unknown"
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", errors="replace")}
                with standin.lock:
                    status, answer = (404, "no_service") if kind == "unknown" else standin._answer(kind, headers, body)
                    standin.calls.append(SlackCall(kind, path, headers, body, answer, time.monotonic()))
                content = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    ctype = "text/html" if isinstance(answer, str) else "application/json; charset=utf-8"
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def click(
    message: SlackCall,
    *,
    action: str,
    slack_user_id: str,
    signing_secret: str,
    response_url: str,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """The headers and form body of the ``block_actions`` callback Slack sends when
    ``slack_user_id`` clicks ``action`` (``approve``/``reject``) in ``message``, signed with
    ``signing_secret`` at ``timestamp`` (now by default)."""
    actions = message.block("tidebase_gate")
    if actions is None:
        raise AssertionError("the message has no Approve/Reject buttons")
    button = next(e for e in actions["elements"] if e["action_id"] == action)
    payload = {
        "type": "block_actions",
        "user": {"id": slack_user_id, "username": slack_user_id.lower()},
        "team": {"id": "T000"},
        "channel": {"id": message.body.get("channel", "C000")},
        "response_url": response_url,
        "trigger_id": "1.2.3",
        "actions": [
            {
                "type": "button",
                "block_id": "tidebase_gate",
                "action_id": action,
                "value": button["value"],
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": signature,
    }
    return headers, body
