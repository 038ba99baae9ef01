"""A small in-memory stand-in for the Tidebase HTTP API, for SDK unit tests.

It implements just enough of PROTOCOL.md (runs, steps, gates, state, usage,
children, queues) to drive the clients through ``httpx.MockTransport``, and
records every request. ``fake.inject(...)`` queues canned responses or
transport errors for matching requests.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Injection:
    method: str
    pattern: str
    outcome: Any  # httpx.Response | Exception | callable(request) -> Response
    times: int = 1


@dataclass
class FakeServer:
    supports_step_listing: bool = True
    supports_long_poll: bool = True
    resolve_gate_after_polls: int | None = None  # auto-approve on the Nth poll
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    injections: list[Injection] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    gate_polls: int = 0

    # ---- test helpers ------------------------------------------------------

    def inject(self, method: str, pattern: str, outcome: Any, times: int = 1) -> None:
        self.injections.append(Injection(method, pattern, outcome, times))

    def calls(self, method: str | None = None, pattern: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if (method is None or r.method == method) and re.search(pattern, r.url.path)]

    def add_run(self, workflow: str = "wf", status: str = "running", input: Any = None) -> dict[str, Any]:
        run = {
            "id": _id("run"),
            "workflowName": workflow,
            "status": status,
            "input": input or {},
            "result": None,
            "attempt": 1,
            "leaseOwner": None,
        }
        self.runs[run["id"]] = run
        self.steps[run["id"]] = {}
        return run

    def add_completed_step(self, run_id: str, name: str, input_hash: str, output: Any) -> None:
        self.steps[run_id][name] = {
            "id": _id("step"),
            "name": name,
            "inputHash": input_hash,
            "status": "completed",
            "output": output,
            "leaseOwner": None,
            "attempt": 1,
        }

    def resolve(self, gate_id: str, decision: str = "approved", actor: str = "ops") -> None:
        gate = self.gates[gate_id]
        gate.update(status=decision, decision=decision, actor=actor, decisionPayload={"via": "test"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ---- dispatch ----------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for injection in self.injections:
            if (
                injection.times
                and request.method == injection.method
                and re.search(injection.pattern, request.url.path)
            ):
                injection.times -= 1
                outcome = injection.outcome
                if isinstance(outcome, Exception):
                    raise outcome
                if callable(outcome):
                    return outcome(request)
                return outcome
        body = json.loads(request.content) if request.content else None
        path = request.url.raw_path.decode().split("?")[0]
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match and method == request.method:
                status, payload = handler(request, body, *(unquote(g) for g in match.groups()))
                return httpx.Response(status, json=payload)
        return httpx.Response(404, text="404 Not Found")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("POST", r"/runs/(run_\w+)/begin", self._begin),
            ("POST", r"/runs/(run_\w+)/complete", self._complete),
            ("POST", r"/runs/(run_\w+)/fail", self._fail),
            ("POST", r"/runs/(run_\w+)/cancel", self._cancel),
            ("POST", r"/runs/(run_\w+)/heartbeat", self._heartbeat),
            ("POST", r"/runs/(run_\w+)/children", self._children),
            ("POST", r"/runs/(run_\w+)/steps/begin", self._step_begin),
            ("POST", r"/runs/(run_\w+)/steps/(step_\w+)/complete", self._step_complete),
            ("POST", r"/runs/(run_\w+)/steps/(step_\w+)/fail", self._step_fail),
            ("POST", r"/runs/(run_\w+)/gates/begin", self._gate_begin),
            ("GET", r"/runs/(run_\w+)/gates/(gate_\w+)", self._gate_get),
            ("PUT", r"/runs/(run_\w+)/state", self._state),
            ("PATCH", r"/runs/(run_\w+)/state", self._state),
            ("POST", r"/runs/(run_\w+)/usage", self._usage),
            ("GET", r"/runs/(run_\w+)", self._get),
            ("GET", r"/runs", lambda request, body: (200, {"runs": list(self.runs.values())})),
            ("POST", r"/queues/claim", self._claim),
            ("POST", r"/queues/([^/]+)/enqueue", self._enqueue),
            ("POST", r"/runs/([^/]+)", self._create),
        ]
        if self.supports_step_listing:
            routes.insert(0, ("GET", r"/runs/(run_\w+)/steps", self._list_steps))
        return routes

    # ---- runs --------------------------------------------------------------

    def _create(self, request: httpx.Request, body: Any, workflow: str) -> tuple[int, Any]:
        run = self.add_run(workflow, status="pending", input=(body or {}).get("input"))
        run["attempt"] = 0
        return 200, {"run": run}

    def _get(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        if run_id not in self.runs:
            return 404, {"error": "run not found", "code": "not_found"}
        return 200, {"run": self.runs[run_id], "steps": list(self.steps[run_id].values())}

    def _begin(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        run = self.runs[run_id]
        if run["status"] == "cancelled":
            return 409, {"error": "run is cancelled", "code": "run_cancelled", "run": run}
        owner = request.headers.get("x-tidebase-worker") or str(uuid.uuid4())
        run.update(status="running", leaseOwner=owner, attempt=run["attempt"] + 1)
        return 200, {"run": run, "leaseOwner": owner}

    def _complete(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        run = self.runs[run_id]
        if run["status"] != "cancelled":
            run.update(status="completed", result=body["result"])
        return 200, {"run": run}

    def _fail(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        run = self.runs[run_id]
        run.update(status="failed", error=body["error"])
        return 200, {"run": run, "requeued": False}

    def _cancel(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        self.runs[run_id]["status"] = "cancelled"
        return 200, {"run": self.runs[run_id]}

    def _heartbeat(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        run = self.runs[run_id]
        if run["status"] == "cancelled":
            return 409, {"error": "lease lost", "code": "run_cancelled", "run": run}
        if run["leaseOwner"] != body["leaseOwner"]:
            return 409, {"error": "lease lost", "code": "lease_lost", "run": run}
        return 200, {"run": run}

    def _children(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        child = self.add_run(body["workflowName"], status="pending", input=body.get("input"))
        return 200, {"run": child, "edge": {"name": body["name"]}, "created": True}

    # ---- steps -------------------------------------------------------------

    def _list_steps(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        wanted = request.url.params.get("status")
        steps = [s for s in self.steps[run_id].values() if wanted is None or s["status"] == wanted]
        return 200, {"steps": steps}

    def _step_begin(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        if self.runs[run_id]["status"] == "cancelled":
            return 200, {"action": "cancelled"}
        step = self.steps[run_id].get(body["name"])
        if step and step["inputHash"] != body["inputHash"]:
            return 200, {
                "action": "input_mismatch",
                "step": step,
                "expectedInputHash": step["inputHash"],
                "actualInputHash": body["inputHash"],
            }
        if step and step["status"] == "completed":
            return 200, {"action": "return", "step": step, "output": step["output"]}
        if step and step["leaseOwner"] not in (None, body["leaseOwner"]):
            return 200, {"action": "locked", "step": step}
        if step is None:
            step = {"id": _id("step"), "name": body["name"], "attempt": 0, "output": None}
            self.steps[run_id][body["name"]] = step
        step.update(
            status="running",
            inputHash=body["inputHash"],
            input=body["input"],
            options=body["options"],
            leaseOwner=body["leaseOwner"],
            attempt=step["attempt"] + 1,
        )
        return 200, {"action": "execute", "step": step, "leaseOwner": body["leaseOwner"]}

    def _find_step(self, run_id: str, step_id: str, owner: str) -> dict[str, Any] | None:
        for step in self.steps[run_id].values():
            if step["id"] == step_id and step["leaseOwner"] == owner and owner is not None:
                return step
        return None

    def _step_complete(self, request: httpx.Request, body: Any, run_id: str, step_id: str) -> tuple[int, Any]:
        step = self._find_step(run_id, step_id, body["leaseOwner"])
        if step is None:
            return 409, {"error": "step not found or lease lost", "code": "lease_lost"}
        step.update(status="completed", output=body.get("output"), leaseOwner=None)
        return 200, {"step": step}

    def _step_fail(self, request: httpx.Request, body: Any, run_id: str, step_id: str) -> tuple[int, Any]:
        step = self._find_step(run_id, step_id, body["leaseOwner"])
        if step is None:
            return 409, {"error": "step not found or lease lost", "code": "lease_lost"}
        status = "failed_retryable" if body.get("retryable") else "failed"
        step.update(status=status, error=body.get("error"), leaseOwner=None, resumeDecision=body.get("resumeDecision"))
        return 200, {"step": step}

    # ---- gates, state, usage, queues --------------------------------------

    def _gate_begin(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        if self.runs[run_id]["status"] == "cancelled":
            return 409, {"error": "run is cancelled", "code": "run_cancelled"}
        for gate in self.gates.values():
            if gate["runId"] == run_id and gate["name"] == body["name"]:
                return 200, {"action": "wait", "gate": gate}
        gate = {
            "id": _id("gate"),
            "runId": run_id,
            "name": body["name"],
            "prompt": body["prompt"],
            "status": "pending",
            "decision": None,
            "actor": None,
            "decisionPayload": None,
        }
        self.gates[gate["id"]] = gate
        return 200, {"action": "wait", "gate": gate}

    def _gate_get(self, request: httpx.Request, body: Any, run_id: str, gate_id: str) -> tuple[int, Any]:
        self.gate_polls += 1
        due = self.resolve_gate_after_polls is not None and self.gate_polls >= self.resolve_gate_after_polls
        if due and self.gates[gate_id]["status"] == "pending":
            self.resolve(gate_id)
        return 200, {"gate": self.gates[gate_id], "runStatus": self.runs[run_id]["status"]}

    def _state(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        return 200, {"state": {"runId": run_id, "value": body["value"], "version": 1}}

    def _usage(self, request: httpx.Request, body: Any, run_id: str) -> tuple[int, Any]:
        self.usage.append(body)
        return 200, {"usage": {"id": _id("use"), "runId": run_id, **body}}

    def _claim(self, request: httpx.Request, body: Any) -> tuple[int, Any]:
        owner = body.get("leaseOwner") or str(uuid.uuid4())
        ready = [r for r in self.runs.values() if r["status"] == "queued"][: body.get("limit", 1)]
        for run in ready:
            run.update(status="running", leaseOwner=owner, attempt=run["attempt"] + 1)
        return 200, {"runs": ready, "leaseOwner": owner}

    def _enqueue(self, request: httpx.Request, body: Any, queue: str) -> tuple[int, Any]:
        run = self.add_run(body["workflowName"], status="queued", input=body.get("input"))
        run["attempt"] = 0
        return 200, {"run": run, "deduplicated": False}
