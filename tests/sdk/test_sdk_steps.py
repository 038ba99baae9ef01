from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pydantic
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from tests.sdk.fake_server import FakeServer
from tidebase import (
    AsyncStepInSyncClient,
    CheckpointDict,
    InputMismatch,
    LeaseLost,
    RunCancelled,
    RunContext,
    StepLocked,
    StepOutputNotSerializable,
    Tidebase,
    hash_input,
)


class Summary(pydantic.BaseModel):
    title: str
    score: int


@dataclasses.dataclass
class Pair:
    left: int
    right: int


def body(request: httpx.Request) -> dict[str, object]:
    data: dict[str, object] = json.loads(request.content)
    return data


def test_step__first_run_returns_value_and_checkpoints_json(tide: Tidebase, fake: FakeServer) -> None:
    summary = Summary(title="t", score=3)

    def workflow(run: RunContext, input: object) -> object:
        return run.step("summarize", lambda: summary, input={"doc": 1}, side_effects=["read"], retries=2)

    assert tide.run("wf", workflow) is summary
    (begin,) = fake.calls("POST", "/steps/begin$")
    assert body(begin)["inputHash"] == hash_input({"doc": 1})
    assert body(begin)["options"] == {"retries": 2, "sideEffects": ["read"]}
    (complete,) = fake.calls("POST", "/steps/step_\\w+/complete$")
    assert body(complete)["output"] == {"title": "t", "score": 3}
    run_complete = fake.calls("POST", "/runs/run_\\w+/complete$")[0]
    assert body(run_complete) == {"result": {"title": "t", "score": 3}}


