"""``GET /metrics`` against a live server with two web processes (``tidebase_core.metrics``): it
is guarded like the API, its event figures add up across processes (prometheus_client's
multiprocess folder), and every figure moves when a real run, step, gate, usage record, claim or
outbox row happens. ``TIDEBASE_METRICS=0`` turns it all off."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_auth import app_key
from tests.conftest import LiveServer, start_live_server
from tests.live import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"Authorization": "Bearer secret"}  # the env key: admin
HTTP = "tidebase_http_request_duration_seconds_count"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def live(test_database_url: str, folder: Path) -> Iterator[LiveServer]:
    server = start_live_server(test_database_url, TIDEBASE_API_KEY="secret", PROMETHEUS_MULTIPROC_DIR=str(folder))
    yield server
    server.stop()


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30, headers=ENV) as client:
        yield client


def scrape(url: str, headers: dict[str, str] = ENV) -> Samples:
    response = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def per_process(folder: Path, route: str) -> dict[str, float]:
    """How many ``POST <route> 200`` each web process recorded, read from its own file (a
    histogram's buckets are stored one by one: their sum is its count)."""
    counts: dict[str, float] = {}
    for path in folder.glob("histogram_*.db"):
        for key, count, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            labels.pop("le", None)
            wanted = {"method": "POST", "route": route, "status": "200"}
            if sample == "tidebase_http_request_duration_seconds_bucket" and labels == wanted:
                counts[path.name] = counts.get(path.name, 0.0) + count
    return counts


# --- guarded like the API -------------------------------------------------------------------------


def test_metrics_needs_an_operator_key(live: LiveServer) -> None:
    agent = app_key("robot", "agent")
    operator = app_key("ops", "operator")

    anonymous = httpx.get(live.url + "/metrics")
    as_agent = httpx.get(live.url + "/metrics", headers=agent)
    as_operator = httpx.get(live.url + "/metrics", headers=operator)

    assert (anonymous.status_code, anonymous.json()) == (401, {"error": "unauthorized", "code": "unauthorized"})
    assert as_agent.status_code == 403
    assert (as_agent.json()["code"], as_agent.json()["scope"], as_agent.json()["required"]) == (
        "forbidden",
        "agent",
        "operator",
    )
    assert as_operator.status_code == 200
    assert "# TYPE tidebase_http_request_duration_seconds histogram" in as_operator.text
    assert value(scrape(live.url), "tidebase_state_up") == 1.0


# --- events add up across the web processes -------------------------------------------------------


def test_requests_served_by_either_web_process_add_up(live: LiveServer, folder: Path) -> None:
    route = "/runs/{run_id}"  # create_run: POST /runs/:workflowName
    before_total = value(scrape(live.url), HTTP, method="POST", route=route, status="200")
    before = per_process(folder, route)
    sent = 0
    # New connections until both processes have answered some of them (the kernel spreads
    # accepts over the two); bounded, and each request counts whichever process took it.
    while sent < 400:
        assert httpx.post(live.url + "/runs/wf-spread", json={}, headers=ENV).status_code == 200
        sent += 1
        now = per_process(folder, route)
        if len(now) >= 2 and all(now[name] > before.get(name, 0.0) for name in now):
            break
    assert len(now) == 2, "one web process served every request"

    after_total = value(scrape(live.url), HTTP, method="POST", route=route, status="200")

    assert after_total - before_total == sent
    assert sum(now.values()) - sum(before.values()) == sent


def test_route_labels_are_templates_never_raw_paths(live: LiveServer, http: httpx.Client) -> None:
    secret_id = f"run_{uuid.uuid4().hex}"
    assert http.get(f"/runs/{secret_id}").status_code == 404
    assert http.get(f"/runs/{secret_id}/nowhere").status_code == 404
    assert httpx.get(live.url + f"/runs/{secret_id}/steps").status_code == 401

    samples = scrape(live.url)

    assert not [key for key in samples if any(secret_id in v for _, v in key[1])]
    assert value(samples, HTTP, method="GET", route="/runs/{run_id}", status="404") >= 1
    assert value(samples, HTTP, method="GET", route="unmatched", status="404") >= 1
    assert value(samples, HTTP, method="GET", route="unmatched", status="401") >= 1  # refused before routing
    assert value(samples, HTTP, method="GET", route="/health", status="200") >= 1  # the server's start-up probe


# --- every figure moves with real work ------------------------------------------------------------


def test_steps_gates_usage_claims_and_state_move_the_figures(live: LiveServer, http: httpx.Client) -> None:
    workflow = f"wf-{uuid.uuid4().hex[:8]}"
    model = f"model-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    before = scrape(live.url)

    run = http.post(f"/runs/{workflow}", json={}).json()["run"]["id"]
    owner = http.post(f"/runs/{run}/begin").json()["leaseOwner"]
    for name in ("a", "b", "c"):
        step = http.post(f"/runs/{run}/steps/begin", json={"name": name, "inputHash": "h", "leaseOwner": owner})
        step_id = step.json()["step"]["id"]
        done = http.post(f"/runs/{run}/steps/{step_id}/complete", json={"leaseOwner": owner, "output": name})
        assert done.status_code == 200
    gate = http.post(f"/runs/{run}/gates/begin", json={"name": "ship", "prompt": "ship it?"}).json()["gate"]["id"]
    usage = {"kind": "llm", "provider": "prov", "model": model, "inputTokens": 100, "outputTokens": 20, "costUsd": 0.25}
    assert http.post(f"/runs/{run}/usage", json=usage).status_code == 200
    assert http.post(f"/queues/{queue}/enqueue", json={"workflowName": workflow}).status_code == 200

    during = scrape(live.url)

    steps = "tidebase_step_duration_seconds_count"
    begins = {"method": "POST", "route": "/runs/{run_id}/steps/begin", "status": "200"}
    assert value(during, steps) - value(before, steps) == 3
    assert value(during, HTTP, **begins) - value(before, HTTP, **begins) == 3
    assert value(during, "tidebase_runs", status="running", workflow=workflow) == 1
    assert value(during, "tidebase_runs", status="queued", workflow=workflow) == 1
    assert value(during, "tidebase_gates_pending") - value(before, "tidebase_gates_pending") == 1
    assert value(during, "tidebase_usage_cost_usd_total", provider="prov", model=model) == 0.25
    assert value(during, "tidebase_usage_tokens_total", provider="prov", model=model, direction="input") == 100
    assert value(during, "tidebase_usage_tokens_total", provider="prov", model=model, direction="output") == 20
    assert value(during, "tidebase_usage_records_total", provider="prov", model=model) == 1
    assert value(during, "tidebase_queue_depth", queue=queue, state="ready") == 1

    resolved = http.post(f"/runs/{run}/gates/{gate}/resolve", json={"decision": "approved"})
    assert resolved.status_code == 200
    claimed = http.post("/queues/claim", json={"queues": [queue]}).json()["runs"]
    assert len(claimed) == 1
    retried = http.post(f"/runs/{run}/usage", json=usage, headers={**ENV, "Idempotency-Key": "once"})
    again = http.post(f"/runs/{run}/usage", json=usage, headers={**ENV, "Idempotency-Key": "once"})
    assert retried.status_code == again.status_code == 200

    after = scrape(live.url)

    gate_count = "tidebase_gate_wait_seconds_count"
    assert value(after, gate_count, decision="approved") - value(before, gate_count, decision="approved") == 1
    assert value(after, "tidebase_gates_pending") == value(before, "tidebase_gates_pending")
    assert value(after, "tidebase_queue_claim_wait_seconds_count", queue=queue) == 1
    assert value(after, "tidebase_queue_depth", queue=queue, state="ready") == 0
    assert value(after, "tidebase_runs", status="running", workflow=workflow) == 2  # the claimed run too
    assert value(after, "tidebase_usage_records_total", provider="prov", model=model) == 2  # the retry counts once
    assert value(after, "tidebase_usage_cost_usd_total", provider="prov", model=model) == 0.5


def test_outbox_backlog_and_reconciler_lag_are_read_from_postgres(live: LiveServer, http: httpx.Client) -> None:
    """No worker runs beside this server: webhook rows stay pending and nothing reconciles."""
    channel = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "events": ["state.updated"]}
    before = scrape(live.url)
    run = http.post("/runs/wf-outbox", json={"channels": [channel]}).json()["run"]["id"]
    for n in range(3):
        assert http.put(f"/runs/{run}/state", json={"value": {"n": n}}).status_code == 200
    http.post(f"/runs/{run}/gates/begin", json={"name": "late", "prompt": "?", "timeoutMs": 1})

    after = scrape(live.url)
    lagging = wait_for(lambda: value(scrape(live.url), "tidebase_reconciler_lag_seconds") > 0 or None)

    pending = "tidebase_outbox_pending"
    assert value(after, pending, kind="channel") - value(before, pending, kind="channel") == 3
    assert value(after, pending, kind="recovery") == value(before, pending, kind="recovery")
    assert value(after, "tidebase_outbox_due", kind="channel") >= 3
    assert lagging


def test_metrics_can_be_turned_off(test_database_url: str, tmp_path: Path) -> None:
    server = start_live_server(
        test_database_url, TIDEBASE_API_KEY="secret", TIDEBASE_METRICS="0", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)
    )
    try:
        for _ in range(5):
            assert httpx.post(server.url + "/runs/wf-off", json={}, headers=ENV).status_code == 200
        response = httpx.get(server.url + "/metrics", headers=ENV)
        unauthorized = httpx.get(server.url + "/metrics")
    finally:
        server.stop()

    assert (response.status_code, response.json()["code"]) == (404, "metrics_disabled")
    assert unauthorized.status_code == 401  # guarded all the same
    assert list(tmp_path.iterdir()) == []  # nothing was recorded
