"""State set (PUT/PATCH) and usage record on the WSGI hot path (tidebase_core.api.hotpath):
plain requests are answered there, and every answer, error and idempotent retry is the one the
framework path gives (a percent-encoded run id takes the framework path, §19.9)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.test_hotpath import encoded, environ, serve, shape
from tidebase_core.models import RunState, UsageRecord
from tidebase_core.services import runs as run_services

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

USAGE = {"kind": "llm", "provider": "openai", "model": "m", "inputTokens": 3, "outputTokens": 4, "costUsd": 0.0021}


def test_the_hot_path_answers_state_set_and_usage_record() -> None:
    run = run_services.run_create(workflow_name="wf")
    state = f"/runs/{run.id}/state"

    status, content = serve(environ(state, json.dumps({"value": {"a": 1}}).encode(), REQUEST_METHOD="PUT"))
    assert (status, json.loads(content or b"")["state"]["version"]) == ("200 OK", 1)
    status, content = serve(environ(state, json.dumps({"value": {"b": 2}}).encode(), REQUEST_METHOD="PATCH"))
    assert status == "200 OK"
    assert json.loads(content or b"")["state"]["value"] == {"a": 1, "b": 2}
    status, content = serve(environ(f"/runs/{run.id}/usage", json.dumps(USAGE).encode()))
    assert status == "200 OK"
    assert json.loads(content or b"")["usage"]["totalTokens"] == 7

    assert RunState.objects.get(run_id=run.id).value == {"a": 1, "b": 2}
    assert UsageRecord.objects.filter(run_id=run.id).count() == 1
    body = json.dumps({"value": {"c": 3}}).encode()
    for env in (
        environ(state, body),  # POST: no such route
        environ(state, body, REQUEST_METHOD="GET"),
        environ(state, body, REQUEST_METHOD="DELETE"),
        environ(f"/runs/{run.id}/usage", json.dumps(USAGE).encode(), REQUEST_METHOD="PUT"),
        environ(state, body, REQUEST_METHOD="PUT", raw_uri=f"/runs/{encoded(run.id)}/state"),
        environ(state, b'{"value": 1, "importance": "huge"}', REQUEST_METHOD="PATCH"),  # ninja renders the 422
    ):
        assert serve(env) == (None, None), env


def answers(api: httpx.Client, run_id: str) -> list[tuple[int, str, Any]]:
    put = api.put(f"/runs/{run_id}/state", json={"value": {"a": 1}, "label": "l", "stream": "s"})
    patch = api.patch(f"/runs/{run_id}/state", json={"value": {"b": [1, 2]}})
    usage = api.post(f"/runs/{run_id}/usage", json=USAGE)
    assert patch.json()["state"]["value"] == {"a": 1, "b": [1, 2]}
    return [(r.status_code, r.headers["content-type"], shape(r.json())) for r in (put, patch, usage)]


def test_hot_and_framework_paths_answer_alike(api: httpx.Client) -> None:
    hot, framework = (api.post("/runs/wf", json={}).json()["run"]["id"] for _ in range(2))

    assert answers(api, hot) == answers(api, encoded(framework))

    for rid in ("run_missing", encoded("run_missing")):  # 404 on both
        for response in (
            api.put(f"/runs/{rid}/state", json={"value": 1}),
            api.patch(f"/runs/{rid}/state", json={"value": 1}),
            api.post(f"/runs/{rid}/usage", json=USAGE),
        ):
            assert response.status_code == 404, response.text
            assert response.json() == {"error": "run not found", "code": "not_found"}
    refused = [api.post(f"/runs/{rid}/usage", json={**USAGE, "stepId": "step_x"}) for rid in (hot, encoded(hot))]
    assert [r.status_code for r in refused] == [400, 400]
    assert refused[0].json() == refused[1].json()


def test_an_idempotency_key_records_once_across_the_hot_and_framework_paths(api: httpx.Client) -> None:
    run_id = api.post("/runs/wf", json={}).json()["run"]["id"]

    def record(rid: str, key: str) -> httpx.Response:
        return api.post(f"/runs/{rid}/usage", json=USAGE, headers={"Idempotency-Key": key})

    first, retried = record(run_id, "k1"), record(encoded(run_id), "k1")
    assert first.json() == retried.json()
    first, retried = record(encoded(run_id), "k2"), record(run_id, "k2")
    assert first.json() == retried.json()
    assert UsageRecord.objects.filter(run_id=run_id).count() == 2

    too_long = [record(rid, "k" * 201) for rid in (run_id, encoded(run_id))]
    assert [r.status_code for r in too_long] == [400, 400]
    assert too_long[0].json() == too_long[1].json()
    assert too_long[0].json()["code"] == "invalid_request"
