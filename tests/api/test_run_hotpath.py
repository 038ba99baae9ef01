"""The run routes a workflow invocation calls (create, detail, begin, complete, fail) on the WSGI
hot path (tidebase_core.api.hotpath): plain requests skip Django, and the answers are the
framework's answers."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core.signals import request_started

from config import wsgi
from dashboard.services import api_key_create
from tests.api.test_protocol_routes import DETAIL_KEYS, RUN_KEYS
from tests.live import encoded, shape
from tidebase_core.api import hotpath
from tidebase_core.auth import OPEN_SCOPE
from tidebase_core.models import Channel, Event, Run
from tidebase_core.services import gates
from tidebase_core.services import runs as run_services

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def test_run_routes__hot_and_framework_paths_answer_alike(api: httpx.Client) -> None:
    answers: dict[str, list[Any]] = {}
    for label, encode in (("hot", str), ("framework", encoded)):
        created = api.post(f"/runs/{encode('wf_x')}", json={"input": {"i": 1}, "metadata": {"m": True}})
        run_id = created.json()["run"]["id"]
        path = f"/runs/{encode(run_id)}"
        began = api.post(f"{path}/begin", headers={"content-type": "application/json"})
        leased = api.post(f"{path}/begin", headers={"x-tidebase-worker": "other"})
        detail = api.get(path)
        failed = api.post(f"{path}/fail", json={"error": {"name": "E", "message": "m"}})
        completed = api.post(f"{path}/complete", json={"result": [1, {"a": None}]})
        again = api.post(f"{path}/begin")
        missing = [
            api.get("/runs/run_nope"),
            api.post("/runs/run_nope/begin"),
            api.post("/runs/run_nope/complete", json={}),
        ]
        responses = [created, began, leased, detail, failed, completed, again, *missing]
        answers[label] = [(r.status_code, r.headers["content-type"], shape(r.json())) for r in responses]
        assert [r.status_code for r in responses] == [200, 200, 409, 200, 200, 200, 200, 404, 404, 404]
        assert created.json()["run"]["workflowName"] == "wf_x"
        assert set(began.json()["run"]) == RUN_KEYS
        assert (leased.json()["code"], leased.json()["leaseOwner"]) == ("run_leased", began.json()["leaseOwner"])
        assert set(detail.json()) == DETAIL_KEYS
        assert detail.json()["run"] == began.json()["run"]
        assert failed.json()["run"]["status"] == "failed"
        assert failed.json()["requeued"] is False
        assert completed.json()["run"]["result"] == [1, {"a": None}]
        assert again.json()["run"] == completed.json()["run"]
        assert all(r.headers["access-control-allow-origin"] == "*" for r in responses)
    assert answers["hot"] == answers["framework"]


def test_begin_run__on_a_cancelled_run_is_the_same_409_on_both_paths(api: httpx.Client) -> None:
    bodies = []
    for encode in (str, encoded):
        run_id = api.post("/runs/wf", json={}).json()["run"]["id"]
        api.post(f"/runs/{run_id}/cancel", json={"reason": "stop"})
        response = api.post(f"/runs/{encode(run_id)}/begin")
        assert response.status_code == 409
        bodies.append(response.json())
    assert [(b["error"], b["code"], b["run"]["status"]) for b in bodies] == [
        ("run is cancelled", "run_cancelled", "cancelled")
    ] * 2


# ---- in process: which requests skip Django -----------------------------------------------------


def environ(method: str, path: str, body: bytes = b"", **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "RAW_URI": path,
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    if method != "GET" or body:
        env["CONTENT_LENGTH"] = str(len(body))
    env.update(extra)
    return env


def serve(env: dict[str, Any]) -> tuple[str | None, Any]:
    status: list[str] = []
    answered = hotpath.serve(env, lambda s, headers: status.append(s))
    return (status[0], json.loads(b"".join(answered))) if answered is not None else (None, None)


@pytest.fixture
def django_requests() -> Iterator[list[object]]:
    """Requests that went through Django's handler (its ``request_started`` signal)."""
    started: list[object] = []

    def note(**kwargs: object) -> None:
        started.append(kwargs)

    request_started.connect(note)
    yield started
    request_started.disconnect(note)


