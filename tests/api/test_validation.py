"""Bad requests through the live server: every route answers a bad request with a 4xx JSON
body ``{"error": <str>, "code": <str>, ...}`` (never a 5xx, never HTML) and writes nothing."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.db import DataError, connection, transaction
from django.test import RequestFactory

from config.api import api
from tests.conftest import start_live_server
from tidebase_core import wire
from tidebase_core.models import Event, Gate, Run, Step, UsageRecord
from tidebase_core.services import gates, runs, state, steps

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

UNKNOWN_RUN = "run_00000000000000000000000000000000"


@dataclass
class World:
    run: str
    step: str
    owner: str
    gate: str
    token: str

    def path(self, template: str, **overrides: str) -> str:
        values = {"run": self.run, "step": self.step, "gate": self.gate, **overrides}
        return template.format(**values)


@pytest.fixture
def world() -> World:
    """A running run with a leased step, a pending gate and live state (built by services)."""
    run = runs.run_create(workflow_name="validation", input={"n": 1})
    _, owner = runs.run_begin(run_id=run.id)
    step = steps.step_begin(run_id=run.id, name="s", input_hash="h", input=None, options={}, owner=owner).step
    gate, _ = gates.gate_begin(run_id=run.id, name="g", prompt="ok?")
    state.state_write(run_id=run.id, value={"a": 1}, merge=False)
    return World(run.id, step.id, owner, gate.id, gate.resolve_token)


def snapshot_counts(run_id: str) -> dict[str, int]:
    """Row counts a rejected request must leave unchanged."""
    return {
        "runs": Run.objects.count(),
        "events": Event.objects.count(),
        "run_events": Event.objects.filter(run_id=run_id).count(),
        "steps": Step.objects.count(),
        "gates": Gate.objects.count(),
        "usage": UsageRecord.objects.count(),
    }


def error_problem(response: httpx.Response, status: int | None = None, code: str | None = None) -> str | None:
    """Why ``response`` is not a 4xx JSON error (with this status and code), or None."""
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:200]}"
    if status is not None and response.status_code != status:
        return f"status {response.status_code}, expected {status}: {response.text[:200]}"
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {response.headers.get('content-type')}: {response.text[:200]}"
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not isinstance(body.get("code"), str):
        return f"body {body!r}"
    if code is not None and body["code"] != code:
        return f"code {body['code']!r}, expected {code!r}"
    return None


def assert_error(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict[str, Any]:
    problem = error_problem(response, status, code)
    assert problem is None, problem
    body: dict[str, Any] = response.json()
    return body


def refusals(
    api: httpx.Client,
    world: World,
    cases: list[tuple[str, str, str, dict[str, Any]]],
    status: int | None = None,
    code: str | None = None,
) -> list[str]:
    """Send each (label, method, path, request kwargs); list every response that is not the
    expected error, and every request after which some row count changed."""
    problems = []
    for label, method, path, kwargs in cases:
        before = snapshot_counts(world.run)
        response = api.request(method, path, **kwargs)
        problem = error_problem(response, status, code)
        if problem is not None:
            problems.append(f"{label}: {problem}")
        if snapshot_counts(world.run) != before:
            problems.append(f"{label}: wrote rows")
    return problems


def raw(content: bytes) -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": "application/json"}}


def with_owner(body: dict[str, Any] | None, world: World) -> dict[str, Any] | None:
    if body is None:
        return None
    return {k: (world.owner if v == OWNER else v) for k, v in body.items()}


# Every route that reads a JSON body: name -> (method, path template)
BODY_ROUTES = {
    "create": ("POST", "/runs/validation"),
    "heartbeat": ("POST", "/runs/{run}/heartbeat"),
    "complete": ("POST", "/runs/{run}/complete"),
    "fail": ("POST", "/runs/{run}/fail"),
    "children": ("POST", "/runs/{run}/children"),
    "steps_begin": ("POST", "/runs/{run}/steps/begin"),
    "step_complete": ("POST", "/runs/{run}/steps/{step}/complete"),
    "step_fail": ("POST", "/runs/{run}/steps/{step}/fail"),
    "gates_begin": ("POST", "/runs/{run}/gates/begin"),
    "resolve": ("POST", "/runs/{run}/gates/{gate}/resolve"),
    "put_state": ("PUT", "/runs/{run}/state"),
    "patch_state": ("PATCH", "/runs/{run}/state"),
    "save_state": ("POST", "/runs/{run}/state/save"),
    "snapshot": ("POST", "/runs/{run}/snapshots"),
    "usage": ("POST", "/runs/{run}/usage"),
}

# Routes whose body is optional: a bad body is read as {} (§1, §6.9, §6.10)
OPTIONAL_BODY_ROUTES = {"cancel": ("POST", "/runs/{run}/cancel"), "recover": ("POST", "/runs/{run}/recover")}

GET_ROUTES = {
    "list": "/runs",
    "detail": "/runs/{run}",
    "gate": "/runs/{run}/gates/{gate}",
    "versions": "/runs/{run}/state/versions",
    "snapshots": "/runs/{run}/snapshots",
    "steps": "/runs/{run}/steps",
}


# --- malformed, empty and non-object bodies ------------------------------------------------------

MALFORMED = [b'{"name": ', b"{'name': 1}", b"nope", b'{"a":1}}', b"\xff\xfe"]
NOT_AN_OBJECT = [b"[]", b"[{}]", b'"text"', b"1", b"null", b"true"]
# Routes whose body fields are all optional
ALL_OPTIONAL = ["create", "complete", "fail", "put_state", "patch_state", "usage"]


def test_body_routes__malformed_json_is_400_invalid_json_and_writes_nothing(api: httpx.Client, world: World) -> None:
    cases = [
        (f"{route} {content!r}", method, world.path(template), raw(content))
        for route, (method, template) in BODY_ROUTES.items()
        for content in MALFORMED
    ]

    assert refusals(api, world, cases, 400, "invalid_json") == []


def test_body_routes__an_empty_body_is_400_and_writes_nothing(api: httpx.Client, world: World) -> None:
    cases = [(route, method, world.path(template), raw(b"")) for route, (method, template) in BODY_ROUTES.items()]

    assert refusals(api, world, cases, 400) == []


def test_body_routes__with_required_fields_refuse_a_body_that_is_not_an_object(api: httpx.Client, world: World) -> None:
    cases = [
        (f"{route} {content!r}", method, world.path(template), raw(content))
        for route, (method, template) in BODY_ROUTES.items()
        if route not in ALL_OPTIONAL
        for content in NOT_AN_OBJECT
    ]

    assert refusals(api, world, cases, 400) == []


def test_body_routes__with_only_optional_fields_refuse_a_body_that_is_not_an_object(
    api: httpx.Client, world: World
) -> None:
    cases = [
        (f"{route} {content!r}", *BODY_ROUTES[route][:1], world.path(BODY_ROUTES[route][1]), raw(content))
        for route in ALL_OPTIONAL
        for content in NOT_AN_OBJECT
    ]

    assert refusals(api, world, cases, 400) == []


def test_cancel__no_body_reads_as_empty(api: httpx.Client, world: World) -> None:
    response = api.post(f"/runs/{world.run}/cancel", **raw(b""))

    assert response.status_code == 200
    assert response.json()["run"]["status"] == "cancelled"
    assert response.json()["run"]["cancelReason"] is None


def test_recover__no_body_reads_as_empty(api: httpx.Client, world: World) -> None:
    response = api.post(f"/runs/{world.run}/recover", **raw(b""))

    assert_error(response, 422, "no_recovery_webhook")  # read as {}; the run has no webhook


def test_cancel_and_recover__a_null_reason_reads_as_absent(api: httpx.Client, world: World) -> None:
    """The official client's ``runs.recover(run_id, reason=None)`` sends ``{"reason": null}``."""
    recovered = api.post(f"/runs/{world.run}/recover", json={"reason": None})
    cancelled = api.post(f"/runs/{world.run}/cancel", json={"reason": None, "actor": None})

    assert_error(recovered, 422, "no_recovery_webhook")  # got past validation
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["run"]["cancelReason"] is None


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{nope", "invalid_json"),
        (b"[]", "invalid_request"),
        (b'"cancel"', "invalid_request"),
        (b"null", "invalid_request"),
        (b'{"reason": 5}', "invalid_request"),
        (b'{"reason": ["me"]}', "invalid_request"),
        (b'{"reason": "a\\u0000b"}', "unsupported_value"),
    ],
)
@pytest.mark.parametrize("route", ["cancel", "recover"])
def test_optional_bodies__a_body_that_is_sent_must_be_valid(
    api: httpx.Client, world: World, route: str, content: bytes, code: str
) -> None:
    """Upstream reads an unparsable cancel/recover body as {}: here only an absent one is (the
    schema and the server agree; docs/decisions.md)."""
    method, template = OPTIONAL_BODY_ROUTES[route]

    assert refusals(api, world, [(route, method, world.path(template), raw(content))], 400, code) == []
    assert Run.objects.get(id=world.run).status == "running"


