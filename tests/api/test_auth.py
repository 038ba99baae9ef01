"""Authentication and scopes (PROTOCOL.md §2, §7.6; docs/decisions.md "Auth") against a live
server with ``TIDEBASE_API_KEY`` set and app keys stored hashed in ``ApiKey``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.utils import timezone

from tests.conftest import start_live_server
from tidebase_core.auth import hash_key
from tidebase_core.models import ApiKey, Event, Gate, Run

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
        {"Authorization": "bearer secret"},
        {"Authorization": "Bearer  secret"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer secretx"},
        {"Authorization": "secret"},
        {"Authorization": "Basic c2VjcmV0"},
    ],
    ids=["none", "lowercase", "two-spaces", "wrong", "longer", "bare", "basic"],
)
def test_auth__without_exactly_bearer_and_the_key_is_401(http: httpx.Client, headers: dict[str, str]) -> None:
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
