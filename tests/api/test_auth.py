"""Authentication and scopes (PROTOCOL.md §2, §7.6; docs/decisions.md "Auth") against a live
server with ``TIDEBASE_API_KEY`` set and app keys stored hashed in ``ApiKey``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import ROOT, start_live_server
from tidebase_core.auth import hash_key
from tidebase_core.models import ApiKey, Event, Gate, Run, Step

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

ENV = {"Authorization": "Bearer secret"}
HOOK = "http://127.0.0.1:9/hook"  # nothing listens there; deliveries only need to be recorded


@pytest.fixture(scope="module")
def server(test_database_url: str) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_API_KEY="secret", TIDEBASE_SSE_KEEPALIVE_S="0.2")
    yield live.url
    live.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def app_key(name: str, scope: str, *, revoked: bool = False) -> dict[str, str]:
    """Store an app key (hashed, as the app does) and return its Authorization header."""
    raw = f"tb_{name}_{'x' * 24}"
    ApiKey.objects.create(
        name=name,
        prefix=raw[:10],
        key_hash=hash_key(raw),
        scope=scope,
        revoked_at=timezone.now() if revoked else None,
    )
    return {"Authorization": f"Bearer {raw}"}


@dataclass
class Gated:
    run: str
    gate: str
    token: str

    @property
    def resolve(self) -> str:
        return f"/runs/{self.run}/gates/{self.gate}/resolve"


def gated_run(http: httpx.Client, headers: dict[str, str] = ENV) -> Gated:
    """A running run with a pending gate that has an inline webhook channel."""
    run = http.post("/runs/auth", json={}, headers=headers).json()["run"]["id"]
    http.post(f"/runs/{run}/begin", headers=headers)
    body = {"name": "approve", "prompt": "ok?", "channels": [{"type": "webhook", "url": HOOK}]}
    gate = http.post(f"/runs/{run}/gates/begin", json=body, headers=headers).json()["gate"]
    token = Gate.objects.get(id=gate["id"]).resolve_token
    return Gated(run, gate["id"], token)


def delivered_gate_tokens(detail: dict[str, Any]) -> list[Any]:
    return [d["payload"]["gate"]["resolveToken"] for d in detail["channelDeliveries"] if "gate" in d["payload"]]


def gate_resolved_events(run_id: str) -> int:
    return Event.objects.filter(run_id=run_id, type="gate.resolved").count()


# --- the env key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer secretx"},
        {"Authorization": "secret"},
        {"Authorization": "Basic c2VjcmV0"},
    ],
    ids=["none", "wrong", "longer", "bare", "basic"],
)  # the scheme's case and extra spaces: tests/api/test_transport.py (RFC 7235, issue #12)
def test_auth__without_bearer_and_the_key_is_401(http: httpx.Client, headers: dict[str, str]) -> None:
    before = Run.objects.count()

    listed = http.get("/runs", headers=headers)
    created = http.post("/runs/auth", json={}, headers=headers)

    assert listed.status_code == created.status_code == 401
    assert listed.json() == created.json() == {"error": "unauthorized", "code": "unauthorized"}
    assert Run.objects.count() == before


def test_auth__the_env_key_opens_every_route(http: httpx.Client) -> None:
    created = http.post("/runs/auth", json={}, headers=ENV)
    run_id = created.json()["run"]["id"]

    assert created.status_code == 200
    assert http.get("/runs", headers=ENV).status_code == 200
    assert http.get(f"/runs/{run_id}", headers=ENV).status_code == 200
    assert http.post(f"/runs/{run_id}/cancel", json={}, headers=ENV).json()["run"]["cancelActor"] == "api-key:env"


def test_health__needs_no_key(http: httpx.Client) -> None:
    response = http.get("/health")

    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_preflight__needs_no_key(http: httpx.Client) -> None:
    response = http.options("/runs", headers={"Access-Control-Request-Headers": "authorization"})

    assert response.status_code == 204


def test_sse__accepts_the_key_as_a_query_token(http: httpx.Client) -> None:
    run_id = http.post("/runs/auth", json={}, headers=ENV).json()["run"]["id"]

    with http.stream("GET", f"/runs/{run_id}/events", params={"token": "secret"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"


@pytest.mark.parametrize("path", ["/runs", "/runs/{run}", "/runs/{run}/steps", "/runs/{run}/state/versions"])
def test_query_token__is_ignored_off_the_sse_path(http: httpx.Client, path: str) -> None:
    run_id = http.post("/runs/auth", json={}, headers=ENV).json()["run"]["id"]

    response = http.get(path.format(run=run_id), params={"token": "secret"})

    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_sse__a_wrong_bearer_beats_a_right_query_token(http: httpx.Client) -> None:
    run_id = http.post("/runs/auth", json={}, headers=ENV).json()["run"]["id"]

    response = http.get(f"/runs/{run_id}/events", params={"token": "secret"}, headers={"Authorization": "Bearer no"})

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "code": "unauthorized"}


def test_sse__a_wrong_query_token_is_401(http: httpx.Client) -> None:
    run_id = http.post("/runs/auth", json={}, headers=ENV).json()["run"]["id"]

    response = http.get(f"/runs/{run_id}/events", params={"token": "nope"})

    assert response.status_code == 401


# --- app keys and scopes --------------------------------------------------------------------------------


def test_agent_key__can_run_workflows_steps_and_open_gates(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")

    run = http.post("/runs/auth", json={}, headers=agent)
    run_id = run.json()["run"]["id"]
    begun = http.post(f"/runs/{run_id}/begin", headers=agent)
    owner = begun.json()["leaseOwner"]
    step = http.post(
        f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner}, headers=agent
    )
    done = http.post(
        f"/runs/{run_id}/steps/{step.json()['step']['id']}/complete",
        json={"leaseOwner": owner, "output": 1},
        headers=agent,
    )
    gate = http.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "ok?"}, headers=agent)

    assert [r.status_code for r in (run, begun, step, done, gate)] == [200] * 5
    assert step.json()["action"] == "execute"
    assert gate.json()["gate"]["status"] == "pending"


def test_agent_key__never_sees_a_resolve_token(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    gated = gated_run(http)

    begin = http.post(f"/runs/{gated.run}/gates/begin", json={"name": "approve", "prompt": "ok?"}, headers=agent)
    poll = http.get(f"/runs/{gated.run}/gates/{gated.gate}", headers=agent)
    detail = http.get(f"/runs/{gated.run}", headers=agent)

    assert begin.json()["gate"]["resolveToken"] is None
    assert poll.json()["gate"]["resolveToken"] is None
    assert [g["resolveToken"] for g in detail.json()["gates"]] == [None]
    assert delivered_gate_tokens(detail.json()) == [None]
    for response in (begin, poll, detail):
        assert gated.token not in response.text


def test_operator_key__sees_the_resolve_token(http: httpx.Client) -> None:
    operator = app_key("ops", "operator")
    gated = gated_run(http)

    poll = http.get(f"/runs/{gated.run}/gates/{gated.gate}", headers=operator)
    detail = http.get(f"/runs/{gated.run}", headers=operator).json()

    assert poll.json()["gate"]["resolveToken"] == gated.token
    assert [g["resolveToken"] for g in detail["gates"]] == [gated.token]
    assert delivered_gate_tokens(detail) == [gated.token]


def test_agent_key__may_not_resolve_a_gate(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    gated = gated_run(http)

    response = http.post(gated.resolve, json={"decision": "approved"}, headers=agent)

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert response.json()["scope"] == "agent"
    assert Gate.objects.get(id=gated.gate).status == "pending"
    assert gate_resolved_events(gated.run) == 0


def test_agent_key__may_not_resolve_even_with_the_right_token(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    gated = gated_run(http)

    response = http.post(gated.resolve, json={"decision": "approved", "token": gated.token}, headers=agent)

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert Gate.objects.get(id=gated.gate).status == "pending"


def test_agent_key__may_not_cancel_a_run(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    run_id = http.post("/runs/auth", json={}, headers=agent).json()["run"]["id"]

    response = http.post(f"/runs/{run_id}/cancel", json={"reason": "stop"}, headers=agent)

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert Run.objects.get(id=run_id).status == "pending"


@pytest.mark.parametrize("scope", ["operator", "admin"])
def test_operator_and_admin_keys__resolve_and_are_recorded_as_decided_by(http: httpx.Client, scope: str) -> None:
    headers = app_key("reviewer", scope)
    gated = gated_run(http)

    response = http.post(gated.resolve, json={"decision": "rejected"}, headers=headers)

    assert response.status_code == 200
    gate = response.json()["gate"]
    assert (gate["status"], gate["decidedBy"], gate["actor"]) == ("rejected", "key:reviewer", "key:reviewer")
    assert gate["resolveToken"] == gated.token
    assert Gate.objects.get(id=gated.gate).decided_by == "key:reviewer"
    assert gate_resolved_events(gated.run) == 1


def test_operator_key__may_cancel_a_run(http: httpx.Client) -> None:
    operator = app_key("ops", "operator")
    run_id = http.post("/runs/auth", json={}, headers=ENV).json()["run"]["id"]

    response = http.post(f"/runs/{run_id}/cancel", json={}, headers=operator)

    assert response.status_code == 200
    assert (response.json()["run"]["status"], response.json()["run"]["cancelActor"]) == ("cancelled", "key:ops")


def test_revoked_key__is_401(http: httpx.Client) -> None:
    revoked = app_key("old", "admin", revoked=True)

    response = http.get("/runs", headers=revoked)

    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "code": "unauthorized"}


def test_revoking_a_key__takes_effect_on_the_next_request(http: httpx.Client) -> None:
    headers = app_key("soon-old", "operator")
    assert http.get("/runs", headers=headers).status_code == 200

    ApiKey.objects.filter(name="soon-old").update(revoked_at=timezone.now())

    assert http.get("/runs", headers=headers).status_code == 401


# --- token-only resolution --------------------------------------------------------------------------------


def test_token_only_resolve__with_the_right_token_and_no_header_works(http: httpx.Client) -> None:
    gated = gated_run(http)

    response = http.post(gated.resolve, json={"decision": "approved", "token": gated.token, "actor": "mail-link"})

    assert response.status_code == 200
    gate = response.json()["gate"]
    assert (gate["status"], gate["actor"], gate["decidedBy"]) == ("approved", "mail-link", "token:resolve-token")
    assert gate["resolveToken"] is None  # a token holder is not shown tokens
    assert gate_resolved_events(gated.run) == 1


def test_token_only_resolve__with_a_wrong_token_is_409_and_changes_nothing(http: httpx.Client) -> None:
    gated = gated_run(http)
    before = Gate.objects.get(id=gated.gate)

    response = http.post(gated.resolve, json={"decision": "approved", "token": "0" * 32})

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_token"
    after = Gate.objects.get(id=gated.gate)
    assert (after.status, after.decision, after.actor, after.updated_at) == (
        "pending",
        None,
        None,
        before.updated_at,
    )
    assert gate_resolved_events(gated.run) == 0


def test_token_only_resolve__without_a_token_is_400(http: httpx.Client) -> None:
    gated = gated_run(http)

    response = http.post(gated.resolve, json={"decision": "approved"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert Gate.objects.get(id=gated.gate).status == "pending"


def test_token_only_resolve__a_token_of_another_gate_is_refused(http: httpx.Client) -> None:
    first = gated_run(http)
    second = gated_run(http)

    response = http.post(first.resolve, json={"decision": "approved", "token": second.token})

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_token"
    assert Gate.objects.get(id=first.gate).status == "pending"


def test_token_only__opens_no_other_route(http: httpx.Client) -> None:
    gated = gated_run(http)

    poll = http.get(f"/runs/{gated.run}/gates/{gated.gate}", params={"token": gated.token})
    cancel = http.post(f"/runs/{gated.run}/cancel", json={"token": gated.token})

    assert poll.status_code == cancel.status_code == 401
    assert Run.objects.get(id=gated.run).status == "running"


# --- TIDEBASE_AUTH: once keys are in use the API stays closed (issue #12, item 2) ---------------------


@pytest.fixture(scope="module")
def auto_server(test_database_url: str) -> Iterator[str]:
    """TIDEBASE_AUTH=auto (the default) and no env key: open until the first app key exists."""
    live = start_live_server(test_database_url)
    yield live.url
    live.stop()


def test_auto__the_first_key_closes_the_api_and_revoking_every_key_keeps_it_closed(auto_server: str) -> None:
    with httpx.Client(base_url=auto_server, timeout=30) as client:
        open_before = client.get("/runs")
        headers = app_key("first", "agent")
        closed = client.get("/runs")
        created = client.post("/runs/auth", json={}, headers=headers)

        ApiKey.objects.update(revoked_at=timezone.now())  # revoke every key
        after_revoke = [client.get("/runs"), client.post("/runs/auth", json={}), client.get("/runs", headers=headers)]

    assert open_before.status_code == 200
    assert closed.status_code == 401
    assert created.status_code == 200
    assert [r.status_code for r in after_revoke] == [401, 401, 401]
    assert all(r.json() == {"error": "unauthorized", "code": "unauthorized"} for r in after_revoke)
    assert Run.objects.count() == 1  # only the keyed create


def test_auto__the_hot_path_stays_closed_too(auto_server: str) -> None:
    run = Run.objects.create(workflow_name="wf", status="running", lease_owner="w")
    app_key("gone", "admin", revoked=True)

    with httpx.Client(base_url=auto_server, timeout=30) as client:
        begin = client.post(f"/runs/{run.id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": "w"})

    assert begin.status_code == 401
    assert not Step.objects.filter(run_id=run.id).exists()


def test_required__closes_the_api_with_no_key_anywhere(test_database_url: str) -> None:
    live = start_live_server(test_database_url, TIDEBASE_AUTH="required")
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            listed = client.get("/runs")
            health = client.get("/health")
            keyed = client.get("/runs", headers=app_key("ops", "operator"))
    finally:
        live.stop()

    assert (listed.status_code, listed.json()["code"]) == (401, "unauthorized")
    assert health.status_code == 200
    assert keyed.status_code == 200


def test_open__opens_the_api_deliberately_even_with_keys(test_database_url: str) -> None:
    app_key("ops", "operator")
    live = start_live_server(test_database_url, TIDEBASE_AUTH="open", TIDEBASE_API_KEY="secret")
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            listed = client.get("/runs")
    finally:
        live.stop()

    assert listed.status_code == 200


def test_an_unknown_auth_mode_refuses_to_start() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "tidebase_key", "status"],
        cwd=ROOT,
        env={**os.environ, "TIDEBASE_AUTH": "closed-ish"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "TIDEBASE_AUTH must be auto, required or open" in done.stderr


def test_tidebase_key__warns_on_the_first_key_and_on_revoking_the_last(settings: Any) -> None:
    settings.TIDEBASE_API_KEY = None
    settings.TIDEBASE_AUTH = "auto"

    def run(*args: str) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        call_command("tidebase_key", *args, stdout=out, stderr=err)
        return out.getvalue(), err.getvalue()

    status_before, _ = run("status")
    _, first = run("create", "one", "--scope", "agent")
    _, second = run("create", "two", "--scope", "operator")
    status_during, _ = run("status")
    _, revoke_one = run("revoke", "one")
    _, revoke_last = run("revoke", "two")
    status_after, _ = run("status")

    assert status_before.startswith("API open to everyone: no key was ever created")
    assert "first API key, so the API is now closed" in first
    assert "first API key" not in second
    assert status_during.startswith("API closed")
    assert "revoked ones count" in status_during
    assert "no active key remains" not in revoke_one
    assert "no active key remains: the API stays closed" in revoke_last
    assert status_after == status_during