# --- missing required fields -----------------------------------------------------------------------

REQUIRED = ["heartbeat", "children", "steps_begin", "step_complete", "step_fail", "gates_begin", "resolve"]
REQUIRED += ["save_state", "snapshot"]


def test_body_routes__missing_required_fields_is_400_invalid_request_and_writes_nothing(
    api: httpx.Client, world: World
) -> None:
    cases = [
        (route, BODY_ROUTES[route][0], world.path(BODY_ROUTES[route][1]), {"json": {"unrelated": 1}})
        for route in REQUIRED
    ]

    assert refusals(api, world, cases, 400, "invalid_request") == []


def test_body_routes__validation_issues_name_the_field(api: httpx.Client, world: World) -> None:
    response = api.post(f"/runs/{world.run}/steps/begin", json={"name": "s2"})

    body = assert_error(response, 400, "invalid_request")
    assert [issue["path"] for issue in body["issues"]] == [["inputHash"]]


# --- wrong types and out-of-range values -------------------------------------------------------------

OWNER = "<owner>"  # replaced by the world's lease owner
WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("create", {"metadata": "x"}),
    ("create", {"metadata": [1]}),
    ("create", {"channels": "x"}),
    ("create", {"channels": [{"type": "email", "url": "http://example.com/h"}]}),
    ("create", {"channels": [{"type": "webhook"}]}),
    ("create", {"channels": [{"type": "webhook", "url": "not a url"}]}),
    ("create", {"recoveryWebhook": "not a url"}),
    ("create", {"recoveryWebhook": 5}),
    ("heartbeat", {"leaseOwner": 5}),
    ("heartbeat", {"leaseOwner": ""}),
    ("fail", {"failureClass": 3}),
    ("children", {"name": 1, "workflowName": "c"}),
    ("children", {"name": "", "workflowName": "c"}),
    ("children", {"name": "e", "workflowName": "c", "edgeMetadata": [1]}),
    ("children", {"name": "e", "workflowName": "c", "edgeType": ""}),
    ("steps_begin", {"name": "s2", "inputHash": "h", "leaseOwner": 7}),
    ("steps_begin", {"name": "s2", "inputHash": 5}),
    ("steps_begin", {"name": "", "inputHash": "h"}),
    ("steps_begin", {"name": "s2", "inputHash": "h", "options": [1]}),
    ("step_complete", {"leaseOwner": 1}),
    ("step_complete", {"leaseOwner": ""}),
    ("step_fail", {"leaseOwner": OWNER, "resumeDecision": "bogus"}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": "maybe"}),
    ("gates_begin", {"name": "g2", "prompt": "p", "timeoutMs": 0}),
    ("gates_begin", {"name": "g2", "prompt": "p", "timeoutMs": -5}),
    ("gates_begin", {"name": "g2", "prompt": "p", "timeoutMs": 1.5}),
    ("gates_begin", {"name": "g2", "prompt": "p", "timeoutMs": "soon"}),
    ("gates_begin", {"name": "g2", "prompt": 3}),
    ("gates_begin", {"name": "g2", "prompt": ""}),
    ("gates_begin", {"name": "g2", "prompt": "p", "channels": [{"type": "webhook", "url": "nope"}]}),
    ("resolve", {"decision": "maybe"}),
    ("resolve", {"decision": "approved", "actor": 5}),
    ("put_state", {"value": 1, "importance": "huge"}),
    ("put_state", {"value": 1, "metadata": []}),
    ("put_state", {"value": 1, "stream": ""}),
    ("patch_state", {"value": 1, "label": 1}),
    ("save_state", {"label": ""}),
    ("save_state", {"label": "l", "importance": "x"}),
    ("snapshot", {"label": 1}),
    ("snapshot", {"label": "l", "target": {"type": "", "id": "x"}}),
    ("snapshot", {"label": "l", "target": "run"}),
    ("usage", {"inputTokens": -1}),
    ("usage", {"outputTokens": "many"}),
    ("usage", {"totalTokens": 1.5}),
    ("usage", {"costUsd": "lots"}),
    ("usage", {"costUsd": -1}),
    ("usage", {"quantity": 1e30}),
    ("usage", {"kind": ""}),
    ("usage", {"metadata": "m"}),
    ("usage", {"stepId": "step_00000000000000000000000000000000"}),
]


