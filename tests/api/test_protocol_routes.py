"""Response shapes and route semantics of PROTOCOL.md §6-§7 and the sharp edges of §19, through
the live server (a real socket, as the SDKs see it)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest

from tidebase_core.models import Event

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RUN_ID = re.compile(r"^run_[0-9a-f]{32}$")

RUN_KEYS = {
    "id", "workflowName", "input", "metadata", "status", "result", "error", "recoveryWebhook", "leaseOwner",
    "leaseExpiresAt", "attempt", "queue", "dedupeKey", "priority", "runAt", "maxAttempts", "deadlineAt",
    "cancelRequestedAt", "cancelledAt", "cancelReason", "cancelActor", "failureClass", "createdAt", "updatedAt",
    "completedAt", "budgetUsd",
}  # fmt: skip
STEP_KEYS = {
    "id", "runId", "name", "inputHash", "input", "options", "resumeContract", "status", "output", "error",
    "leaseOwner", "leaseExpiresAt", "attempt", "startedAt", "completedAt", "createdAt", "updatedAt",
}  # fmt: skip
DETAIL_KEYS = {
    "run", "steps", "state", "stateStreams", "stateVersions", "runEdges", "childRuns", "recoveryAttempts",
    "channels", "channelDeliveries", "gates", "usage", "events",
}  # fmt: skip


def ts_fields(obj: dict[str, Any]) -> dict[str, str]:
    """Every non-null timestamp field of a wire object."""
    return {k: v for k, v in obj.items() if (k.endswith("At")) and v is not None}


def assert_timestamps(obj: dict[str, Any]) -> None:
    fields = ts_fields(obj)
    assert fields, obj
    for key, value in fields.items():
        assert TIMESTAMP.match(value), (key, value)


def parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def event_types(run_id: str) -> list[str]:
    return list(Event.objects.filter(run_id=run_id).order_by("seq").values_list("type", flat=True))


def create(api: httpx.Client, workflow: str = "wf", **body: Any) -> dict[str, Any]:
    response = api.post(f"/runs/{workflow}", json=body)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


def begun(api: httpx.Client) -> tuple[str, str]:
    """A running run and its lease owner."""
    run = create(api)
    owner: str = api.post(f"/runs/{run['id']}/begin").json()["leaseOwner"]
    return run["id"], owner


def step_begin(api: httpx.Client, run_id: str, name: str = "s", input_hash: str = "h", **body: Any) -> dict[str, Any]:
    response = api.post(f"/runs/{run_id}/steps/begin", json={"name": name, "inputHash": input_hash, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def gate_begin(api: httpx.Client, run_id: str, name: str = "g", **body: Any) -> dict[str, Any]:
    response = api.post(f"/runs/{run_id}/gates/begin", json={"name": name, "prompt": "ok?", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --- runs -----------------------------------------------------------------------------------------


def test_create_run__returns_a_pending_run_envelope(api: httpx.Client) -> None:
    response = api.post("/runs/wf", json={"input": {"a": 1}, "metadata": {"m": "x"}})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"run"}
    run = body["run"]
    assert set(run) == RUN_KEYS
    assert RUN_ID.match(run["id"])
    assert (run["workflowName"], run["status"], run["attempt"]) == ("wf", "pending", 0)
    assert (run["input"], run["metadata"], run["result"], run["leaseOwner"]) == ({"a": 1}, {"m": "x"}, None, None)
    assert_timestamps(run)
    assert event_types(run["id"]) == ["run.created"]


def test_create_run__null_or_missing_input_is_stored_as_an_empty_object(api: httpx.Client) -> None:
    assert create(api, input=None)["input"] == {}
    assert create(api)["input"] == {}


def test_get_run__returns_the_detail_envelope_in_documented_shape(api: httpx.Client) -> None:
    run = create(api, input={"k": 1})

    response = api.get(f"/runs/{run['id']}")

    assert response.status_code == 200
    detail = response.json()
    assert set(detail) == DETAIL_KEYS
    assert detail["run"] == run
    assert detail["state"] is None
    assert [e["type"] for e in detail["events"]] == ["run.created"]
    assert detail["events"][0]["seq"] == 1
    assert_timestamps(detail["events"][0])


def test_list_runs__is_newest_first(api: httpx.Client) -> None:
    ids = [create(api, workflow=f"list-{i}")["id"] for i in range(3)]

    response = api.get("/runs")

    assert response.status_code == 200
    listed = [r["id"] for r in response.json()["runs"]]
    assert [i for i in listed if i in ids] == ids[::-1]
    assert listed[0] == ids[-1]


def test_begin_run__returns_the_run_and_its_lease_owner(api: httpx.Client) -> None:
    run = create(api)

    response = api.post(f"/runs/{run['id']}/begin")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"run", "leaseOwner"}
    assert isinstance(body["leaseOwner"], str)
    assert body["run"]["leaseOwner"] == body["leaseOwner"]
    assert (body["run"]["status"], body["run"]["attempt"]) == ("running", 1)
    assert TIMESTAMP.match(body["run"]["leaseExpiresAt"])
    started = Event.objects.get(run_id=run["id"], type="run.started")
    assert started.payload == {"leaseOwner": body["leaseOwner"]}


def test_begin_run__takes_the_owner_from_the_x_tidebase_worker_header(api: httpx.Client) -> None:
    run = create(api)

    body = api.post(f"/runs/{run['id']}/begin", headers={"x-tidebase-worker": "worker-7"}).json()

    assert body["leaseOwner"] == body["run"]["leaseOwner"] == "worker-7"


def test_begin_run__a_live_lease_of_another_owner_is_409_run_leased(api: httpx.Client) -> None:
    run_id, owner = begun(api)

    response = api.post(f"/runs/{run_id}/begin", headers={"x-tidebase-worker": "someone-else"})

    assert response.status_code == 409
    assert response.json()["code"] == "run_leased"
    assert response.json()["leaseOwner"] == owner


def test_begin_run__by_the_same_owner_bumps_the_attempt(api: httpx.Client) -> None:
    run = create(api)
    api.post(f"/runs/{run['id']}/begin", headers={"x-tidebase-worker": "w"})

    body = api.post(f"/runs/{run['id']}/begin", headers={"x-tidebase-worker": "w"}).json()

    assert (body["leaseOwner"], body["run"]["attempt"]) == ("w", 2)
    assert event_types(run["id"]).count("run.started") == 2


def test_begin_run__on_a_cancelled_run_is_409_run_cancelled_with_the_run(api: httpx.Client) -> None:
    run = create(api)
    api.post(f"/runs/{run['id']}/cancel", json={})

    response = api.post(f"/runs/{run['id']}/begin")

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "run_cancelled"
    assert isinstance(body["error"], str)
    assert body["run"]["id"] == run["id"]
    assert body["run"]["status"] == "cancelled"


def test_begin_run__on_a_completed_run_returns_it_unchanged_without_an_event(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    completed = api.post(f"/runs/{run_id}/complete", json={"result": 1}).json()["run"]
    before = event_types(run_id)

    response = api.post(f"/runs/{run_id}/begin")

    assert response.status_code == 200
    assert response.json()["run"] == completed
    assert isinstance(response.json()["leaseOwner"], str)
    assert event_types(run_id) == before


def test_heartbeat__by_the_owner_renews_the_lease(api: httpx.Client) -> None:
    run_id, owner = begun(api)

    response = api.post(f"/runs/{run_id}/heartbeat", json={"leaseOwner": owner})

    assert response.status_code == 200
    assert set(response.json()) == {"run"}
    assert response.json()["run"]["leaseOwner"] == owner


def test_heartbeat__by_another_owner_is_409_lease_lost(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    response = api.post(f"/runs/{run_id}/heartbeat", json={"leaseOwner": "not-me"})

    assert response.status_code == 409
    assert response.json()["code"] == "lease_lost"
    assert response.json()["run"]["id"] == run_id


def test_heartbeat__on_a_cancelled_run_is_409_run_cancelled(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    api.post(f"/runs/{run_id}/cancel", json={})

    response = api.post(f"/runs/{run_id}/heartbeat", json={"leaseOwner": owner})

    assert response.status_code == 409
    assert response.json()["code"] == "run_cancelled"


def test_complete_run__sets_the_result_and_clears_the_lease(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    response = api.post(f"/runs/{run_id}/complete", json={"result": {"ok": True}})

    assert response.status_code == 200
    run = response.json()["run"]
    assert (run["status"], run["result"], run["leaseOwner"], run["leaseExpiresAt"]) == (
        "completed",
        {"ok": True},
        None,
        None,
    )
    assert TIMESTAMP.match(run["completedAt"])
    assert event_types(run_id)[-1] == "run.completed"


def test_complete_run__twice_keeps_the_first_result_and_emits_one_event(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.post(f"/runs/{run_id}/complete", json={"result": "first"})

    response = api.post(f"/runs/{run_id}/complete", json={"result": "second"})

    assert response.status_code == 200
    assert response.json()["run"]["result"] == "first"
    assert api.get(f"/runs/{run_id}").json()["run"]["result"] == "first"
    assert event_types(run_id).count("run.completed") == 1


def test_fail_run__after_complete_leaves_it_completed(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.post(f"/runs/{run_id}/complete", json={"result": 1})

    response = api.post(f"/runs/{run_id}/fail", json={"error": {"message": "late"}})

    assert response.status_code == 200
    assert response.json()["requeued"] is False
    run = response.json()["run"]
    assert (run["status"], run["result"], run["error"]) == ("completed", 1, None)
    assert "run.failed" not in event_types(run_id)


def test_fail_run__marks_a_running_run_failed(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    response = api.post(f"/runs/{run_id}/fail", json={"error": {"name": "E", "message": "boom"}, "failureClass": "x"})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"run", "requeued"}
    assert (body["run"]["status"], body["run"]["error"], body["run"]["failureClass"]) == (
        "failed",
        {"name": "E", "message": "boom"},
        "x",
    )
    assert body["requeued"] is False


def test_complete_run__on_a_cancelled_run_is_200_and_changes_nothing(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    cancelled = api.post(f"/runs/{run_id}/cancel", json={"reason": "stop"}).json()["run"]
    before = event_types(run_id)

    response = api.post(f"/runs/{run_id}/complete", json={"result": 1})

    assert response.status_code == 200
    assert response.json()["run"] == cancelled
    assert event_types(run_id) == before


def test_cancel_run__twice_emits_one_event_and_keeps_the_first_reason(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    first = api.post(f"/runs/{run_id}/cancel", json={"reason": "first", "actor": "me"})
    second = api.post(f"/runs/{run_id}/cancel", json={"reason": "second"})

    assert first.status_code == second.status_code == 200
    run = second.json()["run"]
    assert (run["status"], run["cancelReason"], run["cancelActor"], run["leaseOwner"]) == (
        "cancelled",
        "first",
        "me",
        None,
    )
    assert_timestamps(run)
    assert run["cancelledAt"] == run["completedAt"]
    assert event_types(run_id).count("run.cancelled") == 1
    assert Event.objects.get(run_id=run_id, type="run.cancelled").payload == {"reason": "first", "actor": "me"}


def test_cancel_run__of_a_completed_run_is_409(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.post(f"/runs/{run_id}/complete", json={"result": 1})

    response = api.post(f"/runs/{run_id}/cancel", json={})

    assert response.status_code == 409
    assert response.json()["code"] == "run_completed"
    assert response.json()["run"]["status"] == "completed"
    assert "run.cancelled" not in event_types(run_id)


def test_create_child__is_idempotent_by_edge_name(api: httpx.Client) -> None:
    parent = create(api)

    first = api.post(f"/runs/{parent['id']}/children", json={"name": "e1", "workflowName": "child", "input": 1})
    again = api.post(f"/runs/{parent['id']}/children", json={"name": "e1", "workflowName": "other", "input": 2})

    assert first.status_code == again.status_code == 200
    assert set(first.json()) == {"run", "edge", "created"}
    assert (first.json()["created"], again.json()["created"]) == (True, False)
    child = first.json()["run"]
    assert again.json()["run"]["id"] == child["id"]
    assert child["metadata"] == {"parentRunId": parent["id"], "parentEdgeName": "e1"}
    edge = first.json()["edge"]
    assert (edge["parentRunId"], edge["childRunId"], edge["name"], edge["edgeType"]) == (
        parent["id"],
        child["id"],
        "e1",
        "child",
    )
    assert event_types(parent["id"]).count("run.child.created") == 1


# --- steps ----------------------------------------------------------------------------------------


def test_step_begin__first_begin_executes_with_step_id_and_lease_owner(api: httpx.Client) -> None:
    run_id, owner = begun(api)

    body = step_begin(api, run_id, input={"q": 1}, options={"sideEffects": ["write"]}, leaseOwner=owner)

    assert set(body) == {"action", "step", "leaseOwner"}
    assert body["action"] == "execute"
    assert body["leaseOwner"] == owner
    step = body["step"]
    assert set(step) == STEP_KEYS
    assert step["id"].startswith("step_")
    assert (step["status"], step["attempt"], step["leaseOwner"], step["input"]) == ("running", 1, owner, {"q": 1})
    assert step["resumeContract"]["replay"] == "manual"
    assert_timestamps(step)


def test_step_begin__without_a_lease_owner_generates_one(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    body = step_begin(api, run_id, input=None, options={})

    assert body["action"] == "execute"
    assert isinstance(body["leaseOwner"], str)
    assert body["step"]["leaseOwner"] == body["leaseOwner"]
    assert body["step"]["input"] == {}


def test_step_begin__a_completed_step_returns_its_output_key_even_when_null(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step = step_begin(api, run_id, leaseOwner=owner)["step"]
    api.post(f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": owner, "output": None})

    body = step_begin(api, run_id, leaseOwner="someone-else")

    assert set(body) == {"action", "step", "output"}
    assert body["action"] == "return"
    assert body["output"] is None
    assert body["step"]["status"] == "completed"


def test_step_begin__a_completed_step_returns_the_stored_output(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step = step_begin(api, run_id, leaseOwner=owner)["step"]
    done = api.post(f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": owner, "output": [1, {"a": 2}]})

    body = step_begin(api, run_id, leaseOwner=owner)

    assert done.status_code == 200
    assert (done.json()["step"]["status"], done.json()["step"]["leaseOwner"]) == ("completed", None)
    assert (body["action"], body["output"], body["step"]["output"]) == ("return", [1, {"a": 2}], [1, {"a": 2}])


def test_step_begin__another_input_hash_is_input_mismatch_with_both_hashes(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step_begin(api, run_id, input_hash="h1", leaseOwner=owner)

    body = step_begin(api, run_id, input_hash="h2", leaseOwner=owner)

    assert set(body) == {"action", "step", "expectedInputHash", "actualInputHash"}
    assert (body["action"], body["expectedInputHash"], body["actualInputHash"]) == ("input_mismatch", "h1", "h2")


def test_step_begin__a_live_step_lease_of_another_owner_is_locked(api: httpx.Client) -> None:
    run_id = create(api)["id"]  # not leased: steps are fenced by their own leases only
    step_begin(api, run_id, leaseOwner="first")

    body = step_begin(api, run_id, leaseOwner="second")

    assert set(body) == {"action", "step"}
    assert body["action"] == "locked"
    assert body["step"]["leaseOwner"] == "first"


def test_step_begin__a_caller_without_an_owner_sees_a_leased_step_locked(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step_begin(api, run_id, leaseOwner=owner)

    body = step_begin(api, run_id)

    assert body["action"] == "locked"


def test_step_begin__an_owner_who_does_not_hold_the_live_run_lease_is_409_lease_lost(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step_begin(api, run_id, leaseOwner=owner)
    before = event_types(run_id)

    existing = api.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": "zombie"})
    new = api.post(f"/runs/{run_id}/steps/begin", json={"name": "t", "inputHash": "h", "leaseOwner": "zombie"})

    assert existing.status_code == new.status_code == 409
    assert existing.json()["code"] == new.json()["code"] == "lease_lost"
    assert event_types(run_id) == before


def test_step_begin__on_a_cancelled_run_is_just_action_cancelled(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step_begin(api, run_id, leaseOwner=owner)
    api.post(f"/runs/{run_id}/cancel", json={})

    assert step_begin(api, run_id, leaseOwner=owner) == {"action": "cancelled"}
    assert step_begin(api, run_id, name="new", leaseOwner=owner) == {"action": "cancelled"}


def test_step_begin__same_owner_re_begin_of_a_failed_retryable_step_executes_again(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step = step_begin(api, run_id, leaseOwner=owner)["step"]
    failed = api.post(
        f"/runs/{run_id}/steps/{step['id']}/fail",
        json={"leaseOwner": owner, "error": {"message": "x"}, "retryable": True, "resumeDecision": "auto_retry"},
    )

    body = step_begin(api, run_id, leaseOwner=owner)

    assert failed.status_code == 200
    assert failed.json()["step"]["status"] == "failed_retryable"
    assert (body["action"], body["step"]["id"], body["step"]["attempt"]) == ("execute", step["id"], 2)
    assert body["step"]["status"] == "running"
    assert event_types(run_id).count("step.started") == 2


@pytest.mark.parametrize(
    ("options", "body", "status", "decision"),
    [
        ({"replay": "manual"}, {}, "manual_review", "manual_review"),
        ({"replay": "never"}, {}, "failed", "fail_hard"),
        ({}, {}, "failed", "safe_replay"),
        ({"replay": "never"}, {"retryable": True}, "failed_retryable", "auto_retry"),
        ({}, {"resumeDecision": "manual_review"}, "manual_review", "manual_review"),
    ],
)
def test_step_fail__classifies_when_the_client_sends_no_decision(
    api: httpx.Client, options: dict[str, Any], body: dict[str, Any], status: str, decision: str
) -> None:
    run_id, owner = begun(api)
    step = step_begin(api, run_id, leaseOwner=owner, options=options)["step"]

    response = api.post(f"/runs/{run_id}/steps/{step['id']}/fail", json={"leaseOwner": owner, "error": "e", **body})

    assert response.status_code == 200
    assert (response.json()["step"]["status"], response.json()["step"]["leaseOwner"]) == (status, None)
    event = Event.objects.get(run_id=run_id, type="step.failed")
    assert (event.payload["resumeDecision"], event.payload["error"]) == (decision, "e")


def test_step_complete__a_second_complete_is_409_lease_lost(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    step = step_begin(api, run_id, leaseOwner=owner)["step"]
    api.post(f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": owner, "output": 1})

    response = api.post(f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": owner, "output": 2})

    assert response.status_code == 409
    assert response.json()["code"] == "lease_lost"
    assert step_begin(api, run_id, leaseOwner=owner)["output"] == 1


def test_list_steps__returns_the_runs_steps_in_creation_order(api: httpx.Client) -> None:
    run_id, owner = begun(api)
    for name in ("a", "b", "c"):
        step_begin(api, run_id, name=name, leaseOwner=owner)

    response = api.get(f"/runs/{run_id}/steps")

    assert response.status_code == 200
    assert [s["name"] for s in response.json()["steps"]] == ["a", "b", "c"]


# --- gates ----------------------------------------------------------------------------------------


def test_gate_begin__opens_a_pending_gate_and_waits(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    body = gate_begin(api, run_id, data={"amount": 5}, capability=None, channels=[])

    assert set(body) == {"action", "gate"}
    assert body["action"] == "wait"
    gate = body["gate"]
    assert gate["id"].startswith("gate_")
    assert (gate["name"], gate["status"], gate["decision"], gate["actor"]) == ("g", "pending", None, None)
    assert (gate["data"], gate["capability"], gate["decisionPayload"]) == ({"amount": 5}, None, None)
    assert re.match(r"^[0-9a-f]{32}$", gate["resolveToken"])
    assert gate["resolveUrl"].endswith(f"/runs/{run_id}/gates/{gate['id']}/resolve")
    assert_timestamps(gate)


def test_gate_begin__again_returns_the_stored_gate_unchanged_without_an_event(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    first = gate_begin(api, run_id, data={"v": 1})["gate"]

    again = gate_begin(api, run_id, data={"v": 2}, prompt="changed?")["gate"]

    assert again == first
    assert event_types(run_id).count("gate.created") == 1


def test_gate_begin__stores_timeout_ms_and_the_deadline(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    gate = gate_begin(api, run_id, timeoutMs=60_000)["gate"]

    assert gate["timeoutMs"] == 60_000
    assert TIMESTAMP.match(gate["timeoutAt"])
    delta = parse_ts(gate["timeoutAt"]) - parse_ts(gate["createdAt"])
    assert dt.timedelta(seconds=59) < delta < dt.timedelta(seconds=61)
    assert api.get(f"/runs/{run_id}/gates/{gate['id']}").json()["gate"]["timeoutMs"] == 60_000


def test_gate_begin__on_a_cancelled_run_is_409_run_cancelled(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    gate_begin(api, run_id)
    api.post(f"/runs/{run_id}/cancel", json={})

    response = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "ok?"})

    assert response.status_code == 409
    assert response.json()["code"] == "run_cancelled"


def test_gate_poll__includes_the_run_status(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    gate = gate_begin(api, run_id)["gate"]

    running = api.get(f"/runs/{run_id}/gates/{gate['id']}")
    api.post(f"/runs/{run_id}/cancel", json={})
    cancelled = api.get(f"/runs/{run_id}/gates/{gate['id']}")

    assert running.status_code == cancelled.status_code == 200
    assert set(running.json()) == {"gate", "runStatus"}
    assert (running.json()["runStatus"], running.json()["gate"]["status"]) == ("running", "pending")
    assert cancelled.json()["runStatus"] == "cancelled"


def test_gate_resolve__records_the_decision_once(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    gate = gate_begin(api, run_id)["gate"]
    url = f"/runs/{run_id}/gates/{gate['id']}/resolve"

    first = api.post(
        url, json={"token": gate["resolveToken"], "decision": "approved", "actor": "ann", "payload": {"n": 1}}
    )
    second = api.post(url, json={"token": gate["resolveToken"], "decision": "rejected"})

    assert first.status_code == 200
    resolved = first.json()["gate"]
    assert (resolved["status"], resolved["decision"], resolved["actor"], resolved["decisionPayload"]) == (
        "approved",
        "approved",
        "ann",
        {"n": 1},
    )
    assert TIMESTAMP.match(resolved["resolvedAt"])
    assert second.status_code == 409
    assert second.json()["code"] == "gate_already_resolved"
    polled = api.get(f"/runs/{run_id}/gates/{gate['id']}").json()["gate"]
    assert polled["decision"] == "approved"
    assert event_types(run_id).count("gate.resolved") == 1


def test_get_run__gates_are_oldest_first(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    names = ["first", "second", "third"]
    for name in names:
        gate_begin(api, run_id, name=name)

    gates = api.get(f"/runs/{run_id}").json()["gates"]

    assert [g["name"] for g in gates] == names


# --- usage ----------------------------------------------------------------------------------------


def test_usage__cost_and_quantity_are_json_numbers(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    response = api.post(
        f"/runs/{run_id}/usage",
        json={"kind": "llm", "model": "m", "costUsd": 0.0123, "quantity": 2.5, "inputTokens": 10, "outputTokens": 5},
    )

    assert response.status_code == 200
    usage = response.json()["usage"]
    assert usage["id"].startswith("use_")
    assert (usage["costUsd"], usage["quantity"]) == (0.0123, 2.5)
    assert isinstance(usage["costUsd"], float)
    assert isinstance(usage["quantity"], float)
    assert '"costUsd":0.0123' in response.text
    assert usage["totalTokens"] == 15
    assert_timestamps(usage)
    listed = api.get(f"/runs/{run_id}").json()["usage"]
    assert (listed[0]["costUsd"], listed[0]["quantity"]) == (0.0123, 2.5)


@pytest.mark.parametrize(
    ("tokens", "total"),
    [
        ({"inputTokens": 7, "outputTokens": 3}, 10),
        ({"inputTokens": 7}, 7),
        ({"outputTokens": 3}, 3),
        ({"inputTokens": 7, "outputTokens": 3, "totalTokens": 100}, 100),
        ({}, None),
    ],
)
def test_usage__total_tokens_defaults_to_input_plus_output(
    api: httpx.Client, tokens: dict[str, int], total: int | None
) -> None:
    run_id, _ = begun(api)

    usage = api.post(f"/runs/{run_id}/usage", json=tokens).json()["usage"]

    assert usage["totalTokens"] == total
    assert usage["kind"] == "custom"


def test_usage__integral_cost_is_a_json_number(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    usage = api.post(f"/runs/{run_id}/usage", json={"costUsd": 2, "quantity": -3}).json()["usage"]

    assert (usage["costUsd"], usage["quantity"]) == (2, -3)


# --- state and snapshots --------------------------------------------------------------------------


def test_state_put__replaces_the_value_and_bumps_the_version(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    first = api.put(f"/runs/{run_id}/state", json={"value": {"a": 1, "b": 2}})
    second = api.put(f"/runs/{run_id}/state", json={"value": {"c": 3}})

    assert first.status_code == second.status_code == 200
    assert set(first.json()) == {"state"}
    assert first.json()["state"]["version"] == 1
    state = second.json()["state"]
    assert (state["runId"], state["value"], state["version"]) == (run_id, {"c": 3}, 2)
    assert TIMESTAMP.match(state["updatedAt"])
    assert api.get(f"/runs/{run_id}").json()["state"] == state


def test_state_put__missing_or_null_value_is_an_empty_object(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    assert api.put(f"/runs/{run_id}/state", json={}).json()["state"]["value"] == {}
    assert api.put(f"/runs/{run_id}/state", json={"value": None}).json()["state"]["value"] == {}


@pytest.mark.parametrize(
    ("old", "patch", "merged"),
    [
        ({"a": 1, "b": {"x": 1}}, {"b": {"y": 2}, "c": 3}, {"a": 1, "b": {"y": 2}, "c": 3}),
        ({"a": 1}, [1], [{"a": 1}, 1]),
        ([1, 2], [3], [1, 2, 3]),
        ([1], "x", [1, "x"]),
    ],
)
def test_state_patch__merges_like_jsonb_concatenation(api: httpx.Client, old: Any, patch: Any, merged: Any) -> None:
    run_id, _ = begun(api)
    api.put(f"/runs/{run_id}/state", json={"value": old})

    response = api.patch(f"/runs/{run_id}/state", json={"value": patch})

    assert response.status_code == 200
    assert (response.json()["state"]["value"], response.json()["state"]["version"]) == (merged, 2)
    last = api.get(f"/runs/{run_id}/state/versions").json()["stateVersions"][-1]
    assert (last["value"], last["patch"]) == (merged, patch)
    event = Event.objects.filter(run_id=run_id, type="state.updated").order_by("-seq").first()
    assert event is not None
    assert (event.payload["value"], event.payload["patch"]) == (merged, patch)


def test_state_patch__first_write_stores_the_value(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    response = api.patch(f"/runs/{run_id}/state", json={"value": {"a": 1}})

    assert response.json()["state"] == {**response.json()["state"], "value": {"a": 1}, "version": 1}


def test_state_save__labels_the_current_value_as_a_milestone(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 1}})

    response = api.post(f"/runs/{run_id}/state/save", json={"label": "v1", "reason": "why"})

    assert response.status_code == 200
    version = response.json()["stateVersion"]
    assert version["id"].startswith("ver_")
    assert (version["value"], version["patch"], version["label"], version["reason"]) == ({"a": 1}, None, "v1", "why")
    assert (version["importance"], version["version"]) == ("milestone", 2)
    assert_timestamps(version)
    assert api.get(f"/runs/{run_id}").json()["state"]["version"] == 1  # the live value is untouched


def test_state_versions__filters_by_label_and_stream(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 1}})
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 2}, "label": "two"})
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 3}, "stream": "notes"})
    versions = f"/runs/{run_id}/state/versions"

    everything = api.get(versions).json()["stateVersions"]
    labeled = api.get(versions, params={"labeled": "true"}).json()["stateVersions"]
    not_true = api.get(versions, params={"labeled": "false"}).json()["stateVersions"]
    notes = api.get(versions, params={"stream": "notes"}).json()["stateVersions"]

    assert [(v["value"], v["version"]) for v in everything] == [({"a": 3}, 1), ({"a": 1}, 1), ({"a": 2}, 2)]
    assert [v["label"] for v in labeled] == ["two"]
    assert not_true == everything
    assert [v["value"] for v in notes] == [{"a": 3}]
    assert api.get(f"/runs/{run_id}").json()["state"]["value"] == {"a": 3}  # stream only picks the history


def test_snapshots__are_milestones_on_a_target_stream(api: httpx.Client) -> None:
    run_id, _ = begun(api)

    default = api.post(f"/runs/{run_id}/snapshots", json={"label": "s1", "state": {"k": 1}})
    targeted = api.post(
        f"/runs/{run_id}/snapshots", json={"label": "s2", "state": None, "target": {"type": "report", "id": "r1"}}
    )

    assert default.status_code == targeted.status_code == 200
    snap = default.json()["snapshot"]
    assert (snap["label"], snap["value"], snap["importance"], snap["version"]) == ("s1", {"k": 1}, "milestone", 1)
    assert targeted.json()["snapshot"]["value"] == {}
    streams = {s["name"]: s for s in api.get(f"/runs/{run_id}").json()["stateStreams"]}
    assert set(streams) == {f"run:{run_id}", "report:r1"}
    assert (streams["report:r1"]["targetType"], streams["report:r1"]["targetId"]) == ("report", "r1")
    assert streams[f"run:{run_id}"]["id"] == snap["streamId"]


def test_snapshots__list_every_labeled_version_newest_first(api: httpx.Client) -> None:
    run_id, _ = begun(api)
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 1}, "label": "put"})
    api.put(f"/runs/{run_id}/state", json={"value": {"a": 2}})
    api.post(f"/runs/{run_id}/snapshots", json={"label": "snap"})
    api.post(f"/runs/{run_id}/state/save", json={"label": "saved"})

    response = api.get(f"/runs/{run_id}/snapshots")

    assert response.status_code == 200
    assert [s["label"] for s in response.json()["snapshots"]] == ["saved", "snap", "put"]


# --- transport --------------------------------------------------------------------------------------


def test_preflight__is_204_before_auth_with_the_allow_headers(api: httpx.Client) -> None:
    response = api.options(
        "/runs",
        headers={
            "Origin": "http://studio.local",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == "GET,HEAD,PUT,POST,DELETE,PATCH"
    assert response.headers["access-control-allow-headers"] == "authorization,content-type"
    assert response.headers["vary"] == "Access-Control-Request-Headers"


def test_responses__carry_the_cors_origin_header(api: httpx.Client) -> None:
    assert api.get("/runs").headers["access-control-allow-origin"] == "*"
    assert api.get("/runs/nope").headers["access-control-allow-origin"] == "*"


def test_unknown_route__is_404_json(api: httpx.Client) -> None:
    response = api.get("/runs/x/y/z")

    assert response.status_code == 404
    assert response.json() == {"error": "not found", "code": "not_found"}


def test_get_run__an_unknown_id_is_404_json(api: httpx.Client) -> None:
    response = api.get("/runs/run_00000000000000000000000000000000")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert isinstance(response.json()["error"], str)
