"""The route-by-scope table (``tidebase_core.api.scopes``; docs/auth.md): every protocol route has
an entry, every entry is enforced, and the whole matrix of routes x {no key, agent, operator,
admin} is exercised against a live server with the API closed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, URLResolver, get_urlconf

from tests.api.test_auth import app_key
from tests.api.test_hotpath import environ, serve
from tests.conftest import ROOT, start_live_server
from tidebase_core.api import scopes
from tidebase_core.middleware import is_protocol_path
from tidebase_core.models import (
    ChannelDelivery,
    Event,
    Gate,
    QueueConfig,
    RecoveryAttempt,
    Run,
    Schedule,
    StateVersion,
    Step,
    UsageRecord,
)
from tidebase_core.services import runs as run_services

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

ENV = {"Authorization": "Bearer secret"}
HOOK = "http://127.0.0.1:9/hook"  # nothing listens; recovery rows only need to be recorded


# --- the table covers every route, and every route is guarded ----------------------------------------


def _ninja_operations() -> dict[str, Any]:
    """operation id → ninja Operation, for every route of the protocol URLconf."""
    import config.api_urls

    found: dict[str, Any] = {}

    def walk(patterns: list[Any]) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns)
                continue
            assert isinstance(p, URLPattern)
            if not is_protocol_path("/" + str(p.pattern)):
                continue  # the OpenAPI pages: never routed here (ProtocolMiddleware)
            view = p.callback
            if hasattr(view, "tb_operation_id"):  # a plain Django view wrapped by scopes.scoped
                found[view.tb_operation_id] = view
                continue
            cells = [c.cell_contents for c in view.__closure__ or ()]
            path_views = [c for c in cells if hasattr(c, "operations")]
            assert path_views, f"{p.pattern} is neither a ninja route nor wrapped by scopes.scoped"
            for op in path_views[0].operations:
                found[op.operation_id] = op

    walk(config.api_urls.urlpatterns)
    return found


def test_every_protocol_route_has_exactly_one_entry_in_the_table() -> None:
    assert set(_ninja_operations()) == set(scopes.ROUTE_SCOPES)


def test_every_route_runs_the_guard_before_its_view() -> None:
    for operation_id, route in _ninja_operations().items():
        guarded = route if hasattr(route, "tb_operation_id") else route.run  # a plain view, or ninja's
        assert getattr(guarded, "tb_operation_id", None) == operation_id, operation_id


def test_a_route_missing_from_the_table_stops_the_api_from_starting() -> None:
    from ninja import NinjaAPI, Router

    router = Router()

    @router.get("/new", operation_id="brand_new_route")
    def brand_new(request: Any) -> dict[str, bool]:
        return {"ok": True}

    api = NinjaAPI(urls_namespace="scopes-test-missing")
    api.add_router("/x", router)
    api.add_decorator(scopes.guard, mode="view")
    with pytest.raises(ImproperlyConfigured, match="brand_new_route"):
        api.urls  # noqa: B018 - building the URLs binds the operations


def test_the_docs_print_the_same_table() -> None:
    text = (ROOT / "docs" / "auth.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `([A-Z]+) ([^`]+)` \| (\w+) \|", text, re.M)
    documented = {op: scope for op, _method, _path, scope in rows}
    expected = {op: scope or "public" for op, scope in scopes.ROUTE_SCOPES.items()}
    assert documented == expected


# --- the whole matrix, against a live server ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(test_database_url: str) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_API_KEY="secret")
    yield live.url
    live.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@dataclass
class World:
    """A fresh set of objects, made with the env key, for one request to act on."""

    run: str  # running, with a recovery webhook
    owner: str
    fresh: str  # pending, never begun
    step: str  # started, leased by ``owner``
    gate: str  # pending

    def fill(self, template: str) -> str:
        return template.format(run=self.run, fresh=self.fresh, step=self.step, gate=self.gate)


def make_world(http: httpx.Client) -> World:
    run = http.post("/runs/scoped", json={"recoveryWebhook": HOOK}, headers=ENV).json()["run"]["id"]
    owner = http.post(f"/runs/{run}/begin", headers=ENV).json()["leaseOwner"]
    step = http.post(
        f"/runs/{run}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner}, headers=ENV
    ).json()["step"]["id"]
    gate = http.post(f"/runs/{run}/gates/begin", json={"name": "g", "prompt": "ok?"}, headers=ENV).json()["gate"]["id"]
    assert http.put(f"/runs/{run}/state", json={"value": {"n": 0}}, headers=ENV).status_code == 200
    fresh = http.post("/runs/scoped", json={}, headers=ENV).json()["run"]["id"]
    assert http.post("/queues/q-scope/enqueue", json={"workflowName": "w"}, headers=ENV).status_code == 200
    assert (
        http.put("/schedules/nightly", json={"cron": "0 3 * * *", "workflowName": "w"}, headers=ENV).status_code == 200
    )
    assert http.put("/queues/q-scope/config", json={"concurrency": 5}, headers=ENV).status_code == 200
    return World(run, owner, fresh, step, gate)


Body = Callable[[World], Any]


@dataclass(frozen=True)
class Sample:
    """A valid request to one route, and the lowest scope that the spec (issue #12) allows."""

    method: str
    path: str
    lowest: str  # "public" | "agent" | "operator"
    body: Body | None = None


def _owner(w: World) -> dict[str, Any]:
    return {"leaseOwner": w.owner}


SAMPLES: dict[str, Sample] = {
    "health": Sample("GET", "/health", "public"),
    "ready": Sample("GET", "/ready", "public"),
    "create_run": Sample("POST", "/runs/wf", "agent", lambda w: {}),
    "list_runs": Sample("GET", "/runs", "operator"),
    "get_run": Sample("GET", "/runs/{run}", "agent"),
    "begin_run": Sample("POST", "/runs/{fresh}/begin", "agent"),
    "heartbeat_run": Sample("POST", "/runs/{run}/heartbeat", "agent", _owner),
    "complete_run": Sample("POST", "/runs/{run}/complete", "agent", lambda w: {"result": 1}),
    "fail_run": Sample("POST", "/runs/{run}/fail", "agent", lambda w: {"error": {"message": "x"}}),
    "cancel_run": Sample("POST", "/runs/{run}/cancel", "operator", lambda w: {"reason": "stop"}),
    "recover_run": Sample("POST", "/runs/{run}/recover", "operator", lambda w: {"reason": "manual"}),
    "create_child_run": Sample("POST", "/runs/{run}/children", "agent", lambda w: {"name": "c", "workflowName": "w"}),
    "run_events": Sample("GET", "/runs/{run}/events", "agent"),
    "begin_step": Sample(
        "POST", "/runs/{run}/steps/begin", "agent", lambda w: {"name": "s2", "inputHash": "h", **_owner(w)}
    ),
    "list_steps": Sample("GET", "/runs/{run}/steps", "agent"),
    "complete_step": Sample("POST", "/runs/{run}/steps/{step}/complete", "agent", lambda w: {**_owner(w), "output": 1}),
    "fail_step": Sample("POST", "/runs/{run}/steps/{step}/fail", "agent", lambda w: {**_owner(w), "error": {}}),
    "begin_gate": Sample("POST", "/runs/{run}/gates/begin", "agent", lambda w: {"name": "g2", "prompt": "?"}),
    "get_gate": Sample("GET", "/runs/{run}/gates/{gate}", "agent"),
    "resolve_gate": Sample("POST", "/runs/{run}/gates/{gate}/resolve", "operator", lambda w: {"decision": "approved"}),
    "set_state": Sample("PUT", "/runs/{run}/state", "agent", lambda w: {"value": {"a": 1}}),
    "patch_state": Sample("PATCH", "/runs/{run}/state", "agent", lambda w: {"value": {"b": 2}}),
    "save_state": Sample("POST", "/runs/{run}/state/save", "agent", lambda w: {"label": "l"}),
    "list_state_versions": Sample("GET", "/runs/{run}/state/versions", "agent"),
    "create_snapshot": Sample("POST", "/runs/{run}/snapshots", "agent", lambda w: {"label": "snap", "state": {}}),
    "list_snapshots": Sample("GET", "/runs/{run}/snapshots", "agent"),
    "record_usage": Sample("POST", "/runs/{run}/usage", "agent", lambda w: {"kind": "llm", "inputTokens": 3}),
    "enqueue_run": Sample("POST", "/queues/q-scope/enqueue", "agent", lambda w: {"workflowName": "w"}),
    "claim_runs": Sample("POST", "/queues/claim", "agent", lambda w: {"queues": ["q-scope"]}),
    "list_queues": Sample("GET", "/queues", "operator"),
    "configure_queue": Sample(
        "PUT", "/queues/q-scope/config", "operator", lambda w: {"invokeUrl": "https://example.com/x", "paused": True}
    ),
    "list_schedules": Sample("GET", "/schedules", "operator"),
    "set_schedule": Sample(
        "PUT", "/schedules/nightly", "operator", lambda w: {"cron": "0 4 * * *", "workflowName": "x"}
    ),
    "delete_schedule": Sample("DELETE", "/schedules/nightly", "operator"),
    "metrics": Sample("GET", "/metrics", "operator"),
    "check_budget": Sample("POST", "/runs/{run}/budget/check", "agent", lambda w: {"projectedUsd": 0.01}),
    "list_budgets": Sample("GET", "/budgets", "operator"),
}

RANK = {"public": -1, "agent": 0, "operator": 1, "admin": 2}
CALLERS = ["none", "agent", "operator", "admin"]


def test_the_matrix_samples_every_route_in_the_table() -> None:
    assert set(SAMPLES) == set(scopes.ROUTE_SCOPES)


def test_the_table_says_what_the_spec_says() -> None:
    assert {op: s.lowest for op, s in SAMPLES.items()} == {
        op: scope or "public" for op, scope in scopes.ROUTE_SCOPES.items()
    }


def fingerprint() -> tuple[Any, ...]:
    """Everything a refused request must leave untouched."""
    return (
        list(Run.objects.order_by("id").values_list("id", "status", "updated_at", "lease_owner")),
        Event.objects.count(),
        list(Gate.objects.order_by("id").values_list("id", "status", "updated_at")),
        list(Step.objects.order_by("id").values_list("id", "status", "updated_at")),
        list(Schedule.objects.order_by("name").values_list("name", "cron", "workflow_name", "updated_at")),
        list(QueueConfig.objects.order_by("name").values_list("name", "invoke_url", "paused", "concurrency")),
        RecoveryAttempt.objects.count(),
        ChannelDelivery.objects.count(),
        StateVersion.objects.count(),
        UsageRecord.objects.count(),
    )


def call(http: httpx.Client, sample: Sample, world: World, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    path = world.fill(sample.path)
    body = sample.body(world) if sample.body else None
    if sample.method == "GET" and path.endswith("/events"):
        with http.stream("GET", path, headers=headers) as response:  # an endless stream: status only
            if response.status_code == 200:
                return 200, {}
            response.read()
            return response.status_code, response.json()
    response = http.request(sample.method, path, json=body, headers=headers)
    if response.headers.get("content-type", "").startswith("text/plain"):  # /metrics: Prometheus text
        return response.status_code, {}
    return response.status_code, response.json()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("operation_id", sorted(SAMPLES))
def test_matrix(http: httpx.Client, operation_id: str, caller: str) -> None:
    sample = SAMPLES[operation_id]
    world = make_world(http)
    headers = {} if caller == "none" else app_key(f"{caller}-key", caller)
    before = fingerprint()

    status, body = call(http, sample, world, headers)

    if sample.lowest == "public":
        # No worker runs beside this server: /ready answers, 503 not_ready (never 401/403).
        assert (status, body.get("code")) == ((503, "not_ready") if operation_id == "ready" else (200, None)), body
    elif caller == "none":
        if operation_id == "resolve_gate":  # the resolve-token route: no token, no decision
            assert (status, body["code"]) == (400, "invalid_request")
        else:
            assert (status, body) == (401, {"error": "unauthorized", "code": "unauthorized"})
        assert fingerprint() == before
    elif RANK[caller] >= RANK[sample.lowest]:
        assert status == 200, (operation_id, caller, body)
    else:
        assert status == 403, (operation_id, caller, body)
        assert body["code"] == "forbidden"
        assert (body["scope"], body["required"]) == (caller, sample.lowest)
        assert fingerprint() == before  # refused before anything was read or written


# --- the three examples, spelled out -----------------------------------------------------------


def test_agent_key__cannot_fire_a_recovery_webhook(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    world = make_world(http)

    response = http.post(f"/runs/{world.run}/recover", json={"reason": "manual"}, headers=agent)

    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert not RecoveryAttempt.objects.filter(run_id=world.run).exists()
    assert not Event.objects.filter(run_id=world.run, type="recovery.started").exists()


def test_agent_key__cannot_point_a_queue_at_its_own_url_or_pause_it(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    make_world(http)

    hijack = http.put("/queues/q-scope/config", json={"invokeUrl": "https://attacker.example/invoke"}, headers=agent)
    pause = http.put("/queues/q-scope/config", json={"paused": True}, headers=agent)

    assert [hijack.status_code, pause.status_code] == [403, 403]
    config = QueueConfig.objects.get(name="q-scope")
    assert (config.invoke_url, config.paused, config.concurrency) == (None, False, 5)


def test_agent_key__cannot_delete_or_rewrite_a_schedule(http: httpx.Client) -> None:
    agent = app_key("robot", "agent")
    make_world(http)
    before = Schedule.objects.get(name="nightly")

    deleted = http.delete("/schedules/nightly", headers=agent)
    rewritten = http.put("/schedules/nightly", json={"cron": "* * * * *", "workflowName": "evil"}, headers=agent)

    assert [deleted.status_code, rewritten.status_code] == [403, 403]
    after = Schedule.objects.get(name="nightly")
    assert (after.cron, after.workflow_name, after.updated_at) == (before.cron, before.workflow_name, before.updated_at)


def test_agent_key__is_refused_before_its_body_is_read(http: httpx.Client) -> None:
    """A refused caller learns nothing about the body's validity (403, not 400)."""
    agent = app_key("robot", "agent")

    response = http.put("/queues/q/config", content=b"{not json", headers=agent)

    assert (response.status_code, response.json()["code"]) == (403, "forbidden")


def test_a_bare_resolve_token_opens_no_route_but_its_gates_resolve(http: httpx.Client) -> None:
    world = make_world(http)
    token = Gate.objects.get(id=world.gate).resolve_token

    for op, sample in SAMPLES.items():
        if op in ("health", "ready", "resolve_gate") or sample.method != "POST":
            continue
        body = {**(sample.body(world) if sample.body else {}), "token": token}
        response = http.post(world.fill(sample.path), json=body)
        assert response.status_code == 401, op


# --- the hot path obeys the same table ------------------------------------------------------------------


def test_the_step_hot_path_asks_the_same_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step begin/complete are answered from WSGI before ninja; they must still obey the table:
    with begin_step raised to operator, an agent's plain begin is not served there, and the
    full application answers 403."""
    from config import wsgi

    agent = app_key("robot", "agent")["Authorization"]
    operator = app_key("ops", "operator")["Authorization"]
    run = run_services.run_create(workflow_name="wf")
    _, owner = run_services.run_begin(run_id=run.id, owner="w")
    path = f"/runs/{run.id}/steps/begin"
    body = json.dumps({"name": "s", "inputHash": "h", "leaseOwner": owner}).encode()
    monkeypatch.setitem(scopes.ROUTE_SCOPES, "begin_step", "operator")

    assert serve(environ(path, body, HTTP_AUTHORIZATION=agent)) == (None, None)
    statuses: list[str] = []
    response = wsgi.application(environ(path, body, HTTP_AUTHORIZATION=agent), lambda s, h: statuses.append(s))
    try:
        answer = b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()  # as a server does: request_finished
    assert statuses == ["403 Forbidden"]
    assert json.loads(answer)["code"] == "forbidden"
    assert get_urlconf() is None
    assert not Step.objects.filter(run_id=run.id).exists()
    assert serve(environ(path, body, HTTP_AUTHORIZATION=operator))[0] == "200 OK"


@pytest.fixture(autouse=True)
def _closed_api(settings: Any) -> None:
    """In-process calls (the hot-path test) see a closed API too."""
    settings.TIDEBASE_API_KEY = "secret"
    settings.TIDEBASE_AUTH = "auto"
    settings.TIDEBASE_API_KEY_CACHE_S = 0