def test_body_routes__wrong_types_are_400_invalid_request_and_write_nothing(api: httpx.Client, world: World) -> None:
    cases = [
        (f"{route} {body}", BODY_ROUTES[route][0], world.path(BODY_ROUTES[route][1]), {"json": with_owner(body, world)})
        for route, body in WRONG_TYPES
    ]

    assert refusals(api, world, cases, 400, "invalid_request") == []


# --- issue #12, item 7: JSON types, nothing looser ------------------------------------------------

QUEUE_ROUTES = {
    "enqueue": ("POST", "/queues/q/enqueue"),
    "claim": ("POST", "/queues/claim"),
    "queue_config": ("PUT", "/queues/q/config"),
    "schedule": ("PUT", "/schedules/s"),
}
ROUTES = {**BODY_ROUTES, **QUEUE_ROUTES}
STEP = {"name": "s2", "inputHash": "h"}
GATE = {"name": "g2", "prompt": "p"}
ENQUEUE = {"workflowName": "w"}
SCHEDULE = {"cron": "* * * * *", "workflowName": "w"}

# Strings are not booleans or numbers; numbers and booleans are not strings; null is not a string,
# number, boolean, object or array. Each was accepted (coerced, or read as "absent") before.
LOOSE_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("steps_begin", {**STEP, "leaseOwner": None}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": "y"}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": "true"}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": 1}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": None}),
    ("step_fail", {"leaseOwner": OWNER, "resumeDecision": None}),
    ("heartbeat", {"leaseOwner": None}),
    ("heartbeat", {}),
    ("create", {"metadata": None}),
    ("create", {"channels": None}),
    ("create", {"recoveryWebhook": None}),
    ("create", {"channels": [{"type": "webhook", "url": "http://example.com/h", "events": None}]}),
    ("fail", {"failureClass": None}),
    ("children", {"name": "e", "workflowName": "c", "edgeType": None}),
    ("steps_begin", {**STEP, "options": None}),
    ("gates_begin", {**GATE, "timeoutMs": "1000"}),
    ("gates_begin", {**GATE, "timeoutMs": True}),
    ("gates_begin", {**GATE, "timeoutMs": None}),
    ("gates_begin", {**GATE, "channels": None}),
    ("resolve", {"decision": "approved", "actor": None}),
    ("put_state", {"value": 1, "stream": None}),
    ("put_state", {"value": 1, "importance": None}),
    ("patch_state", {"value": 1, "label": None}),
    ("save_state", {"label": "l", "metadata": None}),
    ("snapshot", {"label": "l", "target": None}),
    ("usage", {"inputTokens": "5"}),
    ("usage", {"inputTokens": True}),
    ("usage", {"inputTokens": 1.5}),
    ("usage", {"costUsd": "1.5"}),
    ("usage", {"quantity": False}),
    ("usage", {"kind": None}),
    ("usage", {"model": 4}),
    ("enqueue", {**ENQUEUE, "maxAttempts": "3"}),
    ("enqueue", {**ENQUEUE, "priority": True}),
    ("enqueue", {**ENQUEUE, "delayMs": "10"}),
    ("enqueue", {**ENQUEUE, "runAt": 1700000000}),
    ("enqueue", {**ENQUEUE, "dedupeKey": None}),
    ("claim", {"queues": ["q"], "limit": "2"}),
    ("claim", {"queues": ["q"], "leaseOwner": None}),
    ("claim", {"queues": "q"}),
    ("queue_config", {"paused": "yes"}),
    ("queue_config", {"concurrency": "3"}),
    ("schedule", {**SCHEDULE, "enabled": "true"}),
    ("schedule", {**SCHEDULE, "enabled": 0}),
    ("schedule", {**SCHEDULE, "maxAttempts": "2"}),
    ("schedule", {**SCHEDULE, "cron": "0 9 * * MON"}),
]


