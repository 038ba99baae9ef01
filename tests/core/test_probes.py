"""Invariants under real concurrency (DESIGN.md §5): threads with their own Postgres
connections, lined up on a barrier, calling the services (and, for gate resolution, a live
server). Each probe would fail with the lock, fence or unique index it relies on removed."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.db import connection

from tests.conftest import start_live_server
from tidebase_core.db import py
from tidebase_core.exceptions import LeaseLost, RunLeased
from tidebase_core.models import Event, Gate, Run, RunEdge, Step
from tidebase_core.services import gates, runs, state, steps, usage

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def in_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in n threads released together; return results (or exceptions) by i.
    Each thread closes its own DB connection when done."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def new_run() -> Run:
    return runs.run_create(workflow_name="probe", input={"n": 1})


def begin(run_id: str, name: str, owner: str, input_hash: str = "h1") -> steps.BeginResult:
    return steps.step_begin(run_id=run_id, name=name, input_hash=input_hash, input={"x": 1}, options={}, owner=owner)


def expire_step_lease(step_id: str) -> None:
    with connection.cursor() as cur:
        cur.execute("UPDATE tb_step SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [step_id])


def expire_run_lease(run_id: str) -> None:
    with connection.cursor() as cur:
        cur.execute("UPDATE tb_run SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [run_id])


def events(run_id: str, type: str | None = None) -> list[Event]:
    qs = Event.objects.filter(run_id=run_id)
    if type is not None:
        qs = qs.filter(type=type)
    return list(qs.order_by("seq"))


def fail(run_id: str, step_id: str, owner: str) -> None:
    steps.step_fail(run_id=run_id, step_id=step_id, owner=owner, error={"m": "x"}, retryable=True, resume_decision=None)


# --- step begin: exactly one executor ---------------------------------------------------------

ROUNDS = 50
BEGINNERS = 32


def test_step_begin__32_concurrent_first_begins_yield_one_execute_per_round() -> None:
    run = new_run()
    barrier = threading.Barrier(BEGINNERS)
    actions: list[list[str]] = [[""] * BEGINNERS for _ in range(ROUNDS)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for r in range(ROUNDS):
                barrier.wait(30)
                actions[r][i] = begin(run.id, f"step-{r}", owner=f"owner-{i}").action
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(BEGINNERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert errors == []
    for r in range(ROUNDS):
        assert Counter(actions[r]) == {"execute": 1, "locked": BEGINNERS - 1}, r
    started = Counter(e.payload["name"] for e in events(run.id, "step.started"))
    assert started == {f"step-{r}": 1 for r in range(ROUNDS)}
    assert Step.objects.filter(run_id=run.id).count() == ROUNDS


# --- stale lease holders never write ------------------------------------------------------------


def test_step_complete__old_owner_after_step_takeover_gets_lease_lost() -> None:
    run = new_run()  # not leased: any owner may begin steps (§5.2)
    first = begin(run.id, "s", owner="A")
    assert first.action == "execute"
    expire_step_lease(first.step.id)

    takeover = begin(run.id, "s", owner="B")

    assert takeover.action == "execute"
    assert takeover.step.id == first.step.id
    assert takeover.step.attempt == 2
    with pytest.raises(LeaseLost):
        steps.step_complete(run_id=run.id, step_id=first.step.id, owner="A", output={"by": "A"})
    with pytest.raises(LeaseLost):
        fail(run.id, first.step.id, "A")
    steps.step_complete(run_id=run.id, step_id=first.step.id, owner="B", output={"by": "B"})
    stored = Step.objects.get(id=first.step.id)
    assert (stored.status, stored.output) == ("completed", {"by": "B"})
    assert len(events(run.id, "step.completed")) == 1
    assert len(events(run.id, "step.failed")) == 0


def test_step_complete__old_run_owner_is_fenced_as_soon_as_a_new_run_lease_is_taken() -> None:
    run = new_run()
    runs.run_begin(run_id=run.id, owner="A")
    first = begin(run.id, "s", owner="A")
    expire_run_lease(run.id)
    runs.run_begin(run_id=run.id, owner="B")

    with pytest.raises(LeaseLost):
        steps.step_complete(run_id=run.id, step_id=first.step.id, owner="A", output={"by": "A"})
    with pytest.raises(LeaseLost):
        fail(run.id, first.step.id, "A")
    stored = Step.objects.get(id=first.step.id)
    assert (stored.status, stored.lease_owner, stored.output) == ("running", "A", None)


def test_step_begin__new_run_owner_takes_over_a_live_step_lease_of_the_old_run_lease_at_once() -> None:
    run = new_run()
    runs.run_begin(run_id=run.id, owner="A")
    first = begin(run.id, "s", owner="A")
    expire_run_lease(run.id)  # the step lease itself is still live
    runs.run_begin(run_id=run.id, owner="B")

    takeover = begin(run.id, "s", owner="B")

    assert takeover.action == "execute"
    assert takeover.lease_owner == "B"
    assert takeover.step.attempt == 2
    with pytest.raises(LeaseLost):
        steps.step_complete(run_id=run.id, step_id=first.step.id, owner="A", output={"by": "A"})
    with pytest.raises(LeaseLost):
        fail(run.id, first.step.id, "A")
    steps.step_complete(run_id=run.id, step_id=first.step.id, owner="B", output={"by": "B"})
    assert Step.objects.get(id=first.step.id).output == {"by": "B"}


def test_step_begin__a_stranger_is_refused_while_another_owner_holds_the_run() -> None:
    run = new_run()
    runs.run_begin(run_id=run.id, owner="A")
    begin(run.id, "s", owner="A")
    expire_run_lease(run.id)
    runs.run_begin(run_id=run.id, owner="B")
    before = len(events(run.id))

    with pytest.raises(LeaseLost):
        begin(run.id, "s", owner="C")
    with pytest.raises(LeaseLost):
        begin(run.id, "new", owner="C")
    assert len(events(run.id)) == before
    assert Step.objects.filter(run_id=run.id).count() == 1


def test_step_begin__the_old_run_owner_may_replay_but_not_start_steps_after_a_takeover() -> None:
    run = new_run()
    runs.run_begin(run_id=run.id, owner="A")
    done = begin(run.id, "done", owner="A")
    steps.step_complete(run_id=run.id, step_id=done.step.id, owner="A", output={"v": 1})
    expire_run_lease(run.id)
    runs.run_begin(run_id=run.id, owner="B")

    replay = begin(run.id, "done", owner="A")

    assert (replay.action, py(replay.step.output)) == ("return", {"v": 1})
    with pytest.raises(LeaseLost):
        begin(run.id, "next", owner="A")
    assert not Step.objects.filter(run_id=run.id, name="next").exists()


RACE_ROUNDS = 40


def test_step_complete__racing_a_run_takeover_exactly_one_side_writes() -> None:
    """A (the old run owner, lease expired) completes its step while B takes the run and
    begins the step. Either A's complete lands first (B then replays the output, or is refused
    the run because A's step call renewed its lease) or B's run lease fences A (LeaseLost) and B
    executes. Never both."""
    outcomes: Counter[str] = Counter()
    for r in range(RACE_ROUNDS):
        run = new_run()
        runs.run_begin(run_id=run.id, owner="A")
        step_id = begin(run.id, "s", owner="A").step.id
        expire_run_lease(run.id)
        jitter = [random.random() * 0.003, random.random() * 0.003]

        def side(i: int, run_id: str = run.id, step_id: str = step_id, jitter: list[float] = jitter) -> Any:
            time.sleep(jitter[i])
            if i == 0:
                steps.step_complete(run_id=run_id, step_id=step_id, owner="A", output={"by": "A"})
                return "completed"
            try:
                runs.run_begin(run_id=run_id, owner="B")
            except RunLeased:  # A's complete came first and renewed its (expired) run lease
                return "run_leased"
            return begin(run_id, "s", owner="B").action

        a, b = in_threads(2, side)

        stored = Step.objects.get(id=step_id)
        if a == "completed":
            assert b in ("return", "run_leased"), r
            assert (stored.status, stored.output) == ("completed", {"by": "A"})
            outcomes["A wrote"] += 1
        else:
            assert isinstance(a, LeaseLost), (r, a)
            assert b == "execute", r
            assert (stored.status, stored.lease_owner, stored.output) == ("running", "B", None)
            outcomes["B executes"] += 1
        assert len(events(run.id, "step.completed")) == (1 if a == "completed" else 0)
    assert sum(outcomes.values()) == RACE_ROUNDS


# --- gate resolution: exactly once, through the live server -----------------------------------


@pytest.fixture
def ops_server(test_database_url: str) -> Iterator[str]:
    server = start_live_server(test_database_url, TIDEBASE_API_KEY="ops-key", TIDEBASE_CONN_MAX_AGE="0")
    yield server.url
    server.stop()


def test_gate_resolve__50_concurrent_mixed_resolutions_one_wins(ops_server: str) -> None:
    key = {"Authorization": "Bearer ops-key"}
    with httpx.Client(base_url=ops_server, timeout=30) as http:
        run = http.post("/runs/gated", json={}, headers=key).json()["run"]
        gate = http.post(f"/runs/{run['id']}/gates/begin", json={"name": "ship", "prompt": "ok?"}, headers=key)
        gate = gate.json()["gate"]
    token = gate["resolveToken"]
    assert isinstance(token, str)
    decisions = ["approved", "rejected", "canceled"]
    url = f"{ops_server}/runs/{run['id']}/gates/{gate['id']}/resolve"

    def resolve(i: int) -> tuple[str, str, httpx.Response]:
        decision = decisions[i % 3]
        by_token = i % 2 == 0
        body = {"decision": decision, "actor": f"actor-{i}"}
        if by_token:
            body["token"] = token
        headers = {} if by_token else key
        with httpx.Client(timeout=30) as http:
            return decision, "token" if by_token else "key", http.post(url, json=body, headers=headers)

    results = in_threads(50, resolve)

    assert not any(isinstance(r, Exception) for r in results), results
    codes = Counter(r[2].status_code for r in results)
    assert codes == {200: 1, 409: 49}
    (winner,) = [r for r in results if r[2].status_code == 200]
    assert {r[2].json()["code"] for r in results if r[2].status_code == 409} == {"gate_already_resolved"}
    stored = Gate.objects.get(id=gate["id"])
    assert stored.status == stored.decision == winner[0] == winner[2].json()["gate"]["decision"]
    assert stored.decided_by == ("token:resolve-token" if winner[1] == "token" else "api-key:env")
    assert len(events(run["id"], "gate.resolved")) == 1


# --- the event log ------------------------------------------------------------------------------


def test_event_append__log_stays_gap_free_and_ordered_under_16_concurrent_writers() -> None:
    run = new_run()
    runs.run_begin(run_id=run.id, owner="W")

    def writer(i: int) -> int:
        for k in range(4):
            kind = (i + k) % 4
            if kind == 0:
                state.state_write(run_id=run.id, value={f"w{i}": k}, merge=True)
            elif kind == 1:
                usage.usage_record(run_id=run.id, input_tokens=i, output_tokens=k)
            elif kind == 2:
                gates.gate_begin(run_id=run.id, name=f"g-{i}-{k}", prompt="p")
            else:
                started = begin(run.id, f"s-{i}-{k}", owner="W")
                steps.step_complete(run_id=run.id, step_id=started.step.id, owner="W", output=k)
        return i

    results = in_threads(16, writer)

    assert results == list(range(16))
    log = events(run.id)
    # run.created + run.started + 16 writers x 4 operations, a step being two events
    assert len(log) == 2 + 16 * (3 + 2)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert [e.seq for e in sorted(log, key=lambda e: e.id)] == [e.seq for e in log]
    assert Run.objects.get(id=run.id).event_seq == len(log)


# --- idempotent creation by name ----------------------------------------------------------------


def test_child_create__16_concurrent_creations_of_one_edge_make_one_child() -> None:
    parent = new_run()

    def create(i: int) -> tuple[str, bool]:
        child, _edge, created = runs.child_create(
            parent_run_id=parent.id, name="fan-1", workflow_name="child", input={"caller": i}
        )
        return child.id, created

    results = in_threads(16, create)

    assert not any(isinstance(r, Exception) for r in results), results
    assert len({child_id for child_id, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert RunEdge.objects.filter(parent_run_id=parent.id).count() == 1
    assert Run.objects.filter(metadata__parentRunId=parent.id).count() == 1
    assert len(events(parent.id, "run.child.created")) == 1


def test_gate_begin__16_concurrent_begins_of_one_name_make_one_gate() -> None:
    run = new_run()

    def open_gate(i: int) -> tuple[str, bool]:
        gate, created = gates.gate_begin(run_id=run.id, name="approve", prompt=f"prompt {i}")
        return gate.id, created

    results = in_threads(16, open_gate)

    assert not any(isinstance(r, Exception) for r in results), results
    assert len({gate_id for gate_id, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert Gate.objects.filter(run_id=run.id).count() == 1
    assert len(events(run.id, "gate.created")) == 1


# --- input hash --------------------------------------------------------------------------------


def test_step_begin__replay_with_another_input_hash_of_a_completed_step_is_refused() -> None:
    run = new_run()
    started = begin(run.id, "s", owner="A", input_hash="h1")
    steps.step_complete(run_id=run.id, step_id=started.step.id, owner="A", output={"v": 1})
    before = len(events(run.id))

    replay = begin(run.id, "s", owner="A", input_hash="h2")

    assert replay.action == "input_mismatch"
    assert replay.expected_hash == "h1"
    stored = Step.objects.get(id=started.step.id)
    assert (stored.input_hash, stored.status, stored.output, stored.attempt) == ("h1", "completed", {"v": 1}, 1)
    assert len(events(run.id)) == before


@pytest.mark.parametrize("owner", ["A", "B"])
def test_step_begin__another_input_hash_of_a_running_step_is_refused(owner: str) -> None:
    run = new_run()
    started = begin(run.id, "s", owner="A", input_hash="h1")
    before = len(events(run.id))

    again = begin(run.id, "s", owner=owner, input_hash="h2")

    assert again.action == "input_mismatch"
    assert again.expected_hash == "h1"
    stored = Step.objects.get(id=started.step.id)
    assert (stored.input_hash, stored.status, stored.lease_owner, stored.attempt) == ("h1", "running", "A", 1)
    assert len(events(run.id)) == before
