# generated from tidebase/_async_context.py by scripts/unasync.py; do not edit (make sdk-sync)
"""What a workflow receives: ``RunContext`` and the ``RunSession`` handle.

Written once: ``_async_context.py`` is the hand-written source, and ``scripts/unasync.py``
generates the blocking flavour (``_context.py``) from it; see ``_async_client.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

from . import _base as base
from . import _budget, _current, _sync_budget, _tracing
from . import _protocol as protocol
from . import _sync_primitives as flavour
from ._base import Call
from ._exceptions import (
    Conflict,
    GateTimeout,
    LeaseLost,
    RunCancelled,
    StepLocked,
    TidebaseError,
)
from ._protocol import GateDecision, GateWaiter, StepCache, StepSpec

if TYPE_CHECKING:
    from ._client import Tidebase, Workflow

__all__ = [
    "RunContext",
    "RunGates",
    "RunSession",
    "RunSnapshots",
    "RunState",
    "RunUsage",
]


class RunContext:
    """The handle a workflow gets as ``run``: steps, gates, state, usage."""

    def __init__(self, client: Tidebase, run_id: str, lease_owner: str) -> None:
        self._client = client
        self.run_id = run_id
        self._lease_owner = lease_owner
        self.on_budget: _budget.OnBudget = "wait"  # at a reached budget: wait at its gate, or raise BudgetParked
        self._checkpoints = StepCache()
        self.state = RunState(client, run_id)
        self.usage = RunUsage(client, run_id)
        self.snapshots = RunSnapshots(client, run_id)
        self.gates = RunGates(client, run_id)

    @property
    def lease_owner(self) -> str:
        return self._lease_owner

    def _load_checkpoints(self) -> None:
        answer = self._client._list_completed_steps(self.run_id)
        if answer is not None:
            self._checkpoints.load(answer)

    # ---- steps -------------------------------------------------------------

    def step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        input: Any = None,
        input_hash: str | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        side_effects: list[str] | None = None,
        idempotency_key: str | None = None,
        replay: str | None = None,
        checkpoint_invariant: Any = None,
        verified_by: Any = None,
        credentials: list[Any] | None = None,
        returns: Any = None,
    ) -> Any:
        """Run ``fn`` (sync, async, or returning an awaitable) once per run and checkpoint its result.

        On a resume the stored JSON comes back instead of calling ``fn``
        (objects as :class:`~tidebase.CheckpointDict`, or validated into
        ``returns`` when given). Declare ``side_effects`` and an
        ``idempotency_key`` for external writes.

        ``timeout_s`` bounds each attempt: a result not there in time fails the attempt with
        ``TimeoutError`` (``retries`` apply). An awaitable result is cancelled at the deadline.
        The blocking client runs ``fn`` in a worker thread when ``timeout_s`` is given and stops
        waiting at the deadline (the thread cannot be stopped: it finishes in the background and
        its result is dropped); the asyncio client calls ``fn`` on the event loop, where only the
        awaitable it returns can be timed out.
        """
        spec = StepSpec.build(
            name,
            input=input,
            input_hash=input_hash,
            retries=retries,
            timeout_s=timeout_s,
            side_effects=side_effects,
            idempotency_key=idempotency_key,
            replay=replay,
            checkpoint_invariant=checkpoint_invariant,
            verified_by=verified_by,
            credentials=credentials,
            returns=returns,
        )
        hit, value = self._checkpoints.lookup(spec, self._steps_path("begin"))
        if hit:
            return value
        with _tracing.step_span(self.run_id, spec.name):  # a no-op without OpenTelemetry
            return self._attempts(spec, fn)

    def _attempts(self, spec: StepSpec, fn: Callable[[], Any]) -> Any:
        attempts = spec.retries + 1
        for attempt in range(1, attempts + 1):
            answer = self._begin_step(spec)
            if protocol.check_begin(answer, self.run_id, spec, self._steps_path("begin")) == "return":
                self._checkpoints.remember(spec, answer.get("output"))
                return spec.replayed(answer.get("output"))
            step_id, owner = answer["step"]["id"], answer.get("leaseOwner") or self._lease_owner
            try:
                with _current.step_scope(self.run_id, spec.name, step_id):
                    result = flavour.call_step(fn, spec.timeout_s, f"step {spec.name!r}")
                encoded = spec.encode_output(result)
            except RunCancelled:
                raise
            except Exception as error:
                final = attempt == attempts or isinstance(error, protocol.FATAL_STEP_ERRORS)
                self._fail_step(spec, step_id, owner, error, retryable=not final)
                if final:
                    raise
                continue
            self._complete_step(spec, step_id, owner, encoded)
            self._checkpoints.remember(spec, encoded)
            return spec.fresh(result, encoded)
        raise AssertionError("unreachable")  # pragma: no cover

    def _steps_path(self, tail: str) -> str:
        return f"/runs/{self.run_id}/steps/{tail}"

    def _begin_step(self, spec: StepSpec) -> Mapping[str, Any]:
        # sends "onBudget": "park"; a parked answer waits at the budget gate (or raises BudgetParked)
        # and begins again once an operator approves or raises the limit
        return _sync_budget.begin_step(self, spec)

    def _complete_step(self, spec: StepSpec, step_id: str, owner: str, encoded: Any) -> None:
        body = {"leaseOwner": owner, "output": encoded}
        path = self._steps_path(f"{step_id}/complete")
        try:
            self._client._send(Call("POST", path, body, safe=True))
        except Conflict as error:
            # A retried complete whose first response was lost lands here too:
            # ask again, and accept the checkpoint if it is already there.
            try:
                answer = self._begin_step(spec)
                action = protocol.check_begin(answer, self.run_id, spec, self._steps_path("begin"))
            except StepLocked:
                raise LeaseLost(
                    str(error), status=error.status, code="lease_lost", body=error.body, path=path
                ) from error
            if action == "execute":
                # Our complete was refused and the checkpoint is not there: the lease was
                # taken from us (e.g. the run was begun again). Never write under a lease
                # re-acquired after that; give it back and stop.
                self._fail_step(spec, answer["step"]["id"], answer.get("leaseOwner") or owner, error, retryable=True)
                raise LeaseLost(
                    str(error), status=error.status, code="lease_lost", body=error.body, path=path
                ) from error

    def _fail_step(self, spec: StepSpec, step_id: str, owner: str, error: BaseException, *, retryable: bool) -> None:
        with contextlib.suppress(TidebaseError, RunCancelled):  # the step's own error matters more
            self._client._send(
                Call(
                    "POST",
                    self._steps_path(f"{step_id}/fail"),
                    spec.fail_body(owner, error, retryable=retryable),
                    safe=True,
                )
            )

    # ---- gates -------------------------------------------------------------

    def gate(
        self,
        name: str,
        prompt: str,
        data: Any = None,
        channels: list[Any] | None = None,
        capability: Any = None,
        timeout_s: float | None = None,
        poll_s: float = 1.0,
    ) -> GateDecision:
        """Open (or rejoin) the gate ``name`` and wait until a human decides (long-poll).

        Raises :class:`GateTimeout` after ``timeout_s`` (the gate stays open),
        :class:`RunCancelled` if the run is cancelled meanwhile.
        """
        begun = self._client._send(
            Call(
                "POST",
                f"/runs/{self.run_id}/gates/begin",
                base.gate_begin_body(name, prompt, data, channels, capability, timeout_s),
                safe=True,
            )
        )
        gate: Mapping[str, Any] = begun["gate"]
        waiter = GateWaiter(timeout_s, poll_s, self._client._long_polls_gates)
        while gate["status"] == "pending":
            if waiter.expired():
                raise GateTimeout(f"Gate {name!r} was not resolved within {timeout_s}s", code="gate_timeout")
            asked_ms, started = waiter.wait_ms(), time.monotonic()
            answer = self._client._send(
                Call(
                    "GET",
                    f"/runs/{self.run_id}/gates/{gate['id']}",
                    params=waiter.params(),
                    safe=True,
                    timeout_s=self._client.config.timeout_s + asked_ms / 1000,
                )
            )
            gate = protocol.gate_poll_answer(answer, self.run_id)
            if gate["status"] == "pending":
                pause = waiter.after_pending_poll(asked_ms, time.monotonic() - started)
                self._client._long_polls_gates = waiter.long_poll
                if pause:
                    flavour.sleep(pause)
        return GateDecision.from_gate(gate)

    # ---- children ----------------------------------------------------------

    def child(
        self,
        workflow_name: str,
        workflow: Workflow | None = None,
        *,
        name: str | None = None,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        recovery_webhook: str | None = None,
        channels: list[Any] | None = None,
        edge_type: str = "child",
        edge_metadata: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run a child workflow as its own run. The edge ``name`` (default:
        the workflow name) makes it idempotent: a resumed parent reuses it."""
        options = {
            "input": input,
            "metadata": metadata,
            "recovery_webhook": recovery_webhook,
            "channels": channels,
            "edge_type": edge_type,
            "edge_metadata": edge_metadata,
        }
        answer = self._client._send(
            Call("POST", f"/runs/{self.run_id}/children", base.child_body(workflow_name, name, options), safe=True)
        )
        return self._client.run(workflow_name, workflow, run_id=answer["run"]["id"])

    def fanout(self, name: str, children: list[Mapping[str, Any]], *, checkpoint: str | None = None) -> Any:
        """Run children concurrently (threads in the blocking client, tasks in the asyncio one)
        and checkpoint the joined results.

        Each child is ``{"name", "workflow", "workflow_name"?, "input"?,
        "metadata"?, "recovery_webhook"?, "channels"?}``.
        """

        def start(child: Mapping[str, Any]) -> Any:
            return self.child(
                child.get("workflow_name") or child["name"],
                child["workflow"],
                name=child["name"],
                input=child.get("input"),
                metadata=child.get("metadata"),
                recovery_webhook=child.get("recovery_webhook"),
                channels=child.get("channels"),
                edge_type="fanout",
                edge_metadata={"fanout": name},
            )

        results = flavour.gather(start, children)
        return self.step(
            f"join:{checkpoint or name}",
            lambda: results,
            input=base.fanout_join_input(name, list(children)),
            replay="auto",
            checkpoint_invariant=base.FANOUT_INVARIANT,
        )

    # ---- shortcuts ---------------------------------------------------------

    def state_set(self, value: Any, **options: Any) -> dict[str, Any]:
        return self.state.set(value, **options)

    def state_patch(self, value: Any, **options: Any) -> dict[str, Any]:
        return self.state.patch(value, **options)

    def state_save(self, label: str, **options: Any) -> dict[str, Any]:
        return self.state.save(label, **options)

    def usage_record(self, **fields: Any) -> dict[str, Any]:
        return self.usage.record(**fields)


