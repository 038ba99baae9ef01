"""Transport (issue #12, item 7) through a live server: chunked request bodies are read
(up to ``TIDEBASE_MAX_BODY_BYTES``), the ``Bearer`` auth scheme is case-insensitive (RFC 7235),
and a NUL character in the URL is a clear 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import start_live_server
from tidebase_core.models import Run, Step

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

KEY = "transport-key"
LIMIT = 2000


@pytest.fixture(scope="module")
def server(test_database_url: str) -> Iterator[str]:
    """A server with an API key and a small body limit."""
    live = start_live_server(test_database_url, TIDEBASE_API_KEY=KEY, TIDEBASE_MAX_BODY_BYTES=str(LIMIT))
    yield live.url
    live.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def chunked(body: Any, size: int = 7) -> Iterator[bytes]:
    """The JSON of ``body`` as an iterator: httpx sends it with ``Transfer-Encoding: chunked``."""
    raw = json.dumps(body).encode()
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


def begun(http: httpx.Client) -> tuple[str, str]:
    run_id = http.post("/runs/transport", json={}).json()["run"]["id"]
    return run_id, http.post(f"/runs/{run_id}/begin").json()["leaseOwner"]


# --- chunked request bodies ------------------------------------------------------------------------


def test_chunked__a_body_without_content_length_is_read(http: httpx.Client) -> None:
    request = http.build_request("POST", "/runs/chunked", content=chunked({"input": {"n": 1}, "metadata": {"m": 2}}))
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"

    response = http.send(request)

    assert response.status_code == 200, response.text
    run = response.json()["run"]
    assert (run["input"], run["metadata"]) == ({"n": 1}, {"m": 2})


@pytest.mark.parametrize("route", ["hot", "framework"])
def test_chunked__step_begin_and_complete_read_the_body(http: httpx.Client, route: str) -> None:
    """Step begin and complete are also served by the WSGI hot path, which hands chunked
    bodies to Django; the percent-encoded run id takes the framework path from the start."""
    run_id, owner = begun(http)
    path_id = run_id if route == "hot" else run_id.replace("_", "%5F", 1)

    begin = http.post(
        f"/runs/{path_id}/steps/begin", content=chunked({"name": "s", "inputHash": "h", "leaseOwner": owner})
    )
    step_id = begin.json()["step"]["id"]
    complete = http.post(
        f"/runs/{path_id}/steps/{step_id}/complete", content=chunked({"leaseOwner": owner, "output": [1, 2]})
    )

    assert (begin.status_code, begin.json()["action"]) == (200, "execute")
    assert complete.status_code == 200, complete.text
    assert Step.objects.get(id=step_id).output == [1, 2]


def test_chunked__an_optional_body_is_read(http: httpx.Client) -> None:
    run_id, _owner = begun(http)

    response = http.post(f"/runs/{run_id}/cancel", content=chunked({"reason": "chunked", "actor": "me"}))

    assert response.status_code == 200, response.text
    assert (response.json()["run"]["cancelReason"], response.json()["run"]["cancelActor"]) == ("chunked", "me")


def test_chunked__a_body_over_the_limit_is_413_and_writes_nothing(http: httpx.Client) -> None:
    before = Run.objects.count()

    response = http.post("/runs/chunked", content=chunked({"input": "x" * (LIMIT + 10)}, size=500))

    assert response.status_code == 413
    assert response.json() == {
        "error": f"request body is larger than {LIMIT} bytes",
        "code": "payload_too_large",
        "limit": LIMIT,
    }
    assert Run.objects.count() == before


def test_chunked__an_empty_chunked_body_is_still_missing(http: httpx.Client) -> None:
    response = http.post("/runs/chunked", content=iter([b""]))

    assert response.status_code == 400
    assert response.json()["code"] == "missing_body"


def test_chunked__is_not_read_before_authentication(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as anonymous:
        response = anonymous.post("/runs/chunked", content=chunked({"input": "x" * (LIMIT + 10)}, size=500))

    assert response.status_code == 401  # not 413: a stranger's body is never read


# --- the Bearer scheme is case-insensitive ---------------------------------------------------------


@pytest.mark.parametrize("authorization", [f"bearer {KEY}", f"BEARER {KEY}", f"bEaReR {KEY}", f"Bearer  {KEY}"])
def test_auth__the_bearer_scheme_is_case_insensitive(server: str, authorization: str) -> None:
    with httpx.Client(base_url=server, timeout=30, headers={"Authorization": authorization}) as client:
        created = client.post("/runs/auth-scheme", json={})
        run_id = created.json()["run"]["id"]
        owner = client.post(f"/runs/{run_id}/begin").json()["leaseOwner"]
        step = client.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner})
        listed = client.get("/runs")

    assert created.status_code == 200
    assert step.status_code == 200, step.text  # the WSGI hot path reads the header the same way
    assert step.json()["action"] == "execute"
    assert listed.status_code == 200


@pytest.mark.parametrize(
    "authorization", ["bearer wrong", f"Basic {KEY}", KEY, f"Bearer{KEY}", f"Token {KEY}", "bearer", ""]
)
def test_auth__another_scheme_or_a_wrong_key_is_401(server: str, authorization: str) -> None:
    with httpx.Client(base_url=server, timeout=30, headers={"Authorization": authorization}) as client:
        response = client.post("/runs/auth-scheme", json={})
        run_id = Run.objects.values_list("id", flat=True).first() or "run_x"
        step = client.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h"})

    assert (response.status_code, response.json()) == (401, {"error": "unauthorized", "code": "unauthorized"})
    assert step.status_code == 401


# --- NUL in the URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/runs/a%00b"),
        ("GET", "/runs/run_a%00b"),
        ("GET", "/runs/run_x/state/versions?labeled=%00"),
        ("GET", "/runs/run_x/state/versions?stream=a%00"),
        ("PUT", "/schedules/a%00b"),
    ],
)
def test_url__a_nul_character_is_400_unsupported_value(http: httpx.Client, method: str, url: str) -> None:
    before = Run.objects.count()

    response = http.request(method, url, json={"cron": "* * * * *", "workflowName": "w"})

    assert response.status_code == 400
    assert response.json() == {"error": "the URL cannot contain the NUL character (%00)", "code": "unsupported_value"}
    assert Run.objects.count() == before
