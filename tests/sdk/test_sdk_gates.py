from __future__ import annotations

import httpx
import pytest

from tests.sdk.fake_server import FakeServer
from tidebase import GateDecision, GateTimeout, RunCancelled, RunContext, Tidebase


def test_gate__long_polls_until_resolved(tide: Tidebase, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake answers long-polls at once, so make them look like they waited.
    clock = iter(range(0, 10_000, 30))
    monkeypatch.setattr("tidebase._context.time.monotonic", lambda: float(next(clock)))
    monkeypatch.setattr("tidebase._context.time.sleep", lambda s: pytest.fail("long-poll must not sleep"))
    fake.resolve_gate_after_polls = 3

    decision = tide.run("wf", lambda run, input: run.gate("ship", "Ship it?"))
    assert isinstance(decision, GateDecision)
    assert decision.approved
    assert decision.actor == "ops"
    assert decision.payload == {"via": "test"}
    polls = fake.calls("GET", "/gates/gate_")
    assert len(polls) == 3
    assert all(p.url.params["waitMs"] == "25000" for p in polls)


def test_gate__falls_back_to_polling_when_wait_is_ignored(
    tide: Tidebase, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("tidebase._context.time.sleep", slept.append)
    fake.resolve_gate_after_polls = 3
    decision = tide.run("wf", lambda run, input: run.gate("ship", "Ship it?", poll_s=0.25))
    assert decision.approved
    assert slept == [0.25, 0.25]
    assert tide._long_polls_gates is False


def test_gate__already_resolved_returns_without_polling(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.inject(
        "POST",
        "/gates/begin$",
        httpx.Response(
            200,
            json={
                "action": "return",
                "gate": {
                    "id": "gate_1",
                    "name": "g",
                    "status": "rejected",
                    "decision": "rejected",
                    "actor": "a",
                    "decisionPayload": {},
                },
            },
        ),
    )
    decision = tide.run("wf", lambda r, i: r.gate("g", "ok?"), run_id=run["id"])
    assert not decision.approved
    assert decision.rejected
    assert not fake.calls("GET", "/gates/")


def test_gate__timeout(tide: Tidebase, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tidebase._context.time.sleep", lambda s: None)
    with pytest.raises(GateTimeout) as caught:
        tide.run("wf", lambda r, i: r.gate("g", "ok?", timeout_s=0.05, poll_s=0.01))
    assert isinstance(caught.value, TimeoutError)
    begin = fake.calls("POST", "/gates/begin$")[0]
    assert b'"timeoutMs": 50' in begin.content


def test_gate__cancelled_run_status_raises(tide: Tidebase, fake: FakeServer) -> None:
    def workflow(run: RunContext, input: object) -> object:
        gate = run.gates.begin("g", "ok?")
        assert gate["status"] == "pending"
        assert gate["gateId"].startswith("gate_")
        fake.runs[run.run_id]["status"] = "cancelled"
        return run.gate("g", "ok?")

    with pytest.raises(RunCancelled):
        tide.run("wf", workflow)


def test_gate__cancelled_while_waiting(tide: Tidebase, fake: FakeServer) -> None:
    def cancel_then_answer(request: httpx.Request) -> httpx.Response:
        fake.runs[request.url.path.split("/")[2]]["status"] = "cancelled"
        return fake.handle(request)

    fake.inject("GET", "/gates/gate_", cancel_then_answer)
    with pytest.raises(RunCancelled):
        tide.run("wf", lambda r, i: r.gate("g", "ok?"))
    assert len(fake.calls("GET", "/gates/gate_")) == 2  # injected + the real answer it relayed
    assert not fake.calls("POST", "/runs/run_\\w+/fail$")