def test_body_routes__loose_types_are_400_invalid_request_and_write_nothing(api: httpx.Client, world: World) -> None:
    cases = [
        (f"{route} {body}", ROUTES[route][0], world.path(ROUTES[route][1]), {"json": with_owner(body, world)})
        for route, body in LOOSE_TYPES
    ]

    assert refusals(api, world, cases, 400, "invalid_request") == []


def test_enqueue__run_at_offsets_beyond_what_postgres_takes_are_read_in_utc(api: httpx.Client) -> None:
    """Found by schemathesis: ISO-8601 allows ``+17:20``, Postgres does not (a 400 quoting SQL)."""
    response = api.post("/queues/q/enqueue", json={"workflowName": "w", "runAt": "2026-06-10T10:01:28.5386+17:20"})

    assert response.status_code == 200, response.text
    assert response.json()["run"]["runAt"] == "2026-06-09T16:41:28.538Z"


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"])
def test_enqueue__run_at_outside_the_years_1970_to_9989_is_400(api: httpx.Client, world: World, run_at: str) -> None:
    """Found by schemathesis: in UTC, 0001-01-01T00:00:00+01:00 is in the year 0."""
    case = ("enqueue", "POST", "/queues/q/enqueue", {"json": {"workflowName": "w", "runAt": run_at}})

    assert refusals(api, world, [case], 400, "invalid_request") == []


def test_wire_timestamps__years_before_1000_keep_four_digits() -> None:
    """Found by schemathesis (a run answered ``"runAt": "119-07-10T..."``): strftime's %Y does not
    pad; JS ``toISOString`` and RFC 3339 do."""
    assert wire.ts(dt.datetime(119, 7, 10, 23, 46, 5, 600_000, tzinfo=dt.UTC)) == "0119-07-10T23:46:05.600Z"
    assert wire.ts(dt.datetime(2026, 1, 2, 3, 4, 5, 6_000, tzinfo=dt.UTC)) == "2026-01-02T03:04:05.006Z"