def test_step__replay_returns_stored_data_without_calling_fn(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.supports_step_listing = False
    fake.add_completed_step(run["id"], "triage", hash_input(None), {"output": {"title": "t", "score": 3}})

    def workflow(run: RunContext, input: object) -> object:
        result = run.step("triage", lambda: pytest.fail("must not re-run"))
        return result.output.title  # attribute access works on the checkpoint too

    assert tide.run("wf", workflow, run_id=run["id"]) == "t"


def test_step__returns_revalidates_on_both_paths(tide: Tidebase, fake: FakeServer) -> None:
    def workflow(run: RunContext, input: object) -> object:
        first = run.step("s", lambda: {"title": "t", "score": "7"}, returns=Summary)
        pair = run.step("p", lambda: Pair(1, 2), returns=Pair)
        return [first, pair]

    first, pair = tide.run("wf", workflow)
    assert first == Summary(title="t", score=7)
    assert pair == Pair(1, 2)
    run_id = next(iter(fake.runs))
    fake.runs[run_id]["status"] = "running"
    replayed, replayed_pair = tide.run("wf", workflow, run_id=run_id)
    assert replayed == Summary(title="t", score=7)
    assert replayed_pair == Pair(1, 2)


def test_step__pydantic_ai_result_is_checkpointed_with_its_output(tide: Tidebase, fake: FakeServer) -> None:
    agent = Agent(TestModel(), output_type=Summary)

    def workflow(run: RunContext, input: object) -> object:
        result = run.step("triage", lambda: agent.run_sync("report"), input={"report": "r"})
        return result.output

    live = tide.run("wf", workflow)
    assert isinstance(live, Summary)
    stored = body(fake.calls("POST", "/steps/step_\\w+/complete$")[0])["output"]
    assert stored == {"output": live.model_dump(mode="json")}
    run_id = next(iter(fake.runs))
    fake.runs[run_id]["status"] = "running"
    replayed = tide.run("wf", workflow, run_id=run_id)
    assert isinstance(replayed, CheckpointDict)
    assert replayed == live.model_dump(mode="json")


def test_step__unencodable_output_fails_hard_without_retry(tide: Tidebase, fake: FakeServer) -> None:
    calls: list[int] = []

    class Opaque:
        pass

    def expensive() -> object:
        calls.append(1)
        return {"result": Opaque()}

    with pytest.raises(StepOutputNotSerializable, match=r"result\.output") as caught:
        tide.run("wf", lambda run, input: run.step("model-call", expensive, retries=3))
    assert isinstance(caught.value, TypeError)
    assert calls == [1]
    (fail,) = fake.calls("POST", "/steps/step_\\w+/fail$")
    assert body(fail)["retryable"] is False
    assert body(fail)["resumeDecision"] == "fail_hard"
    assert not fake.calls("POST", "/steps/step_\\w+/complete$")
    assert fake.runs[next(iter(fake.runs))]["status"] == "failed"


def test_step__retries_then_classifies_final_failure(tide: Tidebase, fake: FakeServer) -> None:
    attempts: list[int] = []

    def flaky() -> object:
        attempts.append(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tide.run("wf", lambda run, input: run.step("write", flaky, retries=2, side_effects=["crm"]))
    assert len(attempts) == 3
    fails = [body(r) for r in fake.calls("POST", "/steps/step_\\w+/fail$")]
    assert [(f["retryable"], f["resumeDecision"]) for f in fails] == [
        (True, "auto_retry"),
        (True, "auto_retry"),
        (False, "manual_review"),
    ]
    assert fails[0]["error"] == {"name": "RuntimeError", "message": "boom"}


def test_step__cancelled_action_raises_and_does_not_fail_the_run(tide: Tidebase, fake: FakeServer) -> None:
    def workflow(run: RunContext, input: object) -> object:
        fake.runs[run.run_id]["status"] = "cancelled"
        return run.step("next", lambda: 1)

    with pytest.raises(RunCancelled):
        tide.run("wf", workflow)
    assert not fake.calls("POST", "/runs/run_\\w+/fail$")


def test_step__input_mismatch_names_both_hashes(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.supports_step_listing = False
    fake.add_completed_step(run["id"], "s", hash_input({"v": 1}), 1)
    with pytest.raises(InputMismatch) as caught:
        tide.run("wf", lambda r, i: r.step("s", lambda: 2, input={"v": 2}), run_id=run["id"])
    assert caught.value.expected_hash == hash_input({"v": 1})
    assert caught.value.actual_hash == hash_input({"v": 2})
    assert isinstance(caught.value, ValueError)


def test_step__locked(tide: Tidebase, fake: FakeServer) -> None:
    fake.inject("POST", "/steps/begin$", httpx.Response(200, json={"action": "locked", "step": {"id": "step_1"}}))
    with pytest.raises(StepLocked):
        tide.run("wf", lambda r, i: r.step("s", lambda: 1))


def test_resume_cache__k_completed_steps_cost_one_request(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    for k in range(5):
        fake.add_completed_step(run["id"], f"s{k}", hash_input({"k": k}), {"k": k})
    ran: list[str] = []

    def workflow(run: RunContext, input: object) -> object:
        outs = [run.step(f"s{k}", lambda: ran.append("old"), input={"k": k}) for k in range(5)]
        outs.append(run.step("new", lambda: ran.append("new") or "fresh"))
        return outs

    before = len(fake.requests)
    result = tide.run("wf", workflow, run_id=run["id"])
    assert result == [{"k": k} for k in range(5)] + ["fresh"]
    assert ran == ["new"]
    paths = [(r.method, r.url.path.rsplit("/", 1)[-1]) for r in fake.requests[before:]]
    assert paths == [
        ("GET", run["id"]),
        ("POST", "begin"),
        ("GET", "steps"),
        ("POST", "begin"),
        ("POST", "complete"),
        ("POST", "complete"),
    ]
    assert fake.calls("GET", "/steps$")[0].url.params["status"] == "completed"


def test_resume_cache__changed_input_raises_without_a_request(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run()
    fake.add_completed_step(run["id"], "s", hash_input({"v": 1}), 1)
    with pytest.raises(InputMismatch):
        tide.run("wf", lambda r, i: r.step("s", lambda: 2, input={"v": 2}), run_id=run["id"])
    assert not fake.calls("POST", "/steps/begin$")


def test_resume_cache__falls_back_when_the_route_is_missing(tide: Tidebase, fake: FakeServer) -> None:
    fake.supports_step_listing = False
    run = fake.add_run()
    fake.add_completed_step(run["id"], "s", hash_input(None), "stored")
    assert tide.run("wf", lambda r, i: r.step("s", lambda: "new"), run_id=run["id"]) == "stored"
    fake.runs[run["id"]]["status"] = "running"
    tide.run("wf", lambda r, i: r.step("s", lambda: "new"), run_id=run["id"])
    assert len(fake.calls("GET", "/steps$")) == 1  # the 404 is remembered per client
    assert len(fake.calls("POST", "/steps/begin$")) == 2


def test_step_complete__lost_response_then_lease_lost_is_success(tide: Tidebase, fake: FakeServer) -> None:
    real = fake.handle

    def lose_response(request: httpx.Request) -> httpx.Response:
        real(request)  # the server applies the complete...
        raise httpx.ReadError("...but the response never arrives")

    fake.inject("POST", "/steps/step_\\w+/complete$", lose_response)
    assert tide.run("wf", lambda r, i: r.step("s", lambda: {"v": 1})) == {"v": 1}
    # the retry got 409 lease_lost, a re-begin answered "return": success, no failure reported
    assert len(fake.calls("POST", "/steps/begin$")) == 2
    assert not fake.calls("POST", "/fail$")


def test_step_complete__lease_taken_over_raises_lease_lost(tide: Tidebase, fake: FakeServer) -> None:
    def take_over(request: httpx.Request) -> httpx.Response:
        for step in fake.steps[request.url.path.split("/")[2]].values():
            step["leaseOwner"] = "someone-else"
        return httpx.Response(409, json={"error": "step not found or lease lost", "code": "lease_lost"})

    fake.inject("POST", "/steps/step_\\w+/complete$", take_over)
    with pytest.raises(LeaseLost):
        tide.run("wf", lambda r, i: r.step("s", lambda: 1))


def test_sync_client__runs_async_step_functions_without_a_loop(tide: Tidebase) -> None:
    async def fetch() -> int:
        await asyncio.sleep(0)
        return 42

    assert tide.run("wf", lambda r, i: [r.step("a", fetch), r.step("b", lambda: fetch())]) == [42, 42]


def test_sync_client__refuses_awaitables_inside_a_running_loop(tide: Tidebase, fake: FakeServer) -> None:
    async def fetch() -> int:
        return 1

    async def main() -> None:
        with pytest.raises(AsyncStepInSyncClient, match=r"tidebase\.aio"):
            tide.run("wf", lambda r, i: r.step("a", fetch, retries=3))

    asyncio.run(main())
    assert len(fake.calls("POST", "/steps/begin$")) == 1  # fatal: never retried


def test_completed_run__returns_stored_result_without_begin(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run(status="completed")
    run["result"] = {"done": True}
    assert tide.run("wf", lambda r, i: pytest.fail("no"), run_id=run["id"]) == {"done": True}
    assert not fake.calls("POST")


def test_run__workflow_name_mismatch(tide: Tidebase, fake: FakeServer) -> None:
    run = fake.add_run("other")
    with pytest.raises(ValueError, match="belongs to workflow"):
        tide.run("wf", lambda r, i: None, run_id=run["id"])
