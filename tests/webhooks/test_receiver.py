"""The SDK's receiving side: rejections, replay protection, re-invocation, WSGI/ASGI/stdlib/Django."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tidebase.receiver import WebhookHandler, serve
from webhooks import signing

SECRET = "receiver-secret"


class FakeTide:
    webhook_secret = SECRET

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._workflows: dict[str, Any] = {"triage": lambda run, input: None}

    def run(self, name: str, workflow: Any = None, run_id: str | None = None) -> Any:
        self.calls.append((name, str(run_id)))
        return {"ok": True}


def message(run_id: str = "run_1", workflow: str = "triage", type: str = "run.resume") -> bytes:
    return json.dumps(
        {"type": type, "runId": run_id, "workflowName": workflow, "reason": "lease_expired", "attempt": 1},
        separators=(",", ":"),
    ).encode()


def signed(body: bytes, *, msg_id: str = "rec_1", secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        **signing.sign_headers(msg_id=msg_id, timestamp=stamp, body=body, secret=secret),
    }


@pytest.fixture
def tide() -> FakeTide:
    return FakeTide()


@pytest.fixture
def handler(tide: FakeTide) -> WebhookHandler:
    return WebhookHandler(tide, background=False)


def test_valid_resume_reinvokes_the_workflow(handler: WebhookHandler, tide: FakeTide) -> None:
    body = message()
    response = handler.handle("POST", signed(body), body)
    assert (response.status, response.body) == (
        200,
        {"accepted": True, "runId": "run_1", "workflowName": "triage", "reason": "lease_expired"},
    )
    assert tide.calls == [("triage", "run_1")]


def test_background_mode_answers_202_and_runs(tide: FakeTide) -> None:
    handler = WebhookHandler(tide)
    body = message(type="run.invoke")
    assert handler.handle("POST", signed(body), body).status == 202
    assert handler.join(60)  # returns as soon as the run is done; 60 s only bounds a hang
    assert tide.calls == [("triage", "run_1")]


# Headers are built inside the test, never at collection: a timestamp taken when pytest collects
# is minutes old by the time a test runs late in a slow or randomly ordered session.
@pytest.mark.parametrize(
    ("make_headers", "code"),
    [
        (lambda: {"content-type": "application/json"}, "missing_signature"),  # unsigned
        (lambda: signed(message(), secret="wrong"), "invalid_signature"),  # wrong secret
        (lambda: signed(message(), timestamp=int(time.time()) - 3600), "stale"),
        (lambda: signed(message(), timestamp=int(time.time()) + 3600), "stale"),
        (lambda: {"x-tidebase-signature": signing.tidebase_signature(message(), SECRET)}, "missing_headers"),
    ],
    ids=["unsigned", "wrong-secret", "an-hour-old", "an-hour-ahead", "no-timestamp"],
)
def test_rejections(
    handler: WebhookHandler, tide: FakeTide, make_headers: Callable[[], dict[str, str]], code: str
) -> None:
    body = message()
    response = handler.handle("POST", make_headers(), body)
    assert (response.status, response.body["code"]) == (401, code)
    assert tide.calls == []


def test_tampered_body_is_rejected(handler: WebhookHandler, tide: FakeTide) -> None:
    headers = signed(message("run_1"))
    response = handler.handle("POST", headers, message("run_2"))
    assert (response.status, response.body["code"]) == (401, "invalid_signature")
    assert tide.calls == []


def test_replayed_message_is_not_processed_again(handler: WebhookHandler, tide: FakeTide) -> None:
    body = message()
    headers = signed(body, msg_id="rec_same")
    assert handler.handle("POST", headers, body).status == 200
    replay = handler.handle("POST", signed(body, msg_id="rec_same"), body)  # even re-timestamped
    assert (replay.status, replay.body["duplicate"], replay.headers["webhook-duplicate"]) == (200, True, "true")
    assert tide.calls == [("triage", "run_1")]


def test_failed_processing_lets_the_retry_through(tide: FakeTide) -> None:
    outcomes = iter([RuntimeError("boom"), None])

    def run(name: str, workflow: Any = None, run_id: str | None = None) -> None:
        error = next(outcomes)
        tide.calls.append((name, str(run_id)))
        if error:
            raise error

    tide.run = run  # type: ignore[method-assign]
    handler = WebhookHandler(tide, background=False)
    body = message()
    assert handler.handle("POST", signed(body, msg_id="rec_r"), body).status == 500
    assert handler.handle("POST", signed(body, msg_id="rec_r"), body).status == 200
    assert len(tide.calls) == 2


def test_upstream_style_signature_when_allowed(tide: FakeTide) -> None:
    handler = WebhookHandler(tide, background=False, require_standard=False)
    body = message()
    assert (
        handler.handle("POST", {"x-tidebase-signature": signing.tidebase_signature(body, SECRET)}, body).status == 200
    )
    assert handler.handle("POST", {"x-tidebase-signature": "sha256=00"}, body).status == 401


def test_method_type_and_workflow_checks(handler: WebhookHandler) -> None:
    assert handler.handle("GET", {}, b"").status == 405
    unknown = message(workflow="nope")
    assert handler.handle("POST", signed(unknown, msg_id="a"), unknown).status == 404
    other = json.dumps({"type": "gate.created", "runId": "r", "gateId": "g", "deliveryId": "d", "payload": {}}).encode()
    assert handler.handle("POST", signed(other, msg_id="b"), other).status == 400
    seen: list[dict[str, Any]] = []
    handler.on("gate.created")(seen.append)
    assert handler.handle("POST", signed(other, msg_id="c"), other).status == 200
    assert seen[0]["gateId"] == "g"


def test_wsgi_and_asgi_adapters(handler: WebhookHandler, tide: FakeTide) -> None:
    body = message()
    headers = signed(body, msg_id="w1")
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items() if k != "content-type"},
    }
    statuses: list[str] = []
    out = b"".join(handler(environ, lambda status, hdrs: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert json.loads(out)["accepted"] is True

    sent: list[dict[str, Any]] = []
    headers = signed(body, msg_id="a1")
    scope = {"type": "http", "method": "POST", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    asyncio.run(handler.asgi(scope, receive, send))
    assert sent[0]["status"] == 200
    assert tide.calls == [("triage", "run_1"), ("triage", "run_1")]


def test_standalone_server(handler: WebhookHandler) -> None:
    server = serve(handler, "127.0.0.1", 0, path="/hook")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = message()
        url = f"http://127.0.0.1:{server.server_port}"
        assert httpx.post(url + "/hook", content=body, headers=signed(body, msg_id="s1")).status_code == 200
        assert httpx.post(url + "/hook", content=body).status_code == 401
        assert httpx.post(url + "/other", content=body).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_django_view(handler: WebhookHandler, rf: Any) -> None:
    from tidebase.django import webhook_view

    view = webhook_view(handler)
    body = message()
    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in signed(body, msg_id="d1").items()}
    request = rf.post("/hook", data=body, content_type="application/json", **headers)
    response = view(request)
    assert response.status_code == 200
    assert json.loads(response.content)["runId"] == "run_1"