def test_steps_begin__a_null_lease_owner_names_the_field(api: httpx.Client, world: World) -> None:
    response = api.post(f"/runs/{world.run}/steps/begin", json={**STEP, "leaseOwner": None})

    body = assert_error(response, 400, "invalid_request")
    assert body["issues"] == [
        {
            "code": "value_error",
            "path": ["leaseOwner"],
            "message": "Value error, must not be null (omit the field instead)",
        }
    ]


# JSON semantics, kept: an integral number is an integer, an integer is a number, and "any JSON"
# fields (and the queue-config caps, where null means "keep") take null. The official client
# sends ``input: null``, ``capability: null``, ``data: {}``, ``channels: []`` (§19.3, §19.5).
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("steps_begin", {**STEP, "input": None, "options": {}, "leaseOwner": OWNER}),
    ("gates_begin", {**GATE, "data": {}, "channels": [], "capability": None, "timeoutMs": 60000.0}),
    ("step_fail", {"leaseOwner": OWNER, "retryable": False, "error": None}),
    ("usage", {"inputTokens": 5.0, "costUsd": 1, "quantity": 2}),
    ("complete", {"result": None}),
    ("put_state", {"value": None}),
    ("enqueue", {**ENQUEUE, "maxAttempts": 2.0, "input": None, "runAt": "2030-01-01T00:00:00+02:00"}),
    ("queue_config", {"concurrency": None, "ratePerMinute": None, "invokeUrl": None, "paused": None}),
    ("schedule", {**SCHEDULE, "cron": "*/15 0-6,22 1 1-12/2 0,7", "maxAttempts": 3.0, "enabled": False}),
]


@pytest.mark.parametrize(("route", "body"), ACCEPTED, ids=[f"{r}-{i}" for i, (r, _) in enumerate(ACCEPTED)])
def test_body_routes__json_semantics_are_kept(
    api: httpx.Client, world: World, route: str, body: dict[str, Any]
) -> None:
    method, template = ROUTES[route]

    response = api.request(method, world.path(template), json=with_owner(body, world))

    assert response.status_code == 200, response.text


def test_usage__a_step_id_of_another_run_is_refused(api: httpx.Client, world: World) -> None:
    other = api.post("/runs/validation", json={}).json()["run"]["id"]
    before = snapshot_counts(world.run)

    response = api.post(f"/runs/{other}/usage", json={"stepId": world.step, "inputTokens": 1})

    assert_error(response, 400, "invalid_request")
    assert snapshot_counts(world.run) == before


# --- unknown run, step and gate ids -------------------------------------------------------------------

UNKNOWN_RUN_WRITES: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    ("begin", "POST", "/runs/{run}/begin", None, 404),
    ("heartbeat", "POST", "/runs/{run}/heartbeat", {"leaseOwner": "x"}, 404),
    ("complete", "POST", "/runs/{run}/complete", {"result": 1}, 404),
    ("fail", "POST", "/runs/{run}/fail", {"error": {}}, 404),
    ("cancel", "POST", "/runs/{run}/cancel", {}, 404),
    ("recover", "POST", "/runs/{run}/recover", {}, 404),
    ("children", "POST", "/runs/{run}/children", {"name": "e", "workflowName": "c"}, 404),
    ("steps_begin", "POST", "/runs/{run}/steps/begin", {"name": "s", "inputHash": "h"}, 404),
    ("step_complete", "POST", "/runs/{run}/steps/{step}/complete", {"leaseOwner": "x"}, 409),
    ("step_fail", "POST", "/runs/{run}/steps/{step}/fail", {"leaseOwner": "x"}, 409),
    ("gates_begin", "POST", "/runs/{run}/gates/begin", {"name": "g", "prompt": "p"}, 404),
    ("resolve", "POST", "/runs/{run}/gates/{gate}/resolve", {"decision": "approved", "token": "t"}, 404),
    ("put_state", "PUT", "/runs/{run}/state", {"value": {"a": 1}}, 404),
    ("patch_state", "PATCH", "/runs/{run}/state", {"value": {"a": 1}}, 404),
    ("save_state", "POST", "/runs/{run}/state/save", {"label": "l"}, 404),
    ("snapshot", "POST", "/runs/{run}/snapshots", {"label": "l"}, 404),
    ("usage", "POST", "/runs/{run}/usage", {"inputTokens": 1}, 404),
    ("detail", "GET", "/runs/{run}", None, 404),
    ("gate", "GET", "/runs/{run}/gates/{gate}", None, 404),
]


