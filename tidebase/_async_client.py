"""The client, ``AsyncTidebase`` (``tidebase.aio``).

Written once: ``_async_client.py`` is the hand-written source, and ``scripts/unasync.py``
generates the blocking client (``_client.py``) from it. What the two flavours do differently
(sleeping, fan-out, heartbeats, awaitables, step timeouts) lives in ``_async_primitives.py``
and ``_sync_primitives.py``; the I/O-free rest in ``_base.py`` and ``_protocol.py``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Self, TypeVar

import httpx

from . import _async_primitives as flavour
from . import _base as base
from . import _budget, _current
from ._base import Call, ClientConfig, RetryPolicy
from ._exceptions import APIConnectionError, RunCancelled, TidebaseError
from ._json import wrap_replayed
from ._transport import AsyncLeanPool, lean_origin

__all__ = ["AsyncQueues", "AsyncRuns", "AsyncSchedules", "AsyncTidebase"]

F = TypeVar("F", bound=Callable[..., Any])
AsyncWorkflow = Callable[[Any, Any], Any]


class AsyncTidebase:
    """Client for a Tidebase server.

    ``AsyncTidebase()`` reads ``TIDEBASE_URL`` (default ``http://localhost:7373``) and
    ``TIDEBASE_API_KEY``. One connection pool is kept per instance; use it as a context manager
    or call :meth:`aclose` when done. Workflows and step functions may be sync or async. Pass
    ``transport=`` (e.g. ``httpx.MockTransport``) to test without a server.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        webhook_secret: str | None = None,
        *,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(url, api_key, webhook_secret, timeout_s)
        self.retry = retry or RetryPolicy()
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport, timeout=self.config.timeout_s)
        # The SDK's own JSON calls skip httpx when nothing was injected (see _transport.py);
        # event streams and injected transports/clients keep going through self._http.
        origin = lean_origin(self.config.url) if transport is None and http_client is None else None
        self._lean = AsyncLeanPool(origin) if origin is not None else None
        self._workflows: dict[str, AsyncWorkflow] = {}
        self._lists_steps = True  # cleared when the server lacks GET /runs/:id/steps
        self._long_polls_gates = True  # cleared when the server ignores ?waitMs=
        self.runs = AsyncRuns(self)
        self.queues = AsyncQueues(self)
        self.schedules = AsyncSchedules(self)

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def api_key(self) -> str | None:
        return self.config.api_key

    @property
    def webhook_secret(self) -> str | None:
        return self.config.webhook_secret

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        if self._owns_http:
            await self._http.aclose()

    # ---- transport ---------------------------------------------------------

    async def _send(self, call: Call) -> Any:
        content = call.content()
        headers = {**self.config.headers(), **call.headers(base.new_idempotency_key())}
        lean = self._lean.origin.render(call.method, call.path, call.params, headers, content) if self._lean else None
        attempt = 0
        while True:
            try:
                response = await self._exchange(call, content, headers, lean)
            except httpx.TransportError as error:
                attempt += 1
                if attempt > self.retry.max_retries or not base.transport_error_retryable(error, safe=call.safe):
                    raise APIConnectionError(
                        f"Tidebase request failed: {type(error).__name__}: {error} ({call.path})", path=call.path
                    ) from error
                await flavour.sleep(self.retry.delay_s(attempt))
                continue
            if attempt < self.retry.max_retries and self.retry.retry_status(response.status_code, safe=call.safe):
                attempt += 1
                await flavour.sleep(self.retry.delay_s(attempt, response.headers.get("retry-after")))
                continue
            return base.parse_response(response.status_code, response.content, call.path)

    async def _exchange(self, call: Call, content: bytes | None, headers: dict[str, str], lean: bytes | None) -> Any:
        """One HTTP exchange: the lean transport when it can carry the call (``lean`` holds its
        request bytes), else httpx. Both raise httpx's exceptions and answer with
        ``status_code``/``headers``/``content``."""
        if lean is not None and self._lean is not None:
            timeout_s = self.config.timeout_s if call.timeout_s is None else call.timeout_s
            return await self._lean.request(lean, call.method, timeout_s)
        return await self._http.request(
            call.method,
            self.config.url + call.path,
            content=content,
            params=call.params,
            headers=headers,
            timeout=httpx.USE_CLIENT_DEFAULT if call.timeout_s is None else call.timeout_s,
        )

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        safe: bool | None = None,
    ) -> Any:
        """Low-level call: returns the decoded JSON body or raises a typed error.

        GETs, PUTs and DELETEs are retried on transient failures; other methods
        only when ``safe=True`` (or when the request never left).
        """
        method = method.upper()
        kwargs: dict[str, Any] = {} if body is None else {"body": body}
        is_safe = method in ("GET", "PUT", "DELETE") if safe is None else safe
        return await self._send(Call(method, path, params=params, safe=is_safe, **kwargs))

    # ---- workflows ---------------------------------------------------------

    def workflow(self, name: str, fn: F | None = None) -> Any:
        """Register a workflow for :meth:`work` and ``run(name)``; usable as
        ``@tide.workflow("name")``."""
        if fn is not None:
            self._workflows[name] = fn
            return fn

        def decorator(f: F) -> F:
            self._workflows[name] = f
            return f

        return decorator

    def _workflow_for(self, name: str, workflow: AsyncWorkflow | None) -> AsyncWorkflow:
        found = workflow or self._workflows.get(name)
        if found is None:
            raise ValueError(f"no workflow registered for {name!r}")
        return found

    async def run(
        self,
        workflow_name: str,
        workflow: AsyncWorkflow | None = None,
        run_id: str | None = None,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        recovery_webhook: str | None = None,
        channels: list[Any] | None = None,
        budget_usd: float | None = None,
        on_budget: _budget.OnBudget = "wait",
    ) -> Any:
        """Create a run (or resume ``run_id``) and execute ``workflow(run, input)``.

        Completed steps replay from their checkpoints without re-executing.
        A completed run returns its stored result without running anything.
        ``budget_usd``: the new run's own budget. ``on_budget``: at a reached budget, ``"wait"`` at
        its gate for an operator, or ``"raise"`` ``BudgetParked`` (the run is not failed: run it
        again with ``run_id`` once the gate is decided).
        """
        fn = self._workflow_for(workflow_name, workflow)
        if run_id is None:
            run = await self.runs.create(
                workflow_name, input, metadata, recovery_webhook, channels, budget_usd=budget_usd
            )
        else:
            run = (await self.runs.get(run_id))["run"]
        base.check_workflow_name(run, workflow_name)
        if run["status"] == "completed":
            return wrap_replayed(run["result"])
        owner, run = await self._begin(run["id"])
        return await self._execute(
            run, owner, fn, list_steps=base.should_list_steps(run, run_id is not None), on_budget=on_budget
        )

    async def _begin(self, run_id: str) -> tuple[str, dict[str, Any]]:
        owner = base.new_lease_owner()
        answer = await self._send(
            Call("POST", f"/runs/{run_id}/begin", safe=True, extra_headers={"x-tidebase-worker": owner})
        )
        return answer["leaseOwner"], answer["run"]

    async def _execute(
        self,
        run: Mapping[str, Any],
        lease_owner: str,
        workflow: AsyncWorkflow,
        *,
        list_steps: bool,
        on_budget: _budget.OnBudget = "wait",
    ) -> Any:
        from ._async_context import AsyncRunContext

        context = AsyncRunContext(self, run["id"], lease_owner)
        context.on_budget = on_budget
        if list_steps:
            await context._load_checkpoints()
        try:
            with _current.running(context):  # what integrations (tidebase.pydantic_ai) find
                result = await flavour.result_of(workflow(context, run.get("input")), "workflow")
            encoded = base.encode_result(result)
        except (RunCancelled, _budget.BudgetParked):
            raise  # parked and not waiting: the run stays running until its gate is decided
        except Exception as error:
            await self._report_run_failure(run["id"], error)
            raise
        await self._send(Call("POST", f"/runs/{run['id']}/complete", {"result": encoded}))
        return result

    async def _report_run_failure(self, run_id: str, error: BaseException) -> None:
        with contextlib.suppress(TidebaseError, RunCancelled):  # the original error matters more
            await self._send(Call("POST", f"/runs/{run_id}/fail", {"error": base.serialize_error(error)}))

    async def _list_completed_steps(self, run_id: str) -> Mapping[str, Any] | None:
        if not self._lists_steps:
            return None
        try:
            answer: Mapping[str, Any] = await self._send(
                Call("GET", f"/runs/{run_id}/steps", params={"status": "completed"}, safe=True)
            )
        except TidebaseError as error:
            if error.status in (404, 405):
                self._lists_steps = False  # an older server: steps/begin per step
                return None
            raise
        return answer

    async def enqueue(self, workflow_name: str, *, queue: str = "default", **options: Any) -> dict[str, Any]:
        """Enqueue a durable queued run; returns ``{"run": ..., "deduplicated": bool}``.

        Options: ``input``, ``metadata``, ``dedupe_key``, ``delay_s``, ``run_at``
        (``…Z`` string or aware datetime), ``max_attempts``, ``priority``,
        ``deadline_s``, ``recovery_webhook``, ``channels``.
        """
        answer: dict[str, Any] = await self._send(
            Call("POST", f"/queues/{base.quote(queue)}/enqueue", base.enqueue_body(workflow_name, options), safe=True)
        )
        return answer

    async def cancel(self, run_id: str, reason: str | None = None, actor: str | None = None) -> dict[str, Any]:
        """Cancel a run; the same as :meth:`AsyncRuns.cancel`."""
        return await self.runs.cancel(run_id, reason, actor)

    async def attach(self, workflow_name: str, run_id: str | None = None, **options: Any) -> Any:
        """Hold a run as a session; the same as :meth:`AsyncRuns.attach`."""
        return await self.runs.attach(workflow_name, run_id, **options)

    async def work(
        self,
        queues: list[str] | None = None,
        *,
        lease_owner: str | None = None,
        poll_s: float = 1.0,
        limit: int = 1,
        stop: Callable[[], bool] | None = None,
        on_error: Callable[[BaseException, dict[str, Any]], Any] | None = None,
    ) -> None:
        """Pull-mode worker: claim ready runs and execute their registered workflows until
        ``stop()`` returns true. Claimed runs of unregistered workflows are failed, not left
        leased; ``on_error(error, run)`` hears of each failed run (the async client awaits it
        when it returns an awaitable)."""
        body = base.claim_body(queues or ["default"], lease_owner, limit, base.CLAIM_WAIT_MS)
        while not (stop and stop()):
            started = time.monotonic()
            claim = await self._send(base.claim_call(body))
            for run in claim["runs"]:
                fn = self._workflows.get(run["workflowName"])
                if fn is None:
                    await self._report_run_failure(
                        run["id"], LookupError(f"no workflow registered for {run['workflowName']}")
                    )
                    continue
                try:
                    await self._execute(run, claim["leaseOwner"], fn, list_steps=base.should_list_steps(run, False))
                except Exception as error:
                    if on_error is not None:
                        await flavour.settle(on_error(error, run))
            if base.should_sleep_after_claim(claim, body, time.monotonic() - started):
                await flavour.sleep(poll_s)


