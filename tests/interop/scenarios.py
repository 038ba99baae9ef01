# ruff: noqa: PT018  (a plain script, no pytest in the interop venv: compound asserts print their context)
"""Interop scenarios for the official ``tidebase==0.7.0`` client, run *inside* var/interop-venv.

Invoked as ``var/interop-venv/bin/python tests/interop/scenarios.py <name> [args...]`` with
``TIDEBASE_URL`` pointing at a live server. Each scenario drives the server through the official
client only (raw HTTP stands in for a human resolving a gate, like Studio does), asserts, and
prints one JSON line of results (the last stdout line) for the pytest side to check. Exit 0 means
every assertion held.

This file must stay importable without the repo on ``sys.path``: ``tidebase`` here is the PyPI
client, never the SDK in the repo.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tidebase
from tidebase import RunCancelled, Tidebase

SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {}
URL = os.environ.get("TIDEBASE_URL", "http://localhost:7373").rstrip("/")


def scenario(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


# ---- helpers ---------------------------------------------------------------------------------


def http(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Raw HTTP, as a reviewer's browser/Studio/curl would send it (no SDK involved)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode("utf-8", "replace")


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def pending_gate(tide: Tidebase, run_id: str) -> dict[str, Any] | None:
    gates = tide.runs.get(run_id)["gates"]
    return next((g for g in gates if g["status"] == "pending"), None)


def event_types(detail: dict[str, Any]) -> list[str]:
    return [e["type"] for e in detail["events"]]


def assert_seq_contiguous(detail: dict[str, Any]) -> None:
    seqs = [e["seq"] for e in detail["events"]]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


class raises:
    """``with raises(Exc) as caught:`` — the block must raise Exc; ``caught.value`` holds it."""

    def __init__(self, exc_type: type[BaseException]) -> None:
        self.exc_type = exc_type
        self.value: Any = None

    def __enter__(self) -> raises:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, _tb: object) -> bool:
        if et is None:
            raise AssertionError(f"expected {self.exc_type.__name__} to be raised")
        if not issubclass(et, self.exc_type):
            return False
        self.value = ev
        return True


class Counter:
    """Counts executions across processes: one line appended per execution."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def hit(self, name: str) -> None:
        with open(self.dir / f"{name}.count", "a") as fh:
            fh.write("x\n")
            fh.flush()
            os.fsync(fh.fileno())

    def get(self, name: str) -> int:
        path = self.dir / f"{name}.count"
        return len(path.read_text().splitlines()) if path.exists() else 0


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, queue.Queue[tuple[str, Any]]]:
    """Run fn in a daemon thread; its outcome lands in the queue as ("ok", value) or ("error", exc)."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue()

    def target() -> None:
        try:
            out.put(("ok", fn()))
        except BaseException as exc:
            out.put(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# ---- scenarios -------------------------------------------------------------------------------


@scenario
def client_identity() -> dict[str, Any]:
    """Guard: we really are driving the PyPI client, not the repo SDK."""
    from importlib.metadata import version

    return {"version": version("tidebase"), "file": tidebase.__file__, "prefix": sys.prefix}


def ten_step_workflow(counter: Counter, crash_marker: Path | None) -> Callable[[Any, Any], Any]:
    def workflow(run: Any, input: Any) -> Any:
        total = input["start"]
        for i in range(1, 11):

            def body(i: int = i, total: int = total) -> int:
                counter.hit(f"step{i}")
                if i == 6 and crash_marker is not None and not crash_marker.exists():
                    crash_marker.write_text("crashed")
                    os.kill(os.getpid(), signal.SIGKILL)
                return total + i

            total = run.step(f"step-{i}", body, input={"i": i, "total": total})
        return {"total": total}

    return workflow


@scenario
def crash_worker(run_id: str, counter_dir: str) -> dict[str, Any]:
    """Executes run_id until it SIGKILLs itself inside step 6 (first attempt). Never returns."""
    marker = Path(counter_dir) / "crash.marker"
    Tidebase().run("ten-steps", ten_step_workflow(Counter(counter_dir), marker), run_id=run_id)
    raise AssertionError("crash_worker should have been killed inside step 6")


@scenario
def crash_resume(counter_dir: str, lease_s: str) -> dict[str, Any]:
    """A 10-step run whose worker is SIGKILLed in step 6, resumed in a new process: steps 1-5 replay
    from checkpoints, step 6 re-executes, 7-10 run once, the result is right."""
    tide = Tidebase()
    counter = Counter(counter_dir)
    run = tide.runs.create("ten-steps", input={"start": 100})
    proc = subprocess.run(
        [sys.executable, __file__, "crash_worker", run["id"], counter_dir], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.decode()[-2000:])
    crashed = tide.runs.get(run["id"])
    assert crashed["run"]["status"] == "running", crashed["run"]["status"]
    statuses = {s["name"]: s["status"] for s in crashed["steps"]}
    assert [statuses[f"step-{i}"] for i in range(1, 6)] == ["completed"] * 5, statuses
    assert statuses["step-6"] == "running", statuses
    counts_at_crash = {f"step{i}": counter.get(f"step{i}") for i in range(1, 11)}

    # Let the dead worker's run and step leases lapse, then resume in this (new) process.
    time.sleep(float(lease_s) + 0.5)
    result = tide.run("ten-steps", ten_step_workflow(counter, None), run_id=run["id"])
    expected = {"total": 100 + sum(range(1, 11))}
    assert result == expected, result

    detail = tide.runs.get(run["id"])
    assert detail["run"]["status"] == "completed", detail["run"]
    assert detail["run"]["result"] == expected, detail["run"]["result"]
    assert detail["run"]["attempt"] == 2, detail["run"]["attempt"]
    assert all(s["status"] == "completed" for s in detail["steps"]), [s["status"] for s in detail["steps"]]
    step6 = next(s for s in detail["steps"] if s["name"] == "step-6")
    assert step6["attempt"] == 2, step6
    assert_seq_contiguous(detail)
    # Completed run: tide.run returns the stored result without executing anything.
    again = tide.run("ten-steps", ten_step_workflow(counter, None), run_id=run["id"])
    assert again == expected
    counts = {f"step{i}": counter.get(f"step{i}") for i in range(1, 11)}
    assert counts == {**{f"step{i}": 1 for i in range(1, 11)}, "step6": 2}, counts
    return {
        "run_id": run["id"],
        "counts_at_crash": counts_at_crash,
        "counts": counts,
        "result": result,
        "step_started_events": event_types(detail).count("step.started"),
    }


@scenario
def retries() -> dict[str, Any]:
    """retries=2: fails twice, succeeds on the third attempt."""
    tide = Tidebase()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError(f"flaky attempt {len(attempts)}")
        return "ok"

    run = tide.runs.create("retries")
    result = tide.run("retries", lambda run, _input: run.step("flaky", flaky, retries=2), run_id=run["id"])
    assert result == "ok"
    assert attempts == [1, 2, 3]
    detail = tide.runs.get(run["id"])
    step = detail["steps"][0]
    assert step["status"] == "completed" and step["attempt"] == 3 and step["error"] is None, step
    assert step["output"] == "ok"
    failed = [e["payload"] for e in detail["events"] if e["type"] == "step.failed"]
    assert len(failed) == 2, failed
    assert all(p["retryable"] is True and p["resumeDecision"] == "auto_retry" for p in failed), failed
    assert failed[0]["error"]["name"] == "ConnectionError", failed[0]
    started = [e["payload"]["attempt"] for e in detail["events"] if e["type"] == "step.started"]
    assert started == [1, 2, 3], started
    assert detail["run"]["status"] == "completed"

    # Exhausted retries: the final failure is not retryable and the run fails.
    run2 = tide.runs.create("retries-exhausted")

    def always() -> None:
        raise ValueError("always")

    with raises(ValueError):
        tide.run("retries-exhausted", lambda run, _i: run.step("never", always, retries=1), run_id=run2["id"])
    detail2 = tide.runs.get(run2["id"])
    step2 = detail2["steps"][0]
    assert step2["status"] == "failed" and step2["attempt"] == 2, step2
    assert detail2["run"]["status"] == "failed", detail2["run"]["status"]
    assert detail2["run"]["error"]["name"] == "ValueError", detail2["run"]["error"]
    decisions = [e["payload"]["resumeDecision"] for e in detail2["events"] if e["type"] == "step.failed"]
    assert decisions == ["auto_retry", "safe_replay"], decisions
    return {"attempts": attempts, "failed_events": len(failed), "exhausted_decisions": decisions}


@scenario
def resolve_gate(run_id: str, decision: str) -> dict[str, Any]:
    """The reviewer side (another process, raw HTTP): wait for the pending gate, resolve it with the
    token from GET /runs/:id."""
    tide = Tidebase()
    gate = wait_for(lambda: pending_gate(tide, run_id))
    body = {"token": gate["resolveToken"], "decision": decision, "actor": "reviewer@example.com"}
    body["payload"] = {"note": f"{decision} by interop"}
    status, resolved = http("POST", f"/runs/{run_id}/gates/{gate['id']}/resolve", body)
    assert status == 200, (status, resolved)
    assert resolved["gate"]["status"] == decision and resolved["gate"]["decision"] == decision, resolved
    # Exactly once: a second resolve is refused.
    status2, again = http("POST", f"/runs/{run_id}/gates/{gate['id']}/resolve", {**body, "decision": "approved"})
    assert status2 == 409, (status2, again)
    return {"gate_id": gate["id"], "resolved_at": time.time()}


@scenario
def gate(decision: str) -> dict[str, Any]:
    """A blocking run.gate() in this process, resolved by another process over raw HTTP."""
    tide = Tidebase()
    run = tide.runs.create("gated", input={"doc": "q3"})
    reviewer = subprocess.Popen(
        [sys.executable, __file__, "resolve_gate", run["id"], decision], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen: dict[str, Any] = {}

    def workflow(run: Any, input: Any) -> Any:
        draft = run.step("draft", lambda: f"draft of {input['doc']}")
        d = run.gate("publish", "Publish the draft?", data={"draft": draft}, poll_s=0.2, timeout_s=30)
        seen.update(decision=d.decision, approved=d.approved, actor=d.actor, payload=d.payload, status=d.status)
        if not d.approved:
            return {"published": False}
        return {"published": run.step("publish", lambda: True)}

    try:
        result = tide.run("gated", workflow, run_id=run["id"])
    finally:
        out, err = reviewer.communicate(timeout=30)
    assert reviewer.returncode == 0, err.decode()[-2000:]
    assert seen["decision"] == decision and seen["status"] == decision, seen
    assert seen["approved"] is (decision == "approved"), seen
    assert seen["actor"] == "reviewer@example.com", seen
    assert seen["payload"] == {"note": f"{decision} by interop"}, seen
    assert result == {"published": decision == "approved"}, result
    detail = tide.runs.get(run["id"])
    assert detail["run"]["status"] == "completed"
    types = event_types(detail)
    assert "gate.created" in types and "gate.resolved" in types, types
    g = detail["gates"][0]
    assert g["decisionPayload"] == {"note": f"{decision} by interop"} and g["resolvedAt"], g

    # A failed run resumed later re-begins the gate: it returns the stored decision at once.
    run2 = tide.runs.create("gated-replay")
    crash_once = [True]

    def replaying(run: Any, _input: Any) -> Any:
        decision = run.gate("same", "again?", poll_s=0.2).decision
        if crash_once:
            crash_once.pop()
            raise RuntimeError("worker died after the gate")
        return decision

    reviewer2 = subprocess.Popen([sys.executable, __file__, "resolve_gate", run2["id"], decision])
    with raises(RuntimeError) as caught:
        tide.run("gated-replay", replaying, run_id=run2["id"])
    assert "worker died" in str(caught.value), caught.value
    assert reviewer2.wait(30) == 0
    assert tide.runs.get(run2["id"])["run"]["status"] == "failed"
    # No reviewer is left: the re-invocation can only return by replaying the recorded decision.
    replayed = tide.run("gated-replay", replaying, run_id=run2["id"])
    assert replayed == decision, replayed
    assert len(tide.runs.get(run2["id"])["gates"]) == 1
    return {"decision": seen["decision"], "result": result, "reviewer": json.loads(out.decode().splitlines()[-1])}


@scenario
def state_and_snapshots() -> dict[str, Any]:
    tide = Tidebase()
    captured: dict[str, Any] = {}

    def workflow(run: Any, _input: Any) -> Any:
        s1 = run.state.set({"status": "planning", "progress": 0.1}, reason="start")
        s2 = run.state.patch({"progress": 0.5, "notes": ["a"]})
        saved = run.state.save("halfway", reason="checkpoint me")
        s3 = run.state.set({"status": "done", "progress": 1.0}, stream="report", label="final", importance="milestone")
        snap = run.snapshots.create("report-v1", {"sections": 3}, target={"type": "report", "id": "r1"}, reason="r")
        snap_default = run.snapshots.create("run-snap", {"k": "v"})
        captured.update(
            s1=s1,
            s2=s2,
            saved=saved,
            s3=s3,
            snap=snap,
            snap_default=snap_default,
            versions=run.state.versions(),
            run_versions=run.state.versions(stream="run"),
            labeled=run.state.versions(labeled=True),
            snapshots=run.snapshots.list(),
        )
        return "ok"

    run = tide.runs.create("stateful")
    assert tide.run("stateful", workflow, run_id=run["id"]) == "ok"
    c = captured
    assert c["s1"]["state"]["value"] == {"status": "planning", "progress": 0.1} and c["s1"]["state"]["version"] == 1
    assert c["s2"]["state"]["value"] == {"status": "planning", "progress": 0.5, "notes": ["a"]}, c["s2"]
    assert c["s2"]["state"]["version"] == 2
    sv = c["saved"]["stateVersion"]
    assert sv["label"] == "halfway" and sv["importance"] == "milestone" and sv["patch"] is None, sv
    assert sv["value"] == c["s2"]["state"]["value"]
    assert c["s3"]["state"]["value"] == {"status": "done", "progress": 1.0} and c["s3"]["state"]["version"] == 3
    assert c["snap"]["snapshot"]["label"] == "report-v1" and c["snap"]["snapshot"]["importance"] == "milestone"
    assert c["snap"]["snapshot"]["value"] == {"sections": 3}
    run_versions = c["run_versions"]
    assert [v["version"] for v in run_versions] == [1, 2, 3], run_versions
    assert run_versions[1]["patch"] == {"progress": 0.5, "notes": ["a"]}, run_versions[1]
    assert [v["reason"] for v in run_versions] == ["start", None, "checkpoint me"], run_versions
    streams = sorted({v["streamId"] for v in c["versions"]})
    assert len(streams) == 4, streams  # run, report, report:r1, run:<id>
    assert len(c["versions"]) == 6, c["versions"]
    assert {v["label"] for v in c["labeled"]} == {"halfway", "final", "report-v1", "run-snap"}, c["labeled"]
    labels_newest_first = [s["label"] for s in c["snapshots"]]
    assert labels_newest_first == ["run-snap", "report-v1", "final", "halfway"], labels_newest_first
    detail = tide.runs.get(run["id"])
    assert detail["state"]["value"] == {"status": "done", "progress": 1.0} and detail["state"]["version"] == 3
    names = sorted(s["name"] for s in detail["stateStreams"])
    assert names == sorted(["run", "report", "report:r1", f"run:{run['id']}"]), names
    types = event_types(detail)
    assert types.count("state.updated") == 3 and "state.saved" in types and types.count("snapshot.created") == 2
    return {"versions": len(c["versions"]), "snapshots": labels_newest_first, "streams": names}


@scenario
def usage() -> dict[str, Any]:
    tide = Tidebase()

    def workflow(run: Any, _input: Any) -> Any:
        run.step("call-llm", lambda: "answer")
        step_id = tide.runs.get(run.run_id)["steps"][0]["id"]
        a = run.usage.record(
            step_id=step_id,
            kind="llm",
            provider="openai",
            model="gpt-x",
            input_tokens=120,
            output_tokens=30,
            cost_usd=0.0123,
            metadata={"k": 1},
        )
        b = run.usage.record(kind="tool", label="search", quantity=2.5, unit="calls", cost_usd=0.5)
        return [a, b]

    run = tide.runs.create("usage")
    a, _b = tide.run("usage", workflow, run_id=run["id"])
    detail = tide.runs.get(run["id"])
    records = detail["usage"]
    assert len(records) == 2, records
    first, second = records
    assert isinstance(first["costUsd"], float) and first["costUsd"] == 0.0123, first
    assert first["totalTokens"] == 150 and first["inputTokens"] == 120 and first["outputTokens"] == 30, first
    assert first["stepId"] == detail["steps"][0]["id"] and first["kind"] == "llm" and first["model"] == "gpt-x"
    assert first["metadata"] == {"k": 1}
    assert isinstance(second["quantity"], float) and second["quantity"] == 2.5, second
    assert second["costUsd"] == 0.5 and second["totalTokens"] is None and second["stepId"] is None, second
    assert a["usage"]["costUsd"] == 0.0123, a
    assert event_types(detail).count("usage.recorded") == 2
    return {"costs": [r["costUsd"] for r in records], "total_tokens": first["totalTokens"]}


@scenario
def children_and_fanout(counter_dir: str) -> dict[str, Any]:
    tide = Tidebase()
    counter = Counter(counter_dir)

    def child_wf(run: Any, input: Any) -> Any:
        counter.hit(f"child-{input['n']}")
        return run.step("square", lambda: input["n"] * input["n"])

    def parent(run: Any, input: Any) -> Any:
        single = run.child("squarer", child_wf, name="first", input={"n": 7})
        again = run.child("squarer", child_wf, name="first", input={"n": 7})  # idempotent by edge name
        fanned = run.fanout(
            "squares",
            [{"name": f"sq-{n}", "workflow_name": "squarer", "workflow": child_wf, "input": {"n": n}} for n in input],
        )
        return {"single": single, "again": again, "fanout": fanned}

    run = tide.runs.create("parent", input=[1, 2, 3, 4])
    result = tide.run("parent", parent, run_id=run["id"])
    assert result == {"single": 49, "again": 49, "fanout": [1, 4, 9, 16]}, result
    assert counter.get("child-7") == 1
    assert all(counter.get(f"child-{n}") == 1 for n in (1, 2, 3, 4))
    detail = tide.runs.get(run["id"])
    edges = detail["runEdges"]
    assert [e["name"] for e in edges] == ["first", "sq-1", "sq-2", "sq-3", "sq-4"] or sorted(
        e["name"] for e in edges
    ) == ["first", "sq-1", "sq-2", "sq-3", "sq-4"], edges
    assert [e["edgeType"] for e in edges].count("fanout") == 4
    assert all(e["metadata"] == {"fanout": "squares"} for e in edges if e["edgeType"] == "fanout"), edges
    children = detail["childRuns"]
    assert len(children) == 5 and all(c["status"] == "completed" for c in children), children
    assert all(c["metadata"]["parentRunId"] == run["id"] for c in children), children
    join = next(s for s in detail["steps"] if s["name"] == "join:squares")
    assert join["output"] == [1, 4, 9, 16] and join["resumeContract"]["replay"] == "auto", join
    assert event_types(detail).count("run.child.created") == 5
    return {"result": result, "children": len(children)}


@scenario
def session() -> dict[str, Any]:
    tide = Tidebase()
    lost: list[str] = []
    s = tide.runs.attach(
        "session-wf", input={"topic": "x"}, heartbeat_s=0.5, on_lease_lost=lambda e: lost.append(str(e))
    )
    assert s.run["status"] == "running", s.run
    lease0 = tide.runs.get(s.run_id)["run"]["leaseExpiresAt"]
    outputs = [s.step(f"turn-{i}", lambda i=i: {"turn": i}) for i in range(3)]
    # The heartbeat thread renews the lease (a condition to wait for, not a number of sleeps).
    lease1 = wait_for(lambda: (lease := tide.runs.get(s.run_id)["run"]["leaseExpiresAt"]) > lease0 and lease)
    assert lease1 > lease0, (lease0, lease1)
    s.state.set({"turns": 3})
    done = s.complete({"turns": outputs})
    assert not lost, lost
    assert done["run"]["status"] == "completed" and done["run"]["result"] == {"turns": outputs}, done
    assert done["run"]["leaseOwner"] is None
    # Attach to an existing run by id, then close without a terminal state.
    run2 = tide.runs.create("session-wf")
    s2 = tide.runs.attach("session-wf", run_id=run2["id"], heartbeat_s=None)
    s2.step("one", lambda: 1)
    assert s2.heartbeat()["run"]["leaseOwner"] == s2._lease_owner
    s2.close()
    assert tide.runs.get(run2["id"])["run"]["status"] == "running"
    # Heartbeat with a lost lease raises (the server fences it).
    tide.runs.cancel(run2["id"], reason="done testing")
    with raises(RunCancelled):
        s2.heartbeat()
    with raises(RuntimeError):
        tide.runs.attach("session-wf", run_id=s.run_id)
    return {"outputs": outputs, "lease_extended": [lease0, lease1]}


@scenario
def cancel_between_steps() -> dict[str, Any]:
    tide = Tidebase()
    step1_done, go = threading.Event(), threading.Event()
    executed: list[str] = []

    def workflow(run: Any, _input: Any) -> Any:
        run.step("one", lambda: executed.append("one") or 1)
        step1_done.set()
        assert go.wait(15)
        run.step("two", lambda: executed.append("two") or 2)
        return "finished"

    run = tide.runs.create("cancel-me")
    _, out = in_thread(lambda: tide.run("cancel-me", workflow, run_id=run["id"]))
    assert step1_done.wait(15)
    cancelled = Tidebase().runs.cancel(run["id"], reason="user asked", actor="ops@example.com")
    assert cancelled["status"] == "cancelled", cancelled
    go.set()
    kind, value = out.get(timeout=15)
    assert kind == "error" and isinstance(value, RunCancelled), (kind, value)
    assert value.run_id == run["id"]
    assert executed == ["one"], executed
    detail = tide.runs.get(run["id"])
    r = detail["run"]
    assert r["status"] == "cancelled" and r["cancelReason"] == "user asked" and r["cancelActor"] == "ops@example.com", r
    types = event_types(detail)
    assert "run.cancelled" in types and "run.failed" not in types and "run.completed" not in types, types
    assert [s["name"] for s in detail["steps"]] == ["one"]
    # One-way: begin refuses it with run_cancelled → RunCancelled in the client.
    with raises(RunCancelled) as caught:
        tide.run("cancel-me", workflow, run_id=run["id"])
    # Cancelling again is a 200 no-op that keeps the first reason.
    again = tide.runs.cancel(run["id"], reason="second")
    assert again["cancelReason"] == "user asked", again
    # Completed runs cannot be cancelled.
    done = tide.runs.create("cancel-me")
    tide.run("cancel-me", lambda run, _i: run.step("x", lambda: 1), run_id=done["id"])
    with raises(tidebase.TidebaseError) as caught:
        tide.runs.cancel(done["id"])
    assert caught.value.status == 409, caught.value
    return {"executed": executed, "events": types}


@scenario
def cancel_in_gate() -> dict[str, Any]:
    tide = Tidebase()

    def workflow(run: Any, _input: Any) -> Any:
        run.step("prep", lambda: 1)
        run.gate("approve", "go?", poll_s=0.2, timeout_s=30)
        run.step("after", lambda: 2)
        return "finished"

    run = tide.runs.create("cancel-gate")
    _, out = in_thread(lambda: tide.run("cancel-gate", workflow, run_id=run["id"]))
    wait_for(lambda: pending_gate(tide, run["id"]))
    tide.runs.cancel(run["id"], reason="abandon")
    # Observed, not outwaited: a waiter that missed the cancel would end with the gate's own
    # timeout (30 s) instead of RunCancelled. The queue wait only bounds a hang.
    kind, value = out.get(timeout=90)
    assert kind == "error" and isinstance(value, RunCancelled), (kind, value)
    detail = tide.runs.get(run["id"])
    assert detail["run"]["status"] == "cancelled"
    assert detail["gates"][0]["status"] == "pending", detail["gates"]
    assert [s["name"] for s in detail["steps"]] == ["prep"]
    assert "run.failed" not in event_types(detail)
    # gates/begin on a cancelled run also signals run_cancelled.
    from tidebase import RunContext

    with raises(RunCancelled):
        RunContext(tide, run["id"], "someone").gate("another", "x?")
    # steps/begin answers action=cancelled.
    with raises(RunCancelled):
        RunContext(tide, run["id"], "someone").step("late", lambda: 1)
    return {"error": type(value).__name__}


@scenario
def subscribe() -> dict[str, Any]:
    tide = Tidebase()
    run = tide.runs.create("subscribed")
    tide.run("subscribed", lambda run, _i: [run.step(f"s{i}", lambda i=i: i) for i in range(3)], run_id=run["id"])
    stored = tide.runs.get(run["id"])["events"]

    def read(run_id: str, after: int, n: int) -> list[dict[str, Any]]:
        got = []
        stream = tide.runs.subscribe(run_id, after=after)
        for event in stream:
            got.append(event)
            if len(got) == n:
                break
        stream.close()
        return got

    _, backlog_q = in_thread(lambda: read(run["id"], 0, len(stored)))
    kind, backlog = backlog_q.get(timeout=15)
    assert kind == "ok", backlog
    assert [e["seq"] for e in backlog] == [e["seq"] for e in stored], backlog
    assert backlog == stored, (backlog, stored)
    assert backlog[0]["type"] == "run.created" and backlog[-1]["type"] == "run.completed"

    # after= skips the backlog; live events arrive while the stream is open.
    session = tide.runs.attach("subscribed", heartbeat_s=None)
    last = tide.runs.get(session.run_id)["events"][-1]["seq"]
    _, live_q = in_thread(lambda: read(session.run_id, last, 3))
    time.sleep(0.3)
    session.step("live", lambda: "live!")
    session.complete("live 2")
    kind, live = live_q.get(timeout=15)
    assert kind == "ok", live
    assert [e["type"] for e in live] == ["step.started", "step.completed", "run.completed"], live
    assert [e["seq"] for e in live] == [last + 1, last + 2, last + 3], live
    assert live[2]["payload"] == {"result": "live 2"}, live
    return {"backlog": [e["type"] for e in backlog], "live": [e["type"] for e in live]}


@scenario
def manual_review() -> dict[str, Any]:
    tide = Tidebase()

    def boom() -> None:
        raise RuntimeError("card declined")

    cases = {
        "unkeyed-write": ({"side_effects": ["payment"]}, "manual_review", "manual_review"),
        "keyed-write": ({"side_effects": ["payment"], "idempotency_key": "charge-1"}, "safe_replay", "failed"),
        "read-only": ({"side_effects": ["read"]}, "safe_replay", "failed"),
        "replay-never": ({"replay": "never"}, "fail_hard", "failed"),
        "replay-manual": ({"replay": "manual"}, "manual_review", "manual_review"),
    }
    seen: dict[str, Any] = {}
    for name, (options, decision, status) in cases.items():
        run = tide.runs.create("charge")
        with raises(RuntimeError) as caught:
            tide.run("charge", lambda run, _i, o=options: run.step("charge", boom, **o), run_id=run["id"])
        assert "card declined" in str(caught.value), caught.value
        detail = tide.runs.get(run["id"])
        step = detail["steps"][0]
        failed = next(e["payload"] for e in detail["events"] if e["type"] == "step.failed")
        assert step["status"] == status, (name, step)
        assert failed["resumeDecision"] == decision and failed["retryable"] is False, (name, failed)
        assert detail["run"]["status"] == "failed", (name, detail["run"])
        seen[name] = {
            "status": step["status"],
            "decision": failed["resumeDecision"],
            "contract": step["resumeContract"],
        }
    contract = seen["unkeyed-write"]["contract"]
    assert contract["sideEffects"] == ["payment"] and contract["idempotencyKey"] is None, contract
    assert contract["replay"] == "manual", contract  # inferred: external write, no key (§12.1)
    assert seen["keyed-write"]["contract"]["replay"] == "auto"
    assert seen["keyed-write"]["contract"]["idempotencyKey"] == "charge-1"
    assert seen["replay-never"]["contract"]["replay"] == "never"

    # manual_review is a label, not a block: a resume re-executes the step.
    run = tide.runs.create("charge")
    with contextlib.suppress(RuntimeError):
        tide.run("charge", lambda run, _i: run.step("charge", boom, side_effects=["payment"]), run_id=run["id"])
    fixed = tide.run(
        "charge", lambda run, _i: run.step("charge", lambda: "charged", side_effects=["payment"]), run_id=run["id"]
    )
    assert fixed == "charged"
    step = tide.runs.get(run["id"])["steps"][0]
    assert step["status"] == "completed" and step["attempt"] == 2, step
    return {name: {k: v for k, v in info.items() if k != "contract"} for name, info in seen.items()}


@scenario
def replay_and_fencing() -> dict[str, Any]:
    """Input-hash mismatch on resume, the step lease fencing a second worker, list ordering."""
    tide = Tidebase()
    calls: list[str] = []
    crash_once: list[bool] = []

    def wf(run: Any, input: Any) -> Any:
        out = run.step("a", lambda: calls.append("a") or "A", input={"q": input["q"]})
        if crash_once:
            crash_once.pop()
            raise RuntimeError("crash after a")
        return out

    run = tide.runs.create("replay", input={"q": 1})
    crash_once.append(True)
    with raises(RuntimeError) as caught:
        tide.run("replay", wf, run_id=run["id"])
    assert "crash after a" in str(caught.value), caught.value
    assert tide.runs.get(run["id"])["run"]["status"] == "failed"
    assert tide.run("replay", wf, run_id=run["id"]) == "A"  # resumes a failed run; "a" replays
    assert calls == ["a"], calls

    def changed(run: Any, _input: Any) -> Any:
        return run.step("a", lambda: "B", input={"q": 2})

    run_b = tide.runs.create("replay", input={"q": 1})
    crash_once.append(True)
    with contextlib.suppress(RuntimeError):
        tide.run("replay", wf, run_id=run_b["id"])
    with raises(ValueError) as caught:
        tide.run("replay", changed, run_id=run_b["id"])
    assert "input hash changed" in str(caught.value), caught.value
    assert calls == ["a", "a"], calls

    # Another worker while a step is leased: locked.
    run2 = tide.runs.create("fenced")
    began = threading.Event()
    release = threading.Event()

    def slow_body() -> str:
        began.set()
        assert release.wait(15)
        return "slow-done"

    def slow(run: Any, _i: Any) -> Any:
        return run.step("slow", slow_body)

    _, out = in_thread(lambda: tide.run("fenced", slow, run_id=run2["id"]))
    assert began.wait(15)
    from tidebase import RunContext

    with raises(RuntimeError) as caught:
        RunContext(tide, run2["id"], "intruder").step("slow", lambda: "stolen")
    # Upstream answers 200 {"action":"locked"} (the client raises RuntimeError "...leased by another
    # worker"). This server fences harder: a caller that does not hold the run's live lease gets
    # 409 lease_lost (TidebaseError, also a RuntimeError). Either way the intruder cannot execute.
    message = str(caught.value)
    if "leased by another worker" in message:
        intruder = "locked"
    else:
        assert isinstance(caught.value, tidebase.TidebaseError), caught.value
        assert caught.value.status == 409 and '"lease_lost"' in caught.value.body, caught.value
        intruder = "409 lease_lost"
    release.set()
    kind, value = out.get(timeout=15)
    assert (kind, value) == ("ok", "slow-done"), (kind, value)
    listed = tide.runs.list()
    assert listed[0]["id"] == run2["id"], [r["id"] for r in listed[:3]]
    with raises(ValueError) as caught:
        tide.run("other-name", wf, run_id=run2["id"])
    return {"calls": calls, "intruder": intruder}


# ---- queues and schedules --------------------------------------------------------------------


@scenario
def queue_work() -> dict[str, Any]:
    """enqueue + work(): dedupe, priority order, a failing queue run requeued with backoff."""
    tide = Tidebase()
    queue = "interop-" + os.urandom(4).hex()
    order: list[int] = []

    @tide.workflow("double")
    def double(run: Any, input: Any) -> int:
        return int(run.step("double", lambda: order.append(input["x"]) or input["x"] * 2, input=input))

    first = tide.enqueue("double", queue=queue, input={"x": 1}, dedupe_key="same")
    again = tide.enqueue("double", queue=queue, input={"x": 99}, dedupe_key="same")
    assert not first["deduplicated"] and again["deduplicated"], (first, again)
    assert again["run"]["id"] == first["run"]["id"]
    tide.enqueue("double", queue=queue, input={"x": 2}, priority=10)
    tide.enqueue("double", queue=queue, input={"x": 3}, delay_s=3600)  # not ready
    rounds = {"n": 0}

    def stop() -> bool:
        rounds["n"] += 1
        return rounds["n"] > 4

    tide.work([queue], poll_s=0.05, stop=stop)
    assert order == [2, 1], order
    stats = {q["name"]: q for q in tide.queues.list()}[queue]
    assert (stats["completed"], stats["queued"], stats["running"]) == (2, 1, 0), stats
    done = tide.runs.get(first["run"]["id"])
    assert done["run"]["status"] == "completed" and done["run"]["result"] == 2, done["run"]
    assert event_types(done)[:3] == ["run.enqueued", "run.claimed", "step.started"], event_types(done)
    # The dedupe key is free again once its run is terminal.
    fresh = tide.enqueue("double", queue=queue, input={"x": 5}, dedupe_key="same")
    assert not fresh["deduplicated"] and fresh["run"]["id"] != first["run"]["id"]

    # A failing queue run with attempts left goes back to the queue with a backoff.
    @tide.workflow("flaky")
    def flaky(run: Any, input: Any) -> None:
        raise RuntimeError("boom")

    flaky_run = tide.enqueue("flaky", queue=queue + "-f", max_attempts=2)["run"]
    rounds["n"] = 0
    tide.work([queue + "-f"], poll_s=0.05, stop=stop)
    after = tide.runs.get(flaky_run["id"])["run"]
    assert after["status"] == "queued" and after["attempt"] == 1 and after["error"]["message"] == "boom", after
    assert after["runAt"] > after["updatedAt"][:19], after
    return {"order": order, "deduplicated": again["deduplicated"], "requeued": after["status"]}


@scenario
def queue_config_and_cancel() -> dict[str, Any]:
    """Queue caps round trip; cancelling a queued run is one-way and workers never see it."""
    tide = Tidebase()
    queue = "cfg-" + os.urandom(4).hex()
    config = tide.queues.configure(queue, concurrency=3, rate_per_minute=100)["config"]
    assert (config["concurrency"], config["ratePerMinute"]) == (3, 100), config
    kept = tide.queues.configure(queue)["config"]  # null keeps
    assert kept["concurrency"] == 3, kept
    run = tide.enqueue("never", queue=queue)["run"]
    cancelled = tide.runs.cancel(run["id"], reason="not needed", actor="interop")
    assert cancelled["status"] == "cancelled" and cancelled["cancelReason"] == "not needed", cancelled
    again = tide.runs.cancel(run["id"], reason="second")
    assert again["cancelReason"] == "not needed", again
    claimed = tide.request("POST", "/queues/claim", {"queues": [queue], "limit": 5})
    assert claimed["runs"] == [], claimed
    return {"config": kept, "cancel_reason": again["cancelReason"]}


@scenario
def schedule_round_trip() -> dict[str, Any]:
    """PUT/GET/DELETE a schedule; an invalid cron is a 4xx that says why."""
    tide = Tidebase()
    name = "nightly-" + os.urandom(4).hex()
    sched = tide.schedules.set(name, cron="0 3 * * *", workflow_name="report", input={"k": 1}, max_attempts=2)
    assert sched["cron"] == "0 3 * * *" and sched["nextRunAt"].endswith("T03:00:00.000Z"), sched
    assert sched["maxAttempts"] == 2 and sched["enabled"] is True, sched
    listed = [s["name"] for s in tide.schedules.list()]
    assert name in listed and listed == sorted(listed), listed
    replaced = tide.schedules.set(name, cron="*/5 * * * *", workflow_name="report")
    assert replaced["input"] == {} and replaced["maxAttempts"] == 1, replaced  # full replace
    with raises(tidebase.TidebaseError) as caught:
        tide.schedules.set(name + "-bad", cron="61 * * * *", workflow_name="report")
    assert caught.value.status == 400 and "minute" in caught.value.body.lower(), caught.value.body
    assert tide.schedules.delete(name) == {"deleted": name}
    with raises(tidebase.TidebaseError) as missing:
        tide.schedules.delete(name)
    assert missing.value.status == 404
    return {"next": sched["nextRunAt"], "bad_cron_status": caught.value.status}


def main(argv: list[str]) -> int:
    name, *args = argv
    result = SCENARIOS[name](*args)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