def test_routes__an_unknown_run_id_is_a_4xx_and_writes_nothing(api: httpx.Client, world: World) -> None:
    problems = []
    for label, method, template, body, status in UNKNOWN_RUN_WRITES:
        case = (label, method, world.path(template, run=UNKNOWN_RUN), {"json": body})
        problems += refusals(api, world, [case], status)

    assert problems == []


def test_routes__an_unknown_step_or_gate_id_is_a_4xx_and_writes_nothing(api: httpx.Client, world: World) -> None:
    other = api.post("/runs/validation", json={}).json()["run"]["id"]
    missing_step = "step_00000000000000000000000000000000"
    missing_gate = "gate_00000000000000000000000000000000"
    owner = {"leaseOwner": world.owner}
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("complete missing step", "POST", f"/runs/{world.run}/steps/{missing_step}/complete", {"json": owner}),
        ("fail missing step", "POST", f"/runs/{world.run}/steps/{missing_step}/fail", {"json": owner}),
        ("complete step of other run", "POST", f"/runs/{other}/steps/{world.step}/complete", {"json": owner}),
        ("fail step of other run", "POST", f"/runs/{other}/steps/{world.step}/fail", {"json": owner}),
        (
            "resolve missing gate",
            "POST",
            f"/runs/{world.run}/gates/{missing_gate}/resolve",
            {"json": {"decision": "approved"}},
        ),
        (
            "resolve gate of other run",
            "POST",
            f"/runs/{other}/gates/{world.gate}/resolve",
            {"json": {"decision": "approved"}},
        ),
        ("get missing gate", "GET", f"/runs/{world.run}/gates/{missing_gate}", {}),
        ("get gate of other run", "GET", f"/runs/{other}/gates/{world.gate}", {}),
    ]

    assert refusals(api, world, cases) == []
    assert Gate.objects.get(id=world.gate).status == "pending"


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("/runs/{run}/state/versions", "stateVersions"),
        ("/runs/{run}/snapshots", "snapshots"),
        ("/runs/{run}/steps", "steps"),
    ],
)
def test_list_routes__an_unknown_run_gives_an_empty_list(api: httpx.Client, template: str, key: str) -> None:
    response = api.get(template.format(run=UNKNOWN_RUN))

    assert response.status_code == 200
    assert response.json() == {key: []}


def test_state_save__with_no_live_state_is_404(api: httpx.Client) -> None:
    run = api.post("/runs/validation", json={}).json()["run"]["id"]

    response = api.post(f"/runs/{run}/state/save", json={"label": "l"})

    assert_error(response, 404, "not_found")


def test_events__a_bad_after_is_400_json(api: httpx.Client, world: World) -> None:
    cases = [
        (f"after={after!r}", "GET", f"/runs/{world.run}/events", {"params": {"after": after}})
        for after in ["abc", "-1", "1.5", ""]
    ]

    assert refusals(api, world, cases, 400, "invalid_request") == []


def test_events__a_method_other_than_get_is_405_json(api: httpx.Client, world: World) -> None:
    cases = [(method, method, f"/runs/{world.run}/events", {}) for method in ["POST", "PUT", "PATCH", "DELETE"]]

    assert refusals(api, world, cases, 405, "method_not_allowed") == []


def test_unknown_routes__are_404_json(api: httpx.Client, world: World) -> None:
    cases = [
        ("unknown path", "GET", f"/runs/{world.run}/nope", {}),
        ("trailing slash", "GET", "/runs/", {}),
        ("deep path", "POST", f"/runs/{world.run}/steps/{world.step}/nope", {"json": {}}),
    ]

    assert refusals(api, world, cases, 404, "not_found") == []


def test_known_routes__a_wrong_method_is_a_json_error(api: httpx.Client, world: World) -> None:
    cases = [
        ("DELETE run", "DELETE", f"/runs/{world.run}", {}),
        ("GET begin", "GET", f"/runs/{world.run}/begin", {}),
        ("PUT steps/begin", "PUT", f"/runs/{world.run}/steps/begin", {"json": {}}),
    ]

    assert refusals(api, world, cases) == []


# --- oversized bodies ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(test_database_url: str) -> Iterator[str]:
    server = start_live_server(test_database_url, TIDEBASE_MAX_BODY_BYTES="1000")
    yield server.url
    server.stop()


ALL_WRITE_ROUTES = {**BODY_ROUTES, **OPTIONAL_BODY_ROUTES, "begin": ("POST", "/runs/{run}/begin")}