class AsyncRuns:
    """``tide.runs``: create, inspect, cancel and attach to runs."""

    def __init__(self, client: AsyncTidebase) -> None:
        self._client = client

    async def create(
        self,
        workflow_name: str,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        recovery_webhook: str | None = None,
        channels: list[Any] | None = None,
        *,
        budget_usd: float | None = None,
    ) -> dict[str, Any]:
        body = _budget.with_budget(base.run_create_body(input, metadata, recovery_webhook, channels), budget_usd)
        answer = await self._client._send(Call("POST", f"/runs/{base.quote(workflow_name)}", body, safe=True))
        run: dict[str, Any] = answer["run"]
        return run

    async def get(self, run_id: str) -> dict[str, Any]:
        """Run detail: ``{"run", "steps", "state", "gates", "events", "usage", ...}``."""
        answer: dict[str, Any] = await self._client._send(Call("GET", f"/runs/{run_id}", safe=True))
        return answer

    async def list(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = (await self._client._send(Call("GET", "/runs", safe=True)))["runs"]
        return runs

    async def recover(self, run_id: str, reason: str = "manual") -> dict[str, Any]:
        answer: dict[str, Any] = await self._client._send(Call("POST", f"/runs/{run_id}/recover", {"reason": reason}))
        return answer

    async def cancel(self, run_id: str, reason: str | None = None, actor: str | None = None) -> dict[str, Any]:
        """Cancel a run (one-way). Workers notice at their next step or gate."""
        body = base.compact(reason=reason, actor=actor)
        answer = await self._client._send(Call("POST", f"/runs/{run_id}/cancel", body, safe=True))
        run: dict[str, Any] = answer["run"]
        return run

    async def subscribe(self, run_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Yield the run's events (SSE), replaying those after ``after`` first.

        The stream never ends on its own; break out of the loop when done. A
        dropped connection is resumed from the last event seen.
        """
        client = self._client
        failures = 0
        while True:
            params = {"after": str(after), **({"token": client.api_key} if client.api_key else {})}
            try:
                async with client._http.stream(
                    "GET",
                    f"{client.url}/runs/{run_id}/events",
                    params=params,
                    headers={**client.config.headers(), "accept": "text/event-stream"},
                    timeout=httpx.Timeout(client.config.timeout_s, read=None),
                ) as response:
                    if response.status_code >= 300:
                        base.parse_response(response.status_code, await response.aread(), f"/runs/{run_id}/events")
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            event: dict[str, Any] = json.loads(line[5:].strip())
                            after = max(after, int(event.get("seq") or after))
                            failures = 0
                            yield event
            except httpx.TransportError as error:
                failures += 1
                if failures > client.retry.max_retries:
                    raise APIConnectionError(f"event stream lost: {error}", path=f"/runs/{run_id}/events") from error
                await flavour.sleep(client.retry.delay_s(failures))

    async def attach(
        self,
        workflow_name: str,
        run_id: str | None = None,
        *,
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        recovery_webhook: str | None = None,
        channels: builtins.list[Any] | None = None,
        heartbeat_s: float | None = 20.0,
        on_lease_lost: Callable[[BaseException], Any] | None = None,
        budget_usd: float | None = None,
    ) -> Any:
        """Hold a run as a session (not a single workflow function): take its lease, heartbeat
        it in the background, and report the outcome with ``session.complete()`` /
        ``session.fail()``. ``budget_usd``: a new run's own budget. See :class:`AsyncRunSession`."""
        from ._async_context import AsyncRunSession

        if run_id is None:
            run = await self.create(workflow_name, input, metadata, recovery_webhook, channels, budget_usd=budget_usd)
        else:
            run = (await self.get(run_id))["run"]
        base.check_workflow_name(run, workflow_name)
        if run["status"] == "completed":
            raise RuntimeError(f"Run {run['id']} is already completed")
        owner, begun = await self._client._begin(run["id"])
        session = AsyncRunSession(self._client, begun, owner, heartbeat_s=heartbeat_s, on_lease_lost=on_lease_lost)
        if run_id is not None:
            await session._load_checkpoints()
        return session


class AsyncQueues:
    """``tide.queues``: queue caps and stats."""

    def __init__(self, client: AsyncTidebase) -> None:
        self._client = client

    async def configure(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate_per_minute: int | None = None,
        invoke_url: str | None = None,
    ) -> dict[str, Any]:
        body = base.compact(concurrency=concurrency, ratePerMinute=rate_per_minute, invokeUrl=invoke_url)
        answer: dict[str, Any] = await self._client._send(
            Call("PUT", f"/queues/{base.quote(name)}/config", body, safe=True)
        )
        return answer

    async def list(self) -> list[dict[str, Any]]:
        queues: list[dict[str, Any]] = (await self._client._send(Call("GET", "/queues", safe=True)))["queues"]
        return queues


class AsyncSchedules:
    """``tide.schedules``: cron schedules that enqueue runs."""

    def __init__(self, client: AsyncTidebase) -> None:
        self._client = client

    async def set(
        self,
        name: str,
        *,
        cron: str,
        workflow_name: str,
        input: Any = None,
        queue: str = "default",
        max_attempts: int | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        body = {"cron": cron, "workflowName": workflow_name, "queue": queue, "enabled": enabled}
        body.update(base.compact(input=input, maxAttempts=max_attempts))
        answer = await self._client._send(Call("PUT", f"/schedules/{base.quote(name)}", body, safe=True))
        schedule: dict[str, Any] = answer["schedule"]
        return schedule

    async def list(self) -> list[dict[str, Any]]:
        answer = await self._client._send(Call("GET", "/schedules", safe=True))
        schedules: list[dict[str, Any]] = answer["schedules"]
        return schedules

    async def delete(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._client._send(Call("DELETE", f"/schedules/{base.quote(name)}", safe=True))
        return answer