def call(env: dict[str, Any]) -> tuple[str, Any]:
    statuses: list[str] = []
    answer = wsgi.application(env, lambda s, headers: statuses.append(s))
    try:
        return statuses[0], json.loads(b"".join(answer))
    finally:
        getattr(answer, "close", lambda: None)()


def test_the_wsgi_application_serves_a_whole_run_invocation_without_django(django_requests: list[object]) -> None:
    status, created = call(environ("POST", "/runs/wf", b'{"input": {"i": 1}}'))
    run_id = created["run"]["id"]
    assert call(environ("GET", f"/runs/{run_id}"))[1]["run"]["status"] == "pending"
    began = call(environ("POST", f"/runs/{run_id}/begin", HTTP_X_TIDEBASE_WORKER="w-1"))[1]
    failed = call(environ("POST", f"/runs/{run_id}/fail", b'{"error": {"m": 1}, "failureClass": "oom"}'))[1]
    completed = call(environ("POST", f"/runs/{run_id}/complete", b'{"result": 7}'))[1]

    assert django_requests == []
    assert (status, began["leaseOwner"], began["run"]["leaseOwner"]) == ("200 OK", "w-1", "w-1")
    assert (failed["run"]["failureClass"], failed["requeued"]) == ("oom", False)
    assert completed["run"]["result"] == 7
    types = list(Event.objects.filter(run_id=run_id).order_by("seq").values_list("type", flat=True))
    assert types == ["run.created", "run.started", "run.failed", "run.completed"]


@pytest.mark.parametrize(
    "env",
    [
        environ("POST", "/runs/wf", b"{not json"),
        environ("POST", "/runs/wf", b'{"metadata": []}'),
        environ("POST", "/runs/wf", b""),
        environ("POST", "/runs/run_x/complete", b'{"result": 1e400}'),
        environ("POST", "/runs/run_x/fail", b'{"failureClass": 5}'),
        environ("POST", "/runs/run_x/begin", CONTENT_LENGTH=""),  # chunked
        environ("POST", "/runs/run_x/begin", CONTENT_TYPE="text/plain"),
        environ("GET", "/runs/run_x", HTTP_TRANSFER_ENCODING="chunked"),
        environ("GET", "/runs/run_x", RAW_URI="/runs/run%5Fx"),
        environ("PUT", "/runs/run_x"),
        environ("GET", "/runs/run_x/begin"),
    ],
)
def test_unusual_run_requests_are_handed_to_django(env: dict[str, Any]) -> None:
    assert serve(env) == (None, None)


def test_create__the_idempotency_key_and_the_callers_scope_are_honoured_on_the_hot_path() -> None:
    body = json.dumps({"channels": [{"type": "webhook", "url": "https://h.example/x"}]}).encode()

    first = serve(environ("POST", "/runs/wf", body, HTTP_IDEMPOTENCY_KEY="k-1"))
    second = serve(environ("POST", "/runs/wf", body, HTTP_IDEMPOTENCY_KEY="k-1"))

    assert first[0] == second[0] == "200 OK"
    assert first[1]["run"]["id"] == second[1]["run"]["id"]
    assert Run.objects.filter(workflow_name="wf").count() == 1
    assert list(Channel.objects.values_list("set_by_scope", flat=True)) == [OPEN_SCOPE]


def test_detail__resolve_tokens_only_for_callers_that_may_resolve(settings: Any) -> None:
    run = run_services.run_create(workflow_name="wf")
    gates.gate_begin(run_id=run.id, name="g", prompt="ok?")
    settings.TIDEBASE_API_KEY = "env-key"
    agent = api_key_create(name="agent", scope="agent").secret

    for key, shown in (("env-key", True), (agent, False)):
        status, detail = serve(environ("GET", f"/runs/{run.id}", HTTP_AUTHORIZATION=f"Bearer {key}"))
        assert status == "200 OK"
        assert (detail["gates"][0]["resolveToken"] is not None) is shown
