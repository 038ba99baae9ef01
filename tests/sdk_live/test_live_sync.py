"""Our sync client (``tidebase.Tidebase``) against a real server: replay, retries, gates,
cancellation, sessions and fencing, JSON round trips, and the cost of a resume."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sdk_live.conftest import (
    FAST_RETRY,
    Crash,
    LoggingTransport,
    RequestLog,
    cancel_run,
    detail,
    pending_gate,
    resolve_gate,
    until_unleased,
    wait_for,
)
from tests.sdk_live.models import (
    EXPECTED_INPUT_JSON,
    EXPECTED_JSON,
    FIELDS,
    STEP_INPUT,
    TicketDC,
    TicketModel,
)
from tidebase import (
    CheckpointDict,
    InputMismatch,
    LeaseLost,
    RunCancelled,
    RunContext,
    Tidebase,
    hash_input,
)

ClientFactory = Callable[..., Tidebase]


@pytest.fixture
def client() -> Iterator[ClientFactory]:
    """Make clients for a server URL; with ``log=`` every request is recorded."""
    made: list[Tidebase] = []

    def make(url: str, log: RequestLog | None = None) -> Tidebase:
        transport = LoggingTransport(log) if log is not None else None
        tide = Tidebase(url, retry=FAST_RETRY, transport=transport)
        made.append(tide)
        return tide

    yield make
    for tide in made:
        tide.close()


def steps_by_name(url: str, run_id: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in detail(url, run_id)["steps"]}


# ---- replay, retries -------------------------------------------------------------------------


def test_replay_never_reexecutes_a_finished_step(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    executed: Counter[str] = Counter()
    fail_before_c = True

    def work(name: str, value: int) -> Callable[[], int]:
        def fn() -> int:
            executed[name] += 1
            return value

        return fn

    def workflow(run: RunContext, input: Any) -> int:
        a = run.step("a", work("a", 1), input={"n": 1})
        b = run.step("b", work("b", 2), input={"n": 2})
        if fail_before_c:
            raise RuntimeError("flaky dependency")
        c = run.step("c", work("c", 3), input={"n": 3})
        return int(a + b + c)

    run_id = tide.runs.create("replay-sync", input={})["id"]
    with pytest.raises(RuntimeError, match="flaky dependency"):
        tide.run("replay-sync", workflow, run_id=run_id)
    assert detail(live_server_url, run_id)["run"]["status"] == "failed"

    fail_before_c = False
    assert tide.run("replay-sync", workflow, run_id=run_id) == 6
    assert executed == {"a": 1, "b": 1, "c": 1}
    steps = steps_by_name(live_server_url, run_id)
    assert {name: (s["status"], s["attempt"]) for name, s in steps.items()} == {
        "a": ("completed", 1),
        "b": ("completed", 1),
        "c": ("completed", 1),
    }

    # A completed run returns its stored result and executes nothing.
    assert tide.run("replay-sync", workflow, run_id=run_id) == 6
    assert executed == {"a": 1, "b": 1, "c": 1}


def test_retries_re_begin_the_step(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"attempt {attempts} failed")
        return "ok"

    run_id = tide.runs.create("retries-sync", input={})["id"]
    result = tide.run("retries-sync", lambda run, _: run.step("call", flaky, retries=2), run_id=run_id)
    assert result == "ok"
    assert attempts == 3
    body = detail(live_server_url, run_id)
    (step,) = body["steps"]
    assert (step["status"], step["attempt"]) == ("completed", 3)
    assert sum(e["type"] == "step.started" for e in body["events"]) == 3
    failed = [e["payload"] for e in body["events"] if e["type"] == "step.failed"]
    assert [(f["retryable"], f["resumeDecision"]) for f in failed] == [(True, "auto_retry")] * 2


def test_retries_exhausted_raise_the_last_error(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    attempts = 0

    def always_fails() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        tide.run("retries-exhausted-sync", lambda run, _: run.step("call", always_fails, retries=1), input={})
    assert attempts == 2


# ---- gates -----------------------------------------------------------------------------------


def approve_when_pending(url: str, run_id: str, decision: str = "approved") -> threading.Thread:
    def approve() -> None:
        gate = wait_for(lambda: pending_gate(url, run_id))
        resolve_gate(url, run_id, gate, decision)

    thread = threading.Thread(target=approve, daemon=True)
    thread.start()
    return thread


def test_gate_decision_replays_after_a_crash(short_lease: str, client: ClientFactory) -> None:
    tide = client(short_lease)
    run_id = tide.runs.create("gate-replay-sync", input={})["id"]
    decisions: list[Any] = []

    def crashing(run: RunContext, input: Any) -> None:
        decisions.append(run.gate("approve-deploy", "Deploy api?"))
        raise Crash

    approver = approve_when_pending(short_lease, run_id)
    with pytest.raises(Crash):
        tide.run("gate-replay-sync", crashing, run_id=run_id)
    approver.join(30)
    assert decisions[0].approved

    log = RequestLog()
    resumed = client(short_lease, log=log)

    def workflow(run: RunContext, input: Any) -> str:
        decision = run.gate("approve-deploy", "Deploy api?")
        return f"{decision.decision} by {decision.actor}"

    result = until_unleased(lambda: resumed.run("gate-replay-sync", workflow, run_id=run_id))
    assert result == "approved by test:operator"
    assert log.matching("GET", "/gates/") == []  # decided already: no waiting, no polling
    gates = detail(short_lease, run_id)["gates"]
    assert [(g["name"], g["decision"]) for g in gates] == [("approve-deploy", "approved")]


def test_gate_returns_promptly_through_the_long_poll(live_server_url: str, client: ClientFactory) -> None:
    log = RequestLog()
    tide = client(live_server_url, log=log)
    run_id = tide.runs.create("gate-latency-sync", input={})["id"]

    def approve_later() -> None:
        gate = wait_for(lambda: pending_gate(live_server_url, run_id))
        wait_for(lambda: log.matching("GET", "/gates/"))  # the waiter's long-poll is on its way
        resolve_gate(live_server_url, run_id, gate)

    threading.Thread(target=approve_later, daemon=True).start()
    # poll_s is tiny: a client that polled instead of long-polling would send many GETs.
    decision = tide.run("gate-latency-sync", lambda run, _: run.gate("ship", "Ship it?", poll_s=0.02), run_id=run_id)
    assert decision.approved
    polls = log.matching("GET", "/gates/")
    assert 1 <= len(polls) <= 3
    assert all("waitMs=" in query for _, _, query in polls)


# ---- cancellation ----------------------------------------------------------------------------


def test_cancel_is_observed_at_the_next_step(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    run_id = tide.runs.create("cancel-step-sync", input={})["id"]
    executed: list[str] = []

    def first() -> int:
        executed.append("first")
        cancel_run(live_server_url, run_id)  # an operator cancels while this step runs
        return 1

    def workflow(run: RunContext, input: Any) -> None:
        run.step("first", first)
        run.step("second", lambda: executed.append("second"))

    with pytest.raises(RunCancelled):
        tide.run("cancel-step-sync", workflow, run_id=run_id)
    assert executed == ["first"]
    body = detail(live_server_url, run_id)
    assert body["run"]["status"] == "cancelled"
    assert [s["name"] for s in body["steps"]] == ["first"]
    assert "run.failed" not in [e["type"] for e in body["events"]]


def test_cancel_unblocks_a_waiting_gate(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    run_id = tide.runs.create("cancel-gate-sync", input={})["id"]

    def cancel_when_pending() -> None:
        wait_for(lambda: pending_gate(live_server_url, run_id))
        cancel_run(live_server_url, run_id)

    threading.Thread(target=cancel_when_pending, daemon=True).start()
    with pytest.raises(RunCancelled):
        tide.run("cancel-gate-sync", lambda run, _: run.gate("approve", "Go?"), run_id=run_id)
    assert detail(live_server_url, run_id)["run"]["status"] == "cancelled"


# ---- sessions and fencing --------------------------------------------------------------------


def test_session_is_fenced_after_losing_its_lease(short_lease: str, client: ClientFactory) -> None:
    old_client, new_client = client(short_lease), client(short_lease)
    old = old_client.runs.attach("session-sync", input={}, heartbeat_s=None)
    executed: list[str] = []
    assert old.step("a", lambda: executed.append("old:a") or "a") == "a"

    # No heartbeats: the lease lapses and another worker takes the run over.
    new = until_unleased(lambda: new_client.runs.attach("session-sync", run_id=old.run_id, heartbeat_s=None))
    assert new.step("a", lambda: executed.append("new:a")) == "a"  # replayed

    with pytest.raises(LeaseLost):
        old.step("b", lambda: executed.append("old:b"))
    assert new.step("b", lambda: executed.append("new:b") or "b") == "b"
    new.complete("done")
    assert executed == ["old:a", "new:b"]
    assert detail(short_lease, old.run_id)["run"]["status"] == "completed"


def in_flight_takeover(url: str, client: ClientFactory, workflow_name: str) -> tuple[Any, Any]:
    """A session whose step is still running when another worker takes the run over."""
    old_client, new_client = client(url), client(url)
    old = old_client.runs.attach(workflow_name, input={}, heartbeat_s=None)
    taken_over = threading.Event()
    holder: dict[str, Any] = {}

    def take_over() -> None:
        holder["new"] = until_unleased(
            lambda: new_client.runs.attach(workflow_name, run_id=old.run_id, heartbeat_s=None)
        )
        taken_over.set()

    def slow() -> str:
        threading.Thread(target=take_over, daemon=True).start()
        assert taken_over.wait(30)
        return "old result"

    with pytest.raises(LeaseLost):
        old.step("slow", slow)
    return old, holder["new"]


def test_session_step_in_flight_at_takeover_cannot_complete(short_lease: str, client: ClientFactory) -> None:
    old, new = in_flight_takeover(short_lease, client, "session-inflight-sync")
    slow = steps_by_name(short_lease, old.run_id)["slow"]
    assert slow["status"] != "completed"
    assert slow["output"] != "old result"
    new.close()


def test_new_owner_takes_over_a_step_left_in_flight(short_lease: str, client: ClientFactory) -> None:
    old, new = in_flight_takeover(short_lease, client, "session-takeover-sync")
    assert new.step("slow", lambda: "new result") == "new result"  # not locked by the dead owner
    new.complete(None)
    assert steps_by_name(short_lease, old.run_id)["slow"]["output"] == "new result"


def test_on_lease_lost_fires_when_the_heartbeat_is_refused(short_lease: str, client: ClientFactory) -> None:
    lost: list[BaseException] = []
    fired = threading.Event()

    def on_lease_lost(error: BaseException) -> None:
        lost.append(error)
        fired.set()

    # The first heartbeat comes well after the 1.5 s lease lapsed and another worker took over.
    old = client(short_lease).runs.attach("session-lost-sync", input={}, heartbeat_s=4.0, on_lease_lost=on_lease_lost)
    new = until_unleased(
        lambda: client(short_lease).runs.attach("session-lost-sync", run_id=old.run_id, heartbeat_s=None)
    )
    assert fired.wait(30)
    assert isinstance(lost[0], LeaseLost)
    assert not old.heartbeating
    new.complete(None)


# ---- JSON ------------------------------------------------------------------------------------


def test_json_values_round_trip_through_the_server(live_server_url: str, client: ClientFactory) -> None:
    tide = client(live_server_url)
    executed: Counter[str] = Counter()
    crash = True

    def make(kind: str) -> Any:
        executed[kind] += 1
        return TicketDC(**FIELDS) if kind == "dc" else TicketModel(**FIELDS)

    def workflow(run: RunContext, input: Any) -> dict[str, Any]:
        dc = run.step("dc", lambda: make("dc"), input=STEP_INPUT)
        model = run.step("model", lambda: make("model"), input=STEP_INPUT, returns=TicketModel)
        typed_dc = run.step("dc-typed", lambda: make("dc"), input=STEP_INPUT, returns=TicketDC)
        if crash:
            raise RuntimeError("crash after the checkpoints")
        return {"dc": dc, "model": model, "typed": typed_dc}

    run_id = tide.runs.create("json-sync", input={"ticket": TicketDC(**FIELDS), "at": FIELDS["created"]})["id"]
    with pytest.raises(RuntimeError):
        tide.run("json-sync", workflow, run_id=run_id)
    crash = False
    replayed = tide.run("json-sync", workflow, run_id=run_id)
    assert executed == {"dc": 2, "model": 1}  # nothing re-executed on resume

    # Replay gives the JSON data back (attribute access works), or the type asked for.
    assert isinstance(replayed["dc"], CheckpointDict)
    assert replayed["dc"] == EXPECTED_JSON
    assert replayed["dc"].priority == "high"
    assert replayed["model"] == TicketModel(**FIELDS)
    assert replayed["typed"] == TicketDC(**FIELDS)

    # Models are stored as pydantic's JSON mode writes them (Decimal as a string, "Z" times).
    # our encoding sorts sets (mode="json" keeps their hash-seed-dependent order)
    model_json = {**TicketModel(**FIELDS).model_dump(mode="json"), "tags": sorted(FIELDS["tags"])}
    body = detail(live_server_url, run_id)
    assert body["run"]["input"] == {"ticket": EXPECTED_JSON, "at": "2024-05-17T09:30:15.250000+00:00"}
    assert body["run"]["result"] == {"dc": EXPECTED_JSON, "model": model_json, "typed": EXPECTED_JSON}
    outputs = {"dc": EXPECTED_JSON, "model": model_json, "dc-typed": EXPECTED_JSON}
    for step in body["steps"]:
        assert step["output"] == outputs[step["name"]]
        assert step["input"] == EXPECTED_INPUT_JSON
        assert step["inputHash"] == hash_input(EXPECTED_INPUT_JSON) == hash_input(STEP_INPUT)


# ---- the cost of a resume --------------------------------------------------------------------

K = 5


def crashed_run(tide: Tidebase, name: str, executed: Counter[str]) -> str:
    """A run whose worker died after K finished steps (its lease still held)."""

    def workflow(run: RunContext, input: Any) -> None:
        for i in range(K):
            run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
        raise Crash

    run_id: str = tide.runs.create(name, input={})["id"]
    with pytest.raises(Crash):
        tide.run(name, workflow, run_id=run_id)
    return run_id


def test_resume_loads_all_checkpoints_in_one_request(short_lease: str, client: ClientFactory) -> None:
    executed: Counter[str] = Counter()
    run_id = crashed_run(client(short_lease), "resume-cost-sync", executed)
    log = RequestLog()
    resumed = client(short_lease, log=log)

    def workflow(run: RunContext, input: Any) -> int:
        total = 0
        for i in range(K + 1):
            total += run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
        return total

    assert until_unleased(lambda: resumed.run("resume-cost-sync", workflow, run_id=run_id)) == sum(range(K + 1))
    assert executed == {f"s{i}": 1 for i in range(K + 1)}
    checkpoint_loads = log.matching("GET", "/steps")
    assert len(checkpoint_loads) == 1
    assert "status=completed" in checkpoint_loads[0][2]
    assert log.count("POST", "/steps/begin") == 1  # only the step that executed


def test_resume_still_checks_input_hashes(short_lease: str, client: ClientFactory) -> None:
    executed: Counter[str] = Counter()
    run_id = crashed_run(client(short_lease), "resume-mismatch-sync", executed)
    log = RequestLog()
    resumed = client(short_lease, log=log)

    def changed(run: RunContext, input: Any) -> None:
        for i in range(K + 1):
            step_input = {"i": i, "changed": True} if i == 2 else {"i": i}
            run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input=step_input)

    with pytest.raises(InputMismatch) as raised:
        until_unleased(lambda: resumed.run("resume-mismatch-sync", changed, run_id=run_id))
    assert raised.value.step_name == "s2"
    assert raised.value.expected_hash == hash_input({"i": 2})
    assert executed == {f"s{i}": 1 for i in range(K)}
    assert log.count("POST", "/steps/begin") == 0


def test_resume_observes_cancellation_at_the_first_executing_step(short_lease: str, client: ClientFactory) -> None:
    executed: Counter[str] = Counter()
    run_id = crashed_run(client(short_lease), "resume-cancel-sync", executed)
    resumed = client(short_lease)

    def workflow(run: RunContext, input: Any) -> None:
        for i in range(K + 1):
            run.step(f"s{i}", lambda i=i: executed.update([f"s{i}"]) or i, input={"i": i})
            if i == 1:
                cancel_run(short_lease, run_id)  # cancelled mid-replay, from outside

    with pytest.raises(RunCancelled):
        until_unleased(lambda: resumed.run("resume-cancel-sync", workflow, run_id=run_id))
    assert executed == {f"s{i}": 1 for i in range(K)}  # s5 never ran
    assert detail(short_lease, run_id)["run"]["status"] == "cancelled"