def test_write_routes__a_body_over_the_limit_is_413_and_writes_nothing(small_server: str, world: World) -> None:
    body = {"name": "big", "inputHash": "h", "label": "l", "prompt": "p", "leaseOwner": world.owner}
    body |= {"decision": "approved", "workflowName": "c", "input": "x" * 2000, "value": "x" * 2000}
    cases = [
        (route, method, world.path(template), {"json": body}) for route, (method, template) in ALL_WRITE_ROUTES.items()
    ]

    with httpx.Client(base_url=small_server, timeout=30) as http:
        assert refusals(http, world, cases, 413, "payload_too_large") == []
        assert http.post(f"/runs/{world.run}/complete", json=body).json()["limit"] == 1000


def test_write_routes__a_body_under_the_limit_is_accepted(small_server: str, world: World) -> None:
    with httpx.Client(base_url=small_server, timeout=30) as http:
        response = http.put(f"/runs/{world.run}/state", json={"value": "x" * 500})

    assert response.status_code == 200
    assert response.json()["state"]["value"] == "x" * 500


# --- values Postgres cannot store ------------------------------------------------------------------

NUL = "a\u0000b"
NUL_CASES: list[tuple[str, dict[str, Any]]] = [
    ("create", {"input": {"text": NUL}}),
    ("create", {"input": {NUL: 1}}),
    ("create", {"metadata": {"k": NUL}}),
    ("complete", {"result": [NUL]}),
    ("fail", {"error": {"message": NUL}}),
    ("children", {"name": "e", "workflowName": "c", "input": NUL}),
    ("steps_begin", {"name": "s2", "inputHash": "h", "input": {"t": NUL}}),
    ("steps_begin", {"name": NUL, "inputHash": "h"}),
    ("step_complete", {"leaseOwner": OWNER, "output": {"t": NUL}}),
    ("step_fail", {"leaseOwner": OWNER, "error": NUL}),
    ("gates_begin", {"name": "g2", "prompt": "p", "data": {"t": NUL}}),
    ("gates_begin", {"name": "g2", "prompt": NUL}),
    ("resolve", {"decision": "approved", "payload": {"t": NUL}}),
    ("put_state", {"value": {"t": NUL}}),
    ("patch_state", {"value": {"t": NUL}}),
    ("snapshot", {"label": "l", "state": NUL}),
    ("usage", {"metadata": {"t": NUL}}),
]


def test_body_routes__a_nul_character_is_400_unsupported_value_and_writes_nothing(
    api: httpx.Client, world: World
) -> None:
    before_run = api.get(f"/runs/{world.run}").json()
    cases = [
        (
            f"{route} {body!r}",
            BODY_ROUTES[route][0],
            world.path(BODY_ROUTES[route][1]),
            {"json": with_owner(body, world)},
        )
        for route, body in NUL_CASES
    ]

    assert refusals(api, world, cases, 400, "unsupported_value") == []
    after_run = api.get(f"/runs/{world.run}").json()
    for key in ("run", "steps", "gates", "state", "stateVersions", "usage", "events"):
        assert after_run[key] == before_run[key], key


def test_create_run__a_nul_character_in_the_workflow_name_is_a_4xx(api: httpx.Client) -> None:
    before = Run.objects.count()

    response = api.post("/runs/a%00b", json={})

    assert_error(response, 400)
    assert Run.objects.count() == before


# --- issue #12, item 8: no database text in any answer ----------------------------------------------

DATABASE_WORDS = ("INSERT", "UPDATE", "SELECT", "LINE ", "DETAIL", "CONTEXT", "psycopg", "PostgreSQL", "jsonb", "tb_")


def database_text(response: httpx.Response) -> list[str]:
    """Words of a database error message (statement text, Postgres details) in an answer."""
    return [word for word in DATABASE_WORDS if word in response.text]


BIG = "1e400"  # valid JSON; no double holds it (it parses as infinity)
UNSTORABLE_NUMBERS: list[tuple[str, str]] = [
    ("create", '{"input": %s}'),
    ("create", '{"metadata": {"n": [%s]}}'),
    ("complete", '{"result": %s}'),
    ("fail", '{"error": {"n": -%s}}'),
    ("children", '{"name": "e", "workflowName": "c", "input": %s}'),
    ("steps_begin", '{"name": "s2", "inputHash": "h", "input": %s}'),
    ("steps_begin", '{"name": "s2", "inputHash": "h", "options": {"timeoutMs": %s}}'),
    ("step_complete", '{"leaseOwner": "<owner>", "output": %s}'),
    ("step_fail", '{"leaseOwner": "<owner>", "error": %s}'),
    ("gates_begin", '{"name": "g2", "prompt": "p", "data": %s}'),
    ("resolve", '{"decision": "approved", "payload": %s}'),
    ("put_state", '{"value": %s}'),
    ("patch_state", '{"value": {"n": %s}}'),
    ("snapshot", '{"label": "l", "state": %s}'),
    ("usage", '{"metadata": {"n": %s}}'),
    ("usage", '{"quantity": %s}'),
]


