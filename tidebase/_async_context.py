"""What a workflow receives: ``AsyncRunContext`` and the ``AsyncRunSession`` handle.

Written once: ``_async_context.py`` is the hand-written source, and ``scripts/unasync.py``
generates the blocking flavour (``_context.py``) from it; see ``_async_client.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

from . import _async_budget, _budget, _current, _tracing
from . import _async_primitives as flavour
from . import _base as base
from . import _protocol as protocol
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
    from ._async_client import AsyncTidebase, AsyncWorkflow

__all__ = [
    "AsyncRunContext",
    "AsyncRunGates",
    "AsyncRunSession",
    "AsyncRunSnapshots",
    "AsyncRunState",
    "AsyncRunUsage",
]


class AsyncRunContext:
    """The handle a workflow gets as ``run``: steps, gates, state, usage."""

    def __init__(self, client: AsyncTidebase, run_id: str, lease_owner: str) -> None:
        self._client = client
        self.run_id = run_id
        self._lease_owner = lease_owner
        self.on_budget: _budget.OnBudget = "wait"  # at a reached budget: wait at its gate, or raise BudgetParked
        self._checkpoints = StepCache()
        self.state = AsyncRunState(client, run_id)
        self.usage = AsyncRunUsage(client, run_id)
        self.snapshots = AsyncRunSnapshots(client, run_id)
        self.gates = AsyncRunGates(client, run_id)

    @property
    def lease_owner(self) -> str:
        return self._lease_owner

    async def _load_checkpoints(self) -> None:
        answer = await self._client._list_completed_steps(self.run_id)
        if answer is not None:
            self._checkpoints.load(answer)

    # ---- steps -------------------------------------------------------------

    async def step(
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
            return await self._attempts(spec, fn)

    async def _attempts(self, spec: StepSpec, fn: Callable[[], Any]) -> Any:
        attempts = spec.retries + 1
        for attempt in range(1, attempts + 1):
            answer = await self._begin_step(spec)
            if protocol.check_begin(answer, self.run_id, spec, self._steps_path("begin")) == "return":
                self._checkpoints.remember(spec, answer.get("output"))
                return spec.replayed(answer.get("output"))
            step_id, owner = answer["step"]["id"], answer.get("leaseOwner") or self._lease_owner
            try:
                with _current.step_scope(self.run_id, spec.name, step_id):
                    result = await flavour.call_step(fn, spec.timeout_s, f"step {spec.name!r}")
                encoded = spec.encode_output(result)
            except RunCancelled:
                raise
            except Exception as error:
                final = attempt == attempts or isinstance(error, protocol.FATAL_STEP_ERRORS)
                await self._fail_step(spec, step_id, owner, error, retryable=not final)
                if final:
                    raise
                continue
            await self._complete_step(spec, step_id, owner, encoded)
            self._checkpoints.remember(spec, encoded)
            return spec.fresh(result, encoded)
        raise AssertionError("unreachable")  # pragma: no cover

    def _steps_path(self, tail: str) -> str:
        return f"/runs/{self.run_id}/steps/{tail}"

    async def _begin_step(self, spec: StepSpec) -> Mapping[str, Any]:
        # sends "onBudget": "park"; a parked answer waits at the budget gate (or raises BudgetParked)
        # and begins again once an operator approves or raises the limit
        return await _async_budget.abegin_step(self, spec)

    async def _complete_step(self, spec: StepSpec, step_id: str, owner: str, encoded: Any) -> None:
        body = {"leaseOwner": owner, "output": encoded}
        path = self._steps_path(f"{step_id}/complete")
        try:
            await self._client._send(Call("POST", path, body, safe=True))
        except Conflict as error:
            # A retried complete whose first response was lost lands here too:
            # ask again, and accept the checkpoint if it is already there.
            try:
                answer = await self._begin_step(spec)
                action = protocol.check_begin(answer, self.run_id, spec, self._steps_path("begin"))
            except StepLocked:
                raise LeaseLost(
                    str(error), status=error.status, code="lease_lost", body=error.body, path=path
                ) from error
            if action == "execute":
                # Our complete was refused and the checkpoint is not there: the lease was
                # taken from us (e.g. the run was begun again). Never write under a lease
                # re-acquired after that; give it back and stop.
                await self._fail_step(
                    spec, answer["step"]["id"], answer.get("leaseOwner") or owner, error, retryable=True
                )
                raise LeaseLost(
                    str(error), status=error.status, code="lease_lost", body=error.body, path=path
                ) from error

    async def _fail_step(
        self, spec: StepSpec, step_id: str, owner: str, error: BaseException, *, retryable: bool
    ) -> None:
        with contextlib.suppress(TidebaseError, RunCancelled):  # the step's own error matters more
            await self._client._send(
                Call(
                    "POST",
                    self._steps_path(f"{step_id}/fail"),
                    spec.fail_body(owner, error, retryable=retryable),
                    safe=True,
                )
            )

    # ---- gates -------------------------------------------------------------

    async def gate(
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
        begun = await self._client._send(
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
            answer = await self._client._send(
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
                    await flavour.sleep(pause)
        return GateDecision.from_gate(gate)

    # ---- children ----------------------------------------------------------

    async def child(
        self,
        workflow_name: str,
        workflow: AsyncWorkflow | None = None,
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
        answer = await self._client._send(
            Call("POST", f"/runs/{self.run_id}/children", base.child_body(workflow_name, name, options), safe=True)
        )
        return await self._client.run(workflow_name, workflow, run_id=answer["run"]["id"])

    async def fanout(self, name: str, children: list[Mapping[str, Any]], *, checkpoint: str | None = None) -> Any:
        """Run children concurrently (threads in the blocking client, tasks in the asyncio one)
        and checkpoint the joined results.

        Each child is ``{"name", "workflow", "workflow_name"?, "input"?,
        "metadata"?, "recovery_webhook"?, "channels"?}``.
        """

        async def start(child: Mapping[str, Any]) -> Any:
            return await self.child(
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

        results = await flavour.gather(start, children)
        return await self.step(
            f"join:{checkpoint or name}",
            lambda: results,
            input=base.fanout_join_input(name, list(children)),
            replay="auto",
            checkpoint_invariant=base.FANOUT_INVARIANT,
        )

    # ---- shortcuts ---------------------------------------------------------

    async def state_set(self, value: Any, **options: Any) -> dict[str, Any]:
        return await self.state.set(value, **options)

    async def state_patch(self, value: Any, **options: Any) -> dict[str, Any]:
        return await self.state.patch(value, **options)

    async def state_save(self, label: str, **options: Any) -> dict[str, Any]:
        return await self.state.save(label, **options)

    async def usage_record(self, **fields: Any) -> dict[str, Any]:
        return await self.usage.record(**fields)


class _AsyncRunResource:
    def __init__(self, client: AsyncTidebase, run_id: str) -> None:
        self._client = client
        self._run_id = run_id

    async def _call(self, method: str, tail: str, body: Any = None, **kwargs: Any) -> Any:
        extra = {} if body is None else {"body": body}
        return await self._client._send(Call(method, f"/runs/{self._run_id}{tail}", **extra, **kwargs))


class AsyncRunGates(_AsyncRunResource):
    """Non-blocking gates, for callers that cannot wait on a human."""

    async def begin(
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
        return protocol.map_gate((await self._call("POST", "/gates/begin", body, safe=True))["gate"])

    async def get(self, gate_id: str) -> dict[str, Any]:
        answer = await self._call("GET", f"/gates/{gate_id}", safe=True)
        return protocol.map_gate(protocol.gate_poll_answer(answer, self._run_id))


class AsyncRunState(_AsyncRunResource):
    """Live run state and its version history.

    Options: ``stream``, ``label``, ``reason``, ``importance``, ``metadata``, ``created_by``.
    """

    async def set(self, value: Any, **options: Any) -> dict[str, Any]:
        state: dict[str, Any] = await self._call("PUT", "/state", {"value": value, **base.state_options(options)})
        return state

    async def patch(self, value: Any, **options: Any) -> dict[str, Any]:
        state: dict[str, Any] = await self._call("PATCH", "/state", {"value": value, **base.state_options(options)})
        return state

    async def save(self, label: str, **options: Any) -> dict[str, Any]:
        body = {"label": label, **base.state_options(options)}
        saved: dict[str, Any] = await self._call("POST", "/state/save", body)
        return saved

    async def versions(self, stream: str | None = None, labeled: bool | None = None) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/state/versions", params=base.versions_params(stream, labeled), safe=True)
        versions: list[dict[str, Any]] = answer["stateVersions"]
        return versions


class AsyncRunUsage(_AsyncRunResource):
    async def record(self, **fields: Any) -> dict[str, Any]:
        """Record usage: ``kind``, ``provider``, ``model``, ``input_tokens``,
        ``output_tokens``, ``total_tokens``, ``cost_usd``, ``quantity``,
        ``unit``, ``label``, ``step_id``, ``metadata``."""
        _current.note_usage_record(self._run_id, fields)
        answer: dict[str, Any] = await self._call("POST", "/usage", base.usage_body(fields), safe=True)
        return answer


class AsyncRunSnapshots(_AsyncRunResource):
    async def create(self, label: str, state: Any, **options: Any) -> dict[str, Any]:
        """Options: ``target`` (``{"type", "id"}``), ``reason``, ``metadata``, ``created_by``."""
        answer: dict[str, Any] = await self._call("POST", "/snapshots", base.snapshot_body(label, state, options))
        return answer

    async def list(self) -> list[dict[str, Any]]:
        snapshots: list[dict[str, Any]] = (await self._call("GET", "/snapshots", safe=True))["snapshots"]
        return snapshots


class AsyncRunSession(AsyncRunContext):
    """A run held open by a session (see ``tide.runs.attach``).

    The run lease is renewed every ``heartbeat_s`` in the background (a daemon thread in the
    blocking client, an asyncio task in the asyncio one); on the first failure the heartbeat
    stops and calls ``on_lease_lost(error)`` (the asyncio client awaits an awaitable it returns).
    Finish with :meth:`complete` or :meth:`fail`; :meth:`aclose` only stops heartbeating. As a
    context manager it closes on exit and fails the run on an exception.
    """

    def __init__(
        self,
        client: AsyncTidebase,
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

    async def heartbeat(self) -> dict[str, Any]:
        """Renew the lease once; raises if it is lost."""
        answer: dict[str, Any] = await self._client._send(
            Call("POST", f"/runs/{self.run_id}/heartbeat", {"leaseOwner": self._lease_owner}, safe=True)
        )
        return answer

    async def complete(self, result: Any = None) -> dict[str, Any]:
        await self.aclose()
        answer: dict[str, Any] = await self._client._send(
            Call("POST", f"/runs/{self.run_id}/complete", {"result": result})
        )
        return answer

    async def fail(self, error: BaseException | str) -> dict[str, Any]:
        await self.aclose()
        body = base.serialize_error(error) if isinstance(error, BaseException) else {"message": str(error)}
        answer: dict[str, Any] = await self._client._send(Call("POST", f"/runs/{self.run_id}/fail", {"error": body}))
        return answer

    # unasync: async-only begin
    def close(self) -> None:
        """Stop heartbeating (without waiting) and report nothing."""
        if self._heartbeat is not None:
            self._heartbeat.stop()

    # unasync: async-only end
    async def aclose(self) -> None:
        """Stop heartbeating without reporting an outcome (the asyncio client also waits for the
        heartbeat task to end)."""
        if self._heartbeat is not None:
            await self._heartbeat.aclose()

    async def gates_begin(self, name: str, prompt: str, **options: Any) -> dict[str, Any]:
        return await self.gates.begin(name, prompt, **options)

    async def gates_get(self, gate_id: str) -> dict[str, Any]:
        return await self.gates.get(gate_id)

    async def __aenter__(self) -> Self:
        self._current_token = _current.enter_run(self)  # current while the session is entered
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        _current.exit_run(getattr(self, "_current_token", None))
        if isinstance(exc, Exception) and not isinstance(exc, RunCancelled):
            with contextlib.suppress(TidebaseError, RunCancelled):
                await self.fail(exc)
        await self.aclose()
