from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest

from tests.sdk.fake_server import FakeServer
from tidebase import LeaseLost, RunCancelled, RunContext, Tidebase


def body(request: Any) -> Any:
    return json.loads(request.content)


def test_session__heartbeats_in_a_thread_and_reports_lease_loss(tide: Tidebase, fake: FakeServer) -> None:
    lost = threading.Event()
    errors: list[BaseException] = []

    def on_lost(error: BaseException) -> None:
        errors.append(error)
        lost.set()

    session = tide.runs.attach("gateway", heartbeat_s=0.01, on_lease_lost=on_lost)
    assert session.step("greet", lambda: "hi") == "hi"
    fake.runs[session.run_id]["leaseOwner"] = "thief"
    assert lost.wait(60)  # returns when the heartbeat reports the loss; 60 s only bounds a hang
    assert isinstance(errors[0], LeaseLost)
    assert not session.heartbeating
    session.complete({"ok": True})
    assert fake.runs[session.run_id]["result"] == {"ok": True}


def test_session__context_manager_fails_the_run_on_error(tide: Tidebase, fake: FakeServer) -> None:
    with pytest.raises(KeyError), tide.runs.attach("gateway", heartbeat_s=None) as session:
        raise KeyError("boom")
    assert fake.runs[session.run_id]["status"] == "failed"


def test_session__heartbeat_sees_cancellation(tide: Tidebase, fake: FakeServer) -> None:
    session = tide.runs.attach("gateway", heartbeat_s=None)
    tide.runs.cancel(session.run_id, reason="stop", actor="me")
    assert body(fake.calls("POST", "/cancel$")[0]) == {"reason": "stop", "actor": "me"}
    with pytest.raises(RunCancelled):
        session.heartbeat()


def test_enqueue_and_work(tide: Tidebase, fake: FakeServer) -> None:
    seen: list[Any] = []

    @tide.workflow("report")
    def report(run: RunContext, input: Any) -> Any:
        seen.append(input)
        return run.step("write", lambda: {"pages": input["n"]})

    answer = tide.enqueue(
        "report",
        queue="reports/eu",
        input={"n": 3},
        delay_s=1.5,
        run_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        deadline_s=60,
    )
    tide.enqueue("nobody-home", input={})
    enqueue = fake.calls("POST", "/enqueue$")[0]
    assert enqueue.url.raw_path == b"/queues/reports%2Feu/enqueue"
    assert body(enqueue) == {
        "workflowName": "report",
        "input": {"n": 3},
        "delayMs": 1500,
        "runAt": "2026-01-01T00:00:00.000Z",
        "deadlineMs": 60000,
    }
    rounds = iter([False, True])
    tide.work(["reports/eu"], limit=10, stop=lambda: next(rounds), poll_s=0)
    assert seen == [{"n": 3}]
    assert fake.runs[answer["run"]["id"]]["result"] == {"pages": 3}
    orphan = next(r for r in fake.runs.values() if r["workflowName"] == "nobody-home")
    assert orphan["status"] == "failed"
    assert "no workflow registered" in orphan["error"]["message"]


def test_child_and_fanout(tide: Tidebase, fake: FakeServer) -> None:
    def child(run: RunContext, input: Any) -> Any:
        return run.step("work", lambda: input["i"] * 10, input=input)

    def parent(run: RunContext, input: Any) -> Any:
        single = run.child("child-wf", child, name="only", input={"i": 1})
        many = run.fanout("batch", [{"name": f"c{i}", "workflow": child, "input": {"i": i}} for i in range(3)])
        return [single, many]

    assert tide.run("parent", parent) == [10, [0, 10, 20]]
    edges = [body(r) for r in fake.calls("POST", "/children$")]
    assert edges[0] == {"name": "only", "workflowName": "child-wf", "input": {"i": 1}, "edgeType": "child"}
    assert {e["edgeType"] for e in edges[1:]} == {"fanout"}
    assert all(e["edgeMetadata"] == {"fanout": "batch"} for e in edges[1:])
    join = next(b for b in map(body, fake.calls("POST", "/steps/begin$")) if b["name"] == "join:batch")
    assert join["input"] == {"fanout": "batch", "join": "all", "children": ["c0", "c1", "c2"]}
    assert join["options"]["replay"] == "auto"


def test_state_usage_snapshots_bodies(tide: Tidebase, fake: FakeServer) -> None:
    def workflow(run: RunContext, input: Any) -> Any:
        run.state.set({"phase": "a"}, label="start", created_by="me")
        run.state_patch({"n": 1})
        run.usage_record(kind="llm", input_tokens=3, output_tokens=4, cost_usd=__import__("decimal").Decimal("0.25"))
        with pytest.raises(TypeError, match="unexpected usage"):
            run.usage.record(tokens=1)
        return None

    tide.run("wf", workflow)
    put, patch = fake.calls("PUT", "/state$")[0], fake.calls("PATCH", "/state$")[0]
    assert body(put) == {"value": {"phase": "a"}, "label": "start", "createdBy": "me"}
    assert body(patch) == {"value": {"n": 1}}
    assert fake.usage == [{"kind": "llm", "inputTokens": 3, "outputTokens": 4, "costUsd": 0.25}]