@pytest.mark.parametrize("big", [BIG, "1" + "0" * 210 + "e99"])  # the second: no 3-digit exponent
def test_body_routes__a_number_beyond_a_double_is_400_unsupported_value_and_writes_nothing(
    api: httpx.Client, world: World, big: str
) -> None:
    """``{"value": 1e400}`` used to answer with a fragment of an UPDATE statement, and the WSGI
    hot path stored the step input as null; now every route refuses it before any SQL."""
    before_run = api.get(f"/runs/{world.run}").json()
    cases = [
        (f"{route} {template}", BODY_ROUTES[route][0], world.path(BODY_ROUTES[route][1]), raw(body.encode()))
        for route, template in UNSTORABLE_NUMBERS
        for body in [(template % big).replace("<owner>", world.owner)]
    ]

    assert refusals(api, world, cases, 400, "unsupported_value") == []
    after_run = api.get(f"/runs/{world.run}").json()
    for key in ("run", "steps", "gates", "state", "stateVersions", "usage", "events"):
        assert after_run[key] == before_run[key], key


def test_body_routes__large_finite_numbers_are_stored(api: httpx.Client, world: World) -> None:
    response = api.put(f"/runs/{world.run}/state", **raw(b'{"value": [1e300, -1.5e-300, 1e100]}'))

    assert response.status_code == 200, response.text
    assert response.json()["state"]["value"] == [1e300, -1.5e-300, 1e100]


def unstorable_requests(world: World) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Requests Postgres refuses, each through a different path to the database error."""
    nul_bodies = [
        (
            f"{route} {body!r}",
            BODY_ROUTES[route][0],
            world.path(BODY_ROUTES[route][1]),
            {"json": with_owner(body, world)},
        )
        for route, body in NUL_CASES
    ]
    return [
        *nul_bodies,
        ("number", "PUT", f"/runs/{world.run}/state", raw(b'{"value": 1e400}')),
        ("nul in path", "POST", "/runs/a%00b", {"json": {}}),
        ("nul in query", "GET", f"/runs/{world.run}/state/versions?stream=%00", {}),
        ("nul in cancel", "POST", f"/runs/{world.run}/cancel", raw(b'{"reason": "\\u0000"}')),
        # a key too long for a btree index row: reaches the database, ProgramLimitExceeded
        ("index row", "PUT", f"/schedules/{secrets.token_urlsafe(3000)}", {"json": SCHEDULE}),
    ]


def test_errors__never_carry_database_text(api: httpx.Client, world: World) -> None:
    problems = []
    for label, method, url, kwargs in unstorable_requests(world):
        response = api.request(method, url, **kwargs)
        problem = error_problem(response, 400, "unsupported_value")
        if problem is not None:
            problems.append(f"{label}: {problem}")
        elif database_text(response):
            problems.append(f"{label}: {database_text(response)} in {response.text[:300]}")

    assert problems == []


def test_errors__a_database_error_that_still_occurs_is_answered_without_its_text() -> None:
    """What the API answers for a ``DataError`` no check caught: a real one from Postgres, whose
    message quotes the statement, through the API's own exception handler."""
    with pytest.raises(DataError) as caught, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE tb_run SET input = %s::jsonb WHERE id = %s", ['{"t": "\\u0000"}', UNKNOWN_RUN])
    assert "UPDATE tb_run" in str(caught.value)  # what used to reach the answer

    response = api.on_exception(RequestFactory().post("/runs/x/complete"), caught.value)

    assert response.status_code == 400
    assert json.loads(response.content) == {
        "error": "a value in the request cannot be stored (out of range, too long, or a NUL character)",
        "code": "unsupported_value",
    }


# --- large values ------------------------------------------------------------------------------------


def test_step_output__a_5_mb_output_round_trips_through_complete_and_replay(api: httpx.Client) -> None:
    output = {
        "blob": "é✓x" * 600_000,
        "rows": [{"i": i, "v": i * 0.5, "s": f"row-{i}"} for i in range(60_000)],
    }
    run = api.post("/runs/big", json={}).json()["run"]["id"]
    owner = api.post(f"/runs/{run}/begin").json()["leaseOwner"]
    step = api.post(f"/runs/{run}/steps/begin", json={"name": "big", "inputHash": "h", "leaseOwner": owner}).json()

    done = api.post(f"/runs/{run}/steps/{step['step']['id']}/complete", json={"leaseOwner": owner, "output": output})
    replay = api.post(f"/runs/{run}/steps/begin", json={"name": "big", "inputHash": "h", "leaseOwner": "other"})

    assert done.status_code == 200
    assert len(done.request.content) > 5_000_000
    assert replay.status_code == 200
    body = replay.json()
    assert body["action"] == "return"
    assert body["output"] == output
    assert body["step"]["output"] == output
