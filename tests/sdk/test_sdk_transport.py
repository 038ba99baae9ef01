from __future__ import annotations

import httpx
import pytest

from tests.sdk.conftest import NO_WAIT
from tests.sdk.fake_server import FakeServer
from tidebase import (
    APIConnectionError,
    Conflict,
    Forbidden,
    GateAlreadyResolved,
    InvalidRequest,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    RunCancelled,
    RunLeased,
    ServerError,
    Tidebase,
    TidebaseError,
    Unauthorized,
)
from tidebase._base import parse_retry_after


def test_config__env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Tidebase().url == "http://localhost:7373"
    monkeypatch.setenv("TIDEBASE_URL", "http://example.test:9000/")
    monkeypatch.setenv("TIDEBASE_API_KEY", "k")
    client = Tidebase()
    assert (client.url, client.api_key) == ("http://example.test:9000", "k")


def test_requests__carry_auth_and_quote_names(fake: FakeServer) -> None:
    with Tidebase("http://tidebase.test", api_key="key", transport=fake.transport()) as tide:
        tide.runs.create("a/b c", input={"x": 1})
    request = fake.requests[0]
    assert request.headers["authorization"] == "Bearer key"
    assert request.url.raw_path == b"/runs/a%2Fb%20c"


def test_retry__connect_error_is_retried_even_for_unsafe_calls(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.inject("POST", "/complete$", httpx.ConnectError("refused"), times=2)
    tide.request("POST", f"/runs/{run['id']}/complete", {"result": 1})
    assert len(fake.calls("POST", "/complete$")) == 3
    assert fake.runs[run["id"]]["status"] == "completed"


def test_retry__gives_up_after_max_retries(tide: Tidebase, fake: FakeServer) -> None:
    fake.inject("GET", "/runs$", httpx.ConnectError("refused"), times=10)
    with pytest.raises(APIConnectionError):
        tide.runs.list()
    assert len(fake.calls("GET", "/runs$")) == NO_WAIT.max_retries + 1


def test_retry__503_is_retried_for_safe_calls(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.inject("GET", "/runs/run_", httpx.Response(503, json={"error": "busy"}), times=2)
    assert tide.runs.get(run["id"])["run"]["id"] == run["id"]
    assert len(fake.calls("GET")) == 3


def test_retry__503_is_not_retried_for_unsafe_writes(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.inject("POST", "/complete$", httpx.Response(503, json={"error": "busy"}))
    with pytest.raises(ServerError):
        tide.request("POST", f"/runs/{run['id']}/complete", {"result": 1})
    assert len(fake.calls("POST", "/complete$")) == 1


def test_retry__read_error_is_not_retried_for_unsafe_writes(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.inject("PATCH", "/state$", httpx.ReadError("connection reset"))
    with pytest.raises(APIConnectionError):
        tide.request("PATCH", f"/runs/{run['id']}/state", {"value": {"n": 1}})
    assert len(fake.calls("PATCH")) == 1


def test_retry__run_create_reuses_one_idempotency_key(tide: Tidebase, fake: FakeServer) -> None:
    fake.inject("POST", "^/runs/wf$", httpx.ReadTimeout("lost"))
    fake.inject("POST", "^/runs/wf$", httpx.Response(502, json={"error": "bad gateway"}))
    tide.runs.create("wf")
    tide.runs.create("wf")
    creates = fake.calls("POST", "^/runs/wf$")
    assert len(creates) == 4
    keys = [r.headers["idempotency-key"] for r in creates]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert len(keys[0]) == 32


def test_retry__429_honours_retry_after(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("tidebase._client.time.sleep", slept.append)
    fake.inject("GET", "/runs$", httpx.Response(429, headers={"retry-after": "2"}, json={"error": "slow down"}))
    with Tidebase("http://tidebase.test", transport=fake.transport()) as tide:
        assert tide.runs.list() == []
    assert slept == [2.0]


def test_retry__400_is_not_retried(tide: Tidebase, fake: FakeServer) -> None:
    fake.inject("GET", "/runs$", httpx.Response(400, json={"error": "bad", "code": "invalid_request"}))
    with pytest.raises(InvalidRequest) as caught:
        tide.runs.list()
    assert len(fake.calls("GET")) == 1
    assert (caught.value.status, caught.value.code, caught.value.path) == (400, "invalid_request", "/runs")


def test_retry_policy__backoff_grows_and_caps() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=4.0)
    assert 0.5 <= policy.delay_s(1) <= 1.0
    assert 1.0 <= policy.delay_s(2) <= 2.0
    assert 2.0 <= policy.delay_s(5) <= 4.0
    assert policy.delay_s(1, "120") == policy.retry_after_max_s
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (400, {"error": "x", "code": "invalid_json"}, InvalidRequest),
        (401, {"error": "unauthorized"}, Unauthorized),
        (403, {"error": "no", "code": "forbidden"}, Forbidden),
        (404, {"error": "run not found"}, NotFound),
        (409, {"error": "lease lost", "code": "lease_lost"}, LeaseLost),
        (409, {"error": "run is leased", "code": "run_leased"}, RunLeased),
        (409, {"error": "already", "code": "gate_already_resolved"}, GateAlreadyResolved),
        (409, {"error": "something"}, Conflict),
        (413, {"error": "too big", "code": "payload_too_large"}, PayloadTooLarge),
        (500, {"error": "internal server error", "code": "internal_error"}, ServerError),
        (418, {"error": {"code": "lease_lost", "message": "nested shape"}}, LeaseLost),
    ],
)
def test_errors__typed_from_code(
    tide: Tidebase, fake: FakeServer, status: int, body: dict[str, object], error_type: type[TidebaseError]
) -> None:
    fake.inject("GET", "/runs$", httpx.Response(status, json=body))
    with pytest.raises(error_type) as caught:
        tide.runs.list()
    assert type(caught.value) is error_type
    assert caught.value.status == status
    assert caught.value.body == body


def test_errors__plain_text_body(tide: Tidebase, fake: FakeServer) -> None:
    with pytest.raises(NotFound) as caught:
        tide.request("GET", "/nowhere")
    assert caught.value.body == "404 Not Found"
    assert caught.value.code is None


def test_errors__run_cancelled_code_raises_run_cancelled(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run(status="cancelled")
    with pytest.raises(RunCancelled) as caught:
        tide.run("wf", lambda run, input: None, run_id=run["id"])
    assert caught.value.run_id == run["id"]
    assert not isinstance(caught.value, TidebaseError)  # `except TidebaseError` must not swallow it


def test_begin__sends_worker_identity_so_a_retried_begin_keeps_the_lease(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run(status="pending")
    fake.inject("POST", "/begin$", httpx.ReadError("lost"))
    assert tide.run("wf", lambda run, input: "ok", run_id=run["id"]) == "ok"
    begins = fake.calls("POST", "/begin$")
    assert len(begins) == 2
    assert begins[0].headers["x-tidebase-worker"] == begins[1].headers["x-tidebase-worker"]
    assert begins[0].content == b""
    assert begins[0].headers["content-length"] == "0"
