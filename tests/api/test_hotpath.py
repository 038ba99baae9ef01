"""The WSGI hot path for step begin/complete (tidebase_core.api.hotpath): which requests it
answers, and that its answers are the framework's answers, byte for byte in shape."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
from django.core.signals import request_started
from django.db import connection
from django.urls import get_urlconf

from config import wsgi
from tests.api.test_protocol_routes import STEP_KEYS, begun
from tests.live import encoded, shape
from tidebase_core.api import hotpath
from tidebase_core.auth import key_cache
from tidebase_core.models import Step
from tidebase_core.services import runs as run_services

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def test_hot_and_framework_paths_answer_alike(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    answers = {}
    for label, rid in (("hot", run_id), ("framework", encoded(run_id))):
        body = {"name": f"s-{label}", "inputHash": "h", "input": {"q": 1}, "leaseOwner": owner}
        begin = api.post(f"/runs/{rid}/steps/begin", json=body)
        step_id = begin.json()["step"]["id"]
        complete = api.post(f"/runs/{rid}/steps/{step_id}/complete", json={"leaseOwner": owner, "output": [1, "x"]})
        replay = api.post(f"/runs/{rid}/steps/begin", json=body)
        answers[label] = [
            (r.status_code, r.headers["content-type"], shape(r.json())) for r in (begin, complete, replay)
        ]
        assert begin.json()["action"] == "execute"
        assert replay.json()["action"] == "return"
        assert replay.json()["output"] == [1, "x"]
        assert set(begin.json()["step"]) == STEP_KEYS
        assert begin.headers["access-control-allow-origin"] == "*"
    assert answers["hot"] == answers["framework"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b'{"inputHash": "h"}', {"content-type": "application/json"}, 400, "invalid_request"),
        (b'{"name": 5, "inputHash": "h"}', {"content-type": "application/json"}, 400, "invalid_request"),
        (b"[]", {"content-type": "application/json"}, 400, None),
        (b"", {"content-type": "application/json"}, 400, None),
        (b'{"name": "a\\u0000b", "inputHash": "h", "input": "\\u0000"}', {}, 400, None),
    ],
)
def test_what_the_hot_path_declines_still_gets_a_clear_4xx(
    api: httpx.Client, content: bytes, headers: dict[str, str], status: int, code: str | None
) -> None:
    run_id, _owner = begun(api)
    response = api.post(f"/runs/{run_id}/steps/begin", content=content, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"]
    assert body["error"]
    if code is not None:
        assert body["code"] == code


# Bodies the framework refuses (issue #12, items 7 and 8). The hot path used to validate with
# pydantic's own JSON parser: it took ``1e400`` (and stored the step input as null) and a null
# ``leaseOwner``; now it parses and validates exactly as ninja does, and hands these on.
REFUSED_BEGINS: list[tuple[bytes, str]] = [
    (b'{"name": "s", "inputHash": "h", "leaseOwner": null}', "invalid_request"),
    (b'{"name": "s", "inputHash": "h", "input": 1e400}', "unsupported_value"),
    (b'{"name": "s", "inputHash": "h", "input": {"n": [-1E+999]}}', "unsupported_value"),
    (b'{"name": "s", "inputHash": "h", "input": NaN}', "invalid_json"),
    (b'{"name": "s", "inputHash": "h", "input": "\\u0000"}', "unsupported_value"),
    (b'{"name": "s", "inputHash": "h", "options": null}', "invalid_request"),
    (b'{"name": "s", "inputHash": 5}', "invalid_request"),
    (b'{"name": "s", "inputHash": "h", "leaseOwner": 7}', "invalid_request"),
]
REFUSED_COMPLETES: list[tuple[bytes, str]] = [
    (b'{"leaseOwner": null}', "invalid_request"),
    (b'{"leaseOwner": "<owner>", "output": 1e400}', "unsupported_value"),
    (b'{"leaseOwner": "<owner>", "output": {"\\u0000": 1}}', "unsupported_value"),
    (b'{"leaseOwner": true, "output": 1}', "invalid_request"),
]


@pytest.mark.parametrize(("content", "code"), REFUSED_BEGINS)
def test_step_begin__hot_and_framework_paths_refuse_alike(api: httpx.Client, content: bytes, code: str) -> None:
    run_id, owner = begun(api)
    headers = {"content-type": "application/json"}

    answers = [
        api.post(f"/runs/{rid}/steps/begin", content=content.replace(b"<owner>", owner.encode()), headers=headers)
        for rid in (run_id, encoded(run_id))
    ]

    assert [(r.status_code, r.json()["code"]) for r in answers] == [(400, code), (400, code)]
    assert answers[0].json() == answers[1].json()
    assert Step.objects.filter(run_id=run_id).count() == 0


@pytest.mark.parametrize(("content", "code"), REFUSED_COMPLETES)
def test_step_complete__hot_and_framework_paths_refuse_alike(api: httpx.Client, content: bytes, code: str) -> None:
    run_id, owner = begun(api)
    step = api.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner}).json()
    body = content.replace(b"<owner>", owner.encode())
    headers = {"content-type": "application/json"}

    answers = [
        api.post(f"/runs/{rid}/steps/{step['step']['id']}/complete", content=body, headers=headers)
        for rid in (run_id, encoded(run_id))
    ]

    assert [(r.status_code, r.json()["code"]) for r in answers] == [(400, code), (400, code)]
    assert Step.objects.get(id=step["step"]["id"]).status == "running"


def test_domain_errors_from_the_hot_path(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    missing = api.post("/runs/run_nope/steps/begin", json={"name": "s", "inputHash": "h"})
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    step = api.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner})
    stale = api.post(
        f"/runs/{run_id}/steps/{step.json()['step']['id']}/complete", json={"leaseOwner": "someone-else", "output": 1}
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "lease_lost")
    assert stale.headers["access-control-allow-origin"] == "*"


# ---- routing decisions, in process -----------------------------------------------------------


def environ(path: str, body: bytes, *, raw_uri: str | None = None, **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "RAW_URI": raw_uri if raw_uri is not None else path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    env.update(extra)
    return env


def serve(env: dict[str, Any]) -> tuple[str | None, bytes | None]:
    status: list[str] = []
    answered = hotpath.serve(env, lambda s, headers: status.append(s))
    return (status[0], b"".join(answered)) if answered is not None else (None, None)


def test_plain_requests_are_answered_and_unusual_ones_handed_on() -> None:
    run = run_services.run_create(workflow_name="wf")
    _, owner = run_services.run_begin(run_id=run.id, owner="w")
    body = json.dumps({"name": "s", "inputHash": "h", "leaseOwner": owner}).encode()
    path = f"/runs/{run.id}/steps/begin"

    status, content = serve(environ(path, body))
    assert status == "200 OK"
    assert content is not None
    assert json.loads(content)["action"] == "execute"

    declined = [
        environ(path, body, REQUEST_METHOD="PUT"),
        environ(path, body, raw_uri=f"/runs/{encoded(run.id)}/steps/begin"),
        environ(path, body, raw_uri=""),  # a server that does not say what the client sent
        environ(path, body, CONTENT_TYPE="text/plain"),
        environ(path, body, CONTENT_LENGTH=""),  # chunked
        environ(path, b"{", CONTENT_LENGTH="1"),
        environ(f"/runs/{run.id}/steps", body),
    ]
    for env in declined:
        assert serve(env) == (None, None), env
    invalid = declined[5]
    assert invalid["wsgi.input"].read() == b"{"  # read, then put back for the framework


def test_the_env_key_is_required_when_set(settings: Any) -> None:
    settings.TIDEBASE_API_KEY = "secret"
    run = run_services.run_create(workflow_name="wf")
    body = json.dumps({"name": "s", "inputHash": "h"}).encode()
    path = f"/runs/{run.id}/steps/begin"
    assert serve(environ(path, body)) == (None, None)  # the framework answers 401
    assert serve(environ(path, body, HTTP_AUTHORIZATION="Bearer wrong")) == (None, None)
    assert serve(environ(path, body, HTTP_AUTHORIZATION="Bearer secret"))[0] == "200 OK"


def test_the_bearer_scheme_is_case_insensitive_on_the_hot_path(settings: Any) -> None:
    settings.TIDEBASE_API_KEY = "secret"
    run = run_services.run_create(workflow_name="wf")
    path = f"/runs/{run.id}/steps/begin"
    for i, header in enumerate(["bearer secret", "BEARER secret", "Bearer  secret"]):
        body = json.dumps({"name": f"s{i}", "inputHash": "h"}).encode()
        assert serve(environ(path, body, HTTP_AUTHORIZATION=header))[0] == "200 OK", header
    assert serve(environ(path, body, HTTP_AUTHORIZATION="Basic secret")) == (None, None)  # framework: 401


@pytest.mark.parametrize(("content", "_code"), REFUSED_BEGINS)
def test_the_hot_path_hands_refused_begins_to_the_framework(content: bytes, _code: str) -> None:
    run = run_services.run_create(workflow_name="wf")
    path = f"/runs/{run.id}/steps/begin"

    assert serve(environ(path, content)) == (None, None)
    assert not Step.objects.filter(run_id=run.id).exists()


def test_a_dead_database_connection_gets_a_json_503_then_a_fresh_connection() -> None:
    """After a Postgres restart the pooled connection is dead: the request is refused with a JSON
    503 ``database_unavailable`` the client retries (never the server's HTML 500), and the
    connection is dropped, not reused."""
    run = run_services.run_create(workflow_name="wf")
    _, owner = run_services.run_begin(run_id=run.id, owner="w")
    path = f"/runs/{run.id}/steps/begin"
    key_cache.clear()  # the auth check queries first, as it does every few seconds
    connection.ensure_connection()
    connection.connection.close()  # what a database restart does to a pooled connection
    body = json.dumps({"name": "s", "inputHash": "h", "leaseOwner": owner}).encode()
    status, content = serve(environ(path, body))
    assert status == "503 Service Unavailable"
    assert content is not None
    assert json.loads(content)["code"] == "database_unavailable"
    assert connection.connection is None  # dropped; the next request reconnects
    status, content = serve(environ(path, body))
    assert status == "200 OK"


def test_the_wsgi_application_serves_plain_step_calls_without_django() -> None:
    run = run_services.run_create(workflow_name="wf")
    _, owner = run_services.run_begin(run_id=run.id, owner="w")
    started: list[object] = []

    def note(**kwargs: object) -> None:
        started.append(kwargs)

    request_started.connect(note)
    try:
        for name, raw_run_id in (("hot", run.id), ("framework", encoded(run.id))):
            body = json.dumps({"name": name, "inputHash": "h", "leaseOwner": owner}).encode()
            env = environ(f"/runs/{run.id}/steps/begin", body, raw_uri=f"/runs/{raw_run_id}/steps/begin")
            env.update({"SERVER_NAME": "testserver", "SERVER_PORT": "80", "wsgi.url_scheme": "http"})
            statuses: list[str] = []
            answer = wsgi.application(env, lambda s, headers, statuses=statuses: statuses.append(s))
            try:
                assert json.loads(b"".join(answer))["action"] == "execute"
            finally:
                getattr(answer, "close", lambda: None)()  # as a server does: request_finished
            assert statuses == ["200 OK"]
            assert len(started) == (0 if name == "hot" else 1), name  # Django's handler ran only for the second
    finally:
        request_started.disconnect(note)
    assert get_urlconf() is None  # the framework request was finished (no URLconf left behind)