class _RunResource:
    def __init__(self, client: Tidebase, run_id: str) -> None:
        self._client = client
        self._run_id = run_id

    def _call(self, method: str, tail: str, body: Any = None, **kwargs: Any) -> Any:
        extra = {} if body is None else {"body": body}
        return self._client._send(Call(method, f"/runs/{self._run_id}{tail}", **extra, **kwargs))


class RunGates(_RunResource):
    """Non-blocking gates, for callers that cannot wait on a human."""

    def begin(
        self,
        name: str,
        prompt: str,
        *,
        data: Any = None,
        channels: list[Any] | None = None,
        capability: Any = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Open (or rejoin) a gate; returns ``{gateId, name, status, decision, actor, payload}``."""
        body = base.gate_begin_body(name, prompt, data, channels, capability, timeout_s)
        return protocol.map_gate(self._call("POST", "/gates/begin", body, safe=True)["gate"])

    def get(self, gate_id: str) -> dict[str, Any]:
        answer = self._call("GET", f"/gates/{gate_id}", safe=True)
        return protocol.map_gate(protocol.gate_poll_answer(answer, self._run_id))


class RunState(_RunResource):
    """Live run state and its version history.

    Options: ``stream``, ``label``, ``reason``, ``importance``, ``metadata``, ``created_by``.
    """

    def set(self, value: Any, **options: Any) -> dict[str, Any]:
        state: dict[str, Any] = self._call("PUT", "/state", {"value": value, **base.state_options(options)})
        return state

    def patch(self, value: Any, **options: Any) -> dict[str, Any]:
        state: dict[str, Any] = self._call("PATCH", "/state", {"value": value, **base.state_options(options)})
        return state

    def save(self, label: str, **options: Any) -> dict[str, Any]:
        body = {"label": label, **base.state_options(options)}
        saved: dict[str, Any] = self._call("POST", "/state/save", body)
        return saved

    def versions(self, stream: str | None = None, labeled: bool | None = None) -> list[dict[str, Any]]:
        answer = self._call("GET", "/state/versions", params=base.versions_params(stream, labeled), safe=True)
        versions: list[dict[str, Any]] = answer["stateVersions"]
        return versions


class RunUsage(_RunResource):
    def record(self, **fields: Any) -> dict[str, Any]:
        """Record usage: ``kind``, ``provider``, ``model``, ``input_tokens``,
        ``output_tokens``, ``total_tokens``, ``cost_usd``, ``quantity``,
        ``unit``, ``label``, ``step_id``, ``metadata``."""
        _current.note_usage_record(self._run_id, fields)
        answer: dict[str, Any] = self._call("POST", "/usage", base.usage_body(fields), safe=True)
        return answer


class RunSnapshots(_RunResource):
    def create(self, label: str, state: Any, **options: Any) -> dict[str, Any]:
        """Options: ``target`` (``{"type", "id"}``), ``reason``, ``metadata``, ``created_by``."""
        answer: dict[str, Any] = self._call("POST", "/snapshots", base.snapshot_body(label, state, options))
        return answer

    def list(self) -> list[dict[str, Any]]:
        snapshots: list[dict[str, Any]] = self._call("GET", "/snapshots", safe=True)["snapshots"]
        return snapshots


class RunSession(RunContext):
    """A run held open by a session (see ``tide.runs.attach``).

    The run lease is renewed every ``heartbeat_s`` in the background (a daemon thread in the
    blocking client, an asyncio task in the asyncio one); on the first failure the heartbeat
    stops and calls ``on_lease_lost(error)`` (the asyncio client awaits an awaitable it returns).
    Finish with :meth:`complete` or :meth:`fail`; :meth:`close` only stops heartbeating. As a
    context manager it closes on exit and fails the run on an exception.
    """

    def __init__(
        self,
        client: Tidebase,
        run: dict[str, Any],
        lease_owner: str,
        *,
        heartbeat_s: float | None = 20.0,
        on_lease_lost: Callable[[BaseException], Any] | None = None,
    ) -> None:
        super().__init__(client, run["id"], lease_owner)
        self.run = run
        self._heartbeat: flavour.Heartbeat | None = None
        if heartbeat_s:
            self._heartbeat = flavour.Heartbeat(
                self.heartbeat, heartbeat_s, on_lease_lost, name=f"tidebase-heartbeat-{self.run_id}"
            )

    @property
    def heartbeating(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.running

    def heartbeat(self) -> dict[str, Any]:
        """Renew the lease once; raises if it is lost."""
        answer: dict[str, Any] = self._client._send(
            Call("POST", f"/runs/{self.run_id}/heartbeat", {"leaseOwner": self._lease_owner}, safe=True)
        )
        return answer

    def complete(self, result: Any = None) -> dict[str, Any]:
        self.close()
        answer: dict[str, Any] = self._client._send(Call("POST", f"/runs/{self.run_id}/complete", {"result": result}))
        return answer

    def fail(self, error: BaseException | str) -> dict[str, Any]:
        self.close()
        body = base.serialize_error(error) if isinstance(error, BaseException) else {"message": str(error)}
        answer: dict[str, Any] = self._client._send(Call("POST", f"/runs/{self.run_id}/fail", {"error": body}))
        return answer

    def close(self) -> None:
        """Stop heartbeating without reporting an outcome (the asyncio client also waits for the
        heartbeat task to end)."""
        if self._heartbeat is not None:
            self._heartbeat.close()

    def gates_begin(self, name: str, prompt: str, **options: Any) -> dict[str, Any]:
        return self.gates.begin(name, prompt, **options)

    def gates_get(self, gate_id: str) -> dict[str, Any]:
        return self.gates.get(gate_id)

    def __enter__(self) -> Self:
        self._current_token = _current.enter_run(self)  # current while the session is entered
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        _current.exit_run(getattr(self, "_current_token", None))
        if isinstance(exc, Exception) and not isinstance(exc, RunCancelled):
            with contextlib.suppress(TidebaseError, RunCancelled):
                self.fail(exc)
        self.close()
