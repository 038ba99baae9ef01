"""Durable Pydantic AI agents on Tidebase: every model request and tool call is a step.

::

    from pydantic_ai import Agent
    from tidebase.aio import AsyncTidebase
    from tidebase.pydantic_ai import TidebaseDurability, tool_contract

    agent = Agent("openai:gpt-4.1-mini", name="triage", capabilities=[TidebaseDurability()])

    @agent.tool_plain(metadata=tool_contract(side_effects=["ticketing-api"]))
    async def create_ticket(title: str) -> str:
        return await ticket_api.create(title, idempotency_key=idempotency_key())

    async def workflow(run, input):
        return (await agent.run(input["report"])).output

    await AsyncTidebase().run("bug-triage", workflow, run_id=run_id, input={...})

Inside a Tidebase run (a workflow executing under ``tide.run``/a queue worker, or an entered
session) the capability turns

* each model request, streamed or not, into a step ``model:<agent>:<n>`` (``n`` counts the
  agent's requests in the run, from 1) whose checkpoint is the ``ModelResponse`` as JSON, and
  records the request's usage once, inside that step (tokens, model, provider, and the cost in
  USD when genai-prices knows the model);
* each tool call into a step ``tool:<tool>:<tool_call_id>`` (``…:approved`` for the call that
  runs after an approval) whose checkpoint is the tool's result, with the side-effect contract
  the tool declares in its ``metadata={"tidebase": {...}}`` (see :func:`tool_contract`);
* each call of a tool that needs approval (``requires_approval=True`` or ``ApprovalRequired``)
  into a gate ``approve:<tool>:<tool_call_id>:<sha256 of the arguments>`` whose data holds the
  exact arguments; a rejection reaches the model as the tool's denial.

Providers may reuse tool-call ids within a run (some OpenAI-compatible servers answer ``call_0``
for every call): the ``n``-th call of a tool with the same id gets ``<tool>#<n>`` in its step and
gate names (``tool:refund#2:call_0``), so it runs, and is approved, on its own.

Outside a run the agent behaves as if the capability were not there. The building blocks are
Pydantic AI's public durable-execution surface (``pydantic_ai.durable_exec``:
``BaseDurabilityCapability`` with a ``CallableOperationBackend``), the same one the Temporal,
DBOS and Prefect integrations use. Step and gate names are compatibility data: they are pinned
by tests and must not change, or in-flight runs stop replaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

try:
    from pydantic_ai.agent import AbstractAgent
    from pydantic_ai.agent.wrapper import WrapperAgent
    from pydantic_ai.durable_exec import (
        JSON_CODEC,
        BaseDurabilityCapability,
        BoundDurableOperation,
        CallableOperationBackend,
        CapabilityOperationId,
        DurabilityEngineSpec,
        DurableOperation,
        DurableOperationId,
        DynamicToolsetCallToolParams,
        JournalOperationNamer,
        ModelCompactMessagesId,
        ModelRequestId,
        RoleBasedOperationConfig,
        ToolsetCallToolId,
        ToolsetCallToolParams,
        ToolsetValidateToolArgumentsId,
        conversation_id_from_run_id,
    )
    from pydantic_ai.exceptions import UserError
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.output import OutputDataT
    from pydantic_ai.tools import (
        AgentDepsT,
        DeferredToolRequests,
        DeferredToolResults,
        RunContext,
        ToolApproved,
        ToolDenied,
    )
except ImportError as error:  # pragma: no cover - depends on the installed version
    raise ImportError(
        f"tidebase.pydantic_ai needs pydantic-ai-slim>=2.62 (its public durable-execution API): {error}"
    ) from error
from pydantic_core import to_jsonable_python

from . import _async_budget, _budget, _current, _sync_budget
from ._async_context import AsyncRunContext
from ._exceptions import StepOutputNotSerializable
from ._json import hash_input, stable_stringify

__all__ = [
    "TidebaseAgent",
    "TidebaseDurability",
    "ToolContract",
    "approval_gate_name",
    "arguments_digest",
    "count_input_tokens",
    "current_run",
    "current_tool_step",
    "estimate_input_tokens",
    "idempotency_key",
    "model_step_name",
    "projected_cost",
    "tool_contract",
    "tool_step_name",
    "use_run",
]

T = TypeVar("T")

METADATA_KEY = "tidebase"
"""The tool-metadata key holding a tool's :class:`ToolContract` (or ``False``: no step)."""


# ---- names (compatibility data: pinned by tests/pydantic_ai/test_names.py) ----------------------


def model_step_name(agent_name: str, n: int) -> str:
    """The step of the agent's ``n``-th model request in the run (from 1)."""
    return f"model:{agent_name}:{n}"


def _tool_segment(tool_name: str, occurrence: int) -> str:
    """``<tool>`` for the first call with a given id in the run, ``<tool>#<n>`` for its ``n``-th.

    The marker sits on the tool name, not the id: an id is any string a provider sends, so a
    suffix on it could equal another id, while tool names never hold ``#`` or ``:``.
    """
    if occurrence < 1:
        raise ValueError(f"occurrence counts from 1, got {occurrence}")
    return tool_name if occurrence == 1 else f"{tool_name}#{occurrence}"


def tool_step_name(tool_name: str, tool_call_id: str, *, approved: bool = False, occurrence: int = 1) -> str:
    """The step of one tool call; the call made after an approval gets its own step.

    ``occurrence``: this is the ``n``-th call of the tool with this ``tool_call_id`` in the run
    (providers may reuse ids). The first keeps the name runs recorded before it existed.
    """
    return f"tool:{_tool_segment(tool_name, occurrence)}:{tool_call_id}" + (":approved" if approved else "")


def arguments_digest(tool_name: str, args: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``{"tool": name, "args": args}``."""
    return hash_input({"tool": tool_name, "args": _jsonable(dict(args))})


def approval_gate_name(tool_name: str, tool_call_id: str, digest: str, *, occurrence: int = 1) -> str:
    """The gate asking to approve one call with exactly these arguments (``occurrence`` as in
    :func:`tool_step_name`: a later call with the same id and arguments is asked again)."""
    return f"approve:{_tool_segment(tool_name, occurrence)}:{tool_call_id}:{digest}"


# ---- the current run -----------------------------------------------------------------------


def current_run() -> Any:
    """The Tidebase run (``AsyncRunContext`` or ``RunContext``) executing here, or ``None``."""
    return _current.current_run()


@contextlib.contextmanager
def use_run(run: Any) -> Iterator[Any]:
    """Make ``run`` the current run in this block, for code that holds a run handle but does not
    run under ``tide.run``/an entered session (``with use_run(run): await agent.run(...)``)."""
    with _current.running(run):
        yield run


@dataclasses.dataclass(frozen=True)
class _ToolStep:
    run_id: str
    step_name: str
    key: str | None


_TOOL_STEP: contextvars.ContextVar[_ToolStep | None] = contextvars.ContextVar(
    "tidebase.pydantic_ai.tool_step", default=None
)


def idempotency_key() -> str | None:
    """The idempotency key of the tool call running now: stable across replays of the run
    (``tidebase:<run id>:<step name>`` unless the tool's contract computes another). ``None``
    when the tool declared ``idempotency_key=False``, and outside a checkpointed tool call (the
    agent running outside a Tidebase run), so tools work both ways. Pass it to the external API.
    """
    step = _TOOL_STEP.get()
    return None if step is None else step.key


def current_tool_step() -> str | None:
    """The name of the tool step running now, or ``None`` outside one."""
    step = _TOOL_STEP.get()
    return None if step is None else step.step_name


# ---- the side-effect contract ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToolContract:
    """What a tool's step declares (tool ``metadata={"tidebase": {...}}``).

    * ``side_effects``: the systems the tool writes to (``["read"]`` for reads). A write that
      fails without an idempotency key parks the run as ``manual_review``.
    * ``idempotency_key``: ``True`` (default) derives ``tidebase:<run id>:<step name>``, stable
      across replays and readable with :func:`idempotency_key`; ``False`` declares the write
      unkeyed; a callable ``(run_id, step_name, args) -> str`` computes one.
    * ``replay``: ``"auto"``/``"manual"``/``"never"`` overrides the failure classification.
    * ``retries``: attempts after the first (the step's ``retries``).
    """

    side_effects: tuple[str, ...] = ()
    idempotency_key: bool | Callable[[str, str, dict[str, Any]], str] = True
    replay: Literal["auto", "manual", "never"] | None = None
    retries: int = 0

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"side_effects", "idempotency_key", "replay", "retries"})

    @classmethod
    def from_config(cls, tool_name: str, config: Any) -> ToolContract:
        if not config:
            return cls()
        if not isinstance(config, Mapping):
            raise UserError(f"Tool {tool_name!r}: {METADATA_KEY!r} metadata must be a dict or False")
        unknown = set(config) - cls._FIELDS
        if unknown:
            raise UserError(
                f"Tool {tool_name!r}: unknown {METADATA_KEY!r} metadata field(s) {sorted(unknown)}; "
                f"expected {sorted(cls._FIELDS)}"
            )
        side_effects = config.get("side_effects") or ()
        if isinstance(side_effects, str):
            side_effects = (side_effects,)
        key = config.get("idempotency_key", True)
        if not (isinstance(key, bool) or callable(key)):
            raise UserError(f"Tool {tool_name!r}: idempotency_key must be True, False or a callable")
        replay = config.get("replay")
        if replay not in (None, "auto", "manual", "never"):
            raise UserError(f"Tool {tool_name!r}: replay must be 'auto', 'manual' or 'never'")
        return cls(tuple(str(s) for s in side_effects), key, replay, int(config.get("retries") or 0))

    def key_for(self, run_id: str, step_name: str, args: dict[str, Any]) -> str | None:
        if self.idempotency_key is False:
            return None
        if self.idempotency_key is True:
            return f"tidebase:{run_id}:{step_name}"
        return str(self.idempotency_key(run_id, step_name, args))


def tool_contract(
    *,
    side_effects: Sequence[str] = (),
    idempotency_key: bool | Callable[[str, str, dict[str, Any]], str] = True,
    replay: Literal["auto", "manual", "never"] | None = None,
    retries: int = 0,
    durable: bool = True,
    **metadata: Any,
) -> dict[str, Any]:
    """Tool ``metadata=`` declaring its side-effect contract (``durable=False``: no step).

    ``@agent.tool(metadata=tool_contract(side_effects=["deploy"]))``; other metadata can be
    passed as keyword arguments and is kept.
    """
    if not durable:
        return {**metadata, METADATA_KEY: False}
    contract: dict[str, Any] = {"side_effects": list(side_effects), "idempotency_key": idempotency_key}
    if replay is not None:
        contract["replay"] = replay
    if retries:
        contract["retries"] = retries
    return {**metadata, METADATA_KEY: contract}


# ---- per-run bookkeeping -----------------------------------------------------------------------


_CALL_PHASES = {"call": 0, "gate": 1, "approved": 2}
"""The order in which one tool call can touch Tidebase: its own step (a tool that raises
``ApprovalRequired``), its approval gate, the step of the approved call."""


@dataclasses.dataclass
class _RunCounters:
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    calls: dict[tuple[str, str], tuple[int, int]] = dataclasses.field(default_factory=dict)

    def next(self, key: str) -> int:
        value = self.counts.get(key, 0) + 1
        self.counts[key] = value
        return value

    def occurrence(self, tool_name: str, tool_call_id: str, phase: Literal["call", "gate", "approved"]) -> int:
        """Which call of ``tool_name`` with this provider id (from 1) is touching Tidebase now.

        A touch in a later phase than the last one for this ``(tool, id)`` belongs to the same
        call (the gate and the approved step of a deferring call share its number); a touch in
        the same or an earlier phase is the next call with a reused id. Pydantic AI refuses
        duplicate ids within one batch of calls, so within a run the touches come in the
        model's order, and a re-invocation counts them the same way.
        """
        occurrence, last = self.calls.get((tool_name, tool_call_id), (0, len(_CALL_PHASES)))
        rank = _CALL_PHASES[phase]
        if rank <= last:
            occurrence += 1
        self.calls[(tool_name, tool_call_id)] = (occurrence, rank)
        return occurrence


_COUNTERS: weakref.WeakKeyDictionary[Any, _RunCounters] = weakref.WeakKeyDictionary()


def _counters(run: Any) -> _RunCounters:
    """Encounter-order counters of one run *handle*: a re-invocation gets a new handle and
    counts from the start again, so the n-th request of the agent maps to the same step."""
    counters = _COUNTERS.get(run)
    if counters is None:
        counters = _COUNTERS[run] = _RunCounters()
    return counters


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr)


async def _run_step(run: Any, name: str, fn: Callable[[], Awaitable[Any]], **options: Any) -> Any:
    if isinstance(run, AsyncRunContext):
        return await run.step(name, fn, **options)

    # A sync RunContext blocks: run its step in a worker thread, and the body back on this loop.
    async def coro() -> Any:
        return await fn()

    def body() -> Any:
        return anyio.from_thread.run(coro)

    return await anyio.to_thread.run_sync(lambda: run.step(name, body, **options))


async def _call(run: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if isinstance(run, AsyncRunContext):
        return await method(*args, **kwargs)
    return await anyio.to_thread.run_sync(lambda: method(*args, **kwargs))


# ---- projected cost -----------------------------------------------------------------------------

CHARS_PER_TOKEN = 4
"""The estimate of a request's input tokens when its model cannot count them: about four characters
of its messages and tool definitions (as JSON) per token, the usual rule of thumb for English text
and code with the common tokenizers."""


def estimate_input_tokens(messages: Sequence[Any], request_parameters: Any = None) -> int:
    """Input tokens of a request, estimated from the size of its messages and tool definitions."""
    tools = []
    for attribute in ("function_tools", "output_tools"):
        tools += list(getattr(request_parameters, attribute, None) or [])
    text = stable_stringify(_jsonable({"messages": list(messages), "tools": tools}))
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


async def count_input_tokens(model: Any, params: Any) -> int:
    """The request's input tokens: the model's own count where it reports one
    (``Model.count_tokens``: Anthropic, Google, Bedrock, ...), else :func:`estimate_input_tokens`."""
    messages = getattr(params, "messages", None) or []
    request_parameters = getattr(params, "model_request_parameters", None)
    counted = 0
    with contextlib.suppress(Exception):  # NotImplementedError for most models; a failed count loses nothing
        counted = int(
            (
                await model.count_tokens(messages, getattr(params, "model_settings", None), request_parameters)
            ).input_tokens
            or 0
        )
    return counted or estimate_input_tokens(messages, request_parameters)


async def projected_cost(params: Any, *, expected_output_tokens: int = 1024) -> float | None:
    """What a model request will cost in USD, before it is sent: its input tokens
    (:func:`count_input_tokens`) and, as output, the request's ``max_tokens`` or
    ``expected_output_tokens``, priced with genai-prices as Pydantic AI prices responses (by the
    provider's URL, else its name). None when the model has no price."""
    model = getattr(getattr(params, "run_context", None), "model", None)
    if model is None:
        return None
    try:
        import genai_prices
    except ImportError:  # pragma: no cover - a dependency of pydantic-ai-slim
        return None
    settings = getattr(params, "model_settings", None) or {}
    output_tokens = settings.get("max_tokens") if isinstance(settings, Mapping) else None
    usage = genai_prices.Usage(
        input_tokens=await count_input_tokens(model, params),
        output_tokens=int(output_tokens or expected_output_tokens),
    )
    for by in ({"provider_api_url": getattr(model, "base_url", None)}, {"provider_id": getattr(model, "system", None)}):
        if next(iter(by.values())):
            with contextlib.suppress(Exception):  # LookupError: a provider or model genai-prices does not know
                return float(genai_prices.calc_price(usage, model.model_name, **by).total_price)
    return None


# ---- the operation backend ---------------------------------------------------------------------

_PARAMS: contextvars.ContextVar[Any] = contextvars.ContextVar("tidebase.pydantic_ai.params", default=None)


class _Bound(BoundDurableOperation[Any, Any, Any]):
    """Hands the call's parameters to ``execute`` (the base passes it only the operation id)."""

    def __init__(self, inner: BoundDurableOperation[Any, Any, Any]) -> None:
        self._inner = inner

    @property
    def operation(self) -> DurableOperation[Any, Any, Any]:
        return self._inner.operation

    async def __call__(self, params: Any, *, config: object | None = None) -> Any:
        token = _PARAMS.set(params)
        try:
            return await self._inner(params, config=config)
        finally:
            _PARAMS.reset(token)


class TidebaseOperationBackend(CallableOperationBackend[Any]):
    """Runs Pydantic AI's durable operations as Tidebase steps of the current run."""

    def __init__(self, capability: TidebaseDurability[Any]) -> None:
        self._capability = capability
        super().__init__(
            namer=JournalOperationNamer(capability.name),  # unused: names are built in execute()
            config=RoleBasedOperationConfig(
                model={}, event={}, capability={}, tool={}, resolve_tool=capability._resolve_tool_config
            ),
        )

    def bind(self, operation: DurableOperation[Any, Any, T]) -> BoundDurableOperation[Any, Any, T]:
        return _Bound(super().bind(operation))

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: Any,
    ) -> object:
        run = _current.current_run()
        if run is None:  # pragma: no cover - the base dispatches here only inside a run
            return await body()
        agent = self._capability.name
        params = _PARAMS.get()
        if isinstance(operation_id, ModelRequestId | ModelCompactMessagesId):
            n = _counters(run).next(f"model:{agent}")
            step = model_step_name(agent, n)
            model_name = operation_id.model_name

            async def model_body() -> object:
                await self._capability._check_budget(run, step, params)  # the request is not sent past a budget
                payload = await body()
                await self._capability._record_usage(run, step, payload, model_name)
                return payload

            return await _run_step(run, step, model_body, input={"agent": agent, "request": n, "model": model_name})
        if isinstance(operation_id, ToolsetCallToolId) and isinstance(
            params, ToolsetCallToolParams | DynamicToolsetCallToolParams
        ):
            ctx = params.ctx
            approved = bool(ctx.tool_call_approved)
            if ctx.tool_call_id:
                tool_call_id = ctx.tool_call_id
                occurrence = _counters(run).occurrence(params.name, tool_call_id, "approved" if approved else "call")
            else:  # never from Pydantic AI (it makes up ids the provider leaves out); kept as it was
                tool_call_id, occurrence = f"call-{_counters(run).next(f'tool:{params.name}')}", 1
            step = tool_step_name(params.name, tool_call_id, approved=approved, occurrence=occurrence)
            contract = ToolContract.from_config(params.name, config)
            args = _jsonable(params.tool_args)
            key = contract.key_for(run.run_id, step, args)

            async def tool_body() -> object:
                token = _TOOL_STEP.set(_ToolStep(run.run_id, step, key))
                try:
                    return await body()
                finally:
                    _TOOL_STEP.reset(token)

            return await _run_step(
                run,
                step,
                tool_body,
                input={"tool": params.name, "args": args, "toolCallId": tool_call_id},
                side_effects=list(contract.side_effects) or None,
                idempotency_key=key,
                replay=contract.replay,
                retries=contract.retries,
            )
        if isinstance(operation_id, CapabilityOperationId):
            label = f"{operation_id.capability_id}.{operation_id.operation}"
            n = _counters(run).next(f"capability:{agent}:{label}")
            return await _run_step(run, f"capability:{agent}:{label}:{n}", body, input={"agent": agent, "n": n})
        # Validation, discovery, event delivery, cancelling a suspended response: deterministic or
        # local work, run in place (its inputs come from checkpointed steps).
        return await body()


# ---- the capability --------------------------------------------------------------------------


def _not_serializable(error: Exception) -> BaseException:
    return StepOutputNotSerializable(
        f"a Pydantic AI value could not be checkpointed as JSON: {error}", code="output_not_serializable"
    )


class TidebaseDurability(BaseDurabilityCapability[AgentDepsT]):
    """Makes an agent durable on Tidebase: model requests and tool calls become steps of the
    current run, approvals become gates. Transparent outside a run.

    Args:
        name: The agent's name in step names (default: the agent's ``name``, which is then
            required). Changing it strands in-flight runs.
        models: Extra models a run may select by key (as in the Temporal/DBOS/Prefect capabilities).
        event_stream_handler: Run-level event handler (model events are delivered live inside the
            model step).
        tool_defaults: Contract for tools that declare none (:func:`tool_contract` fields).
        approval_prompt: ``(tool_name, args) -> str``, the gate prompt.
        approval_timeout_s: Give up waiting at an approval gate (``GateTimeout``) after this.
        record_usage: Record one usage row per executed model request (default ``True``).
        check_budget: Before each model request, ask the server whether its projected cost fits
            the run's budgets (default ``True``); a request that would cross one is not sent and
            the run parks at its budget gate (see :mod:`tidebase._budget`).
        on_budget: ``"wait"`` at the budget gate until an operator decides (approved: the request
            is sent; rejected: ``BudgetExceeded``), or ``"raise"`` ``BudgetParked`` at once;
            default: the run's choice, else ``"wait"``.
        expected_output_tokens: Output tokens assumed for the projection when the request sets no
            ``max_tokens`` (default 1024).
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="Tidebase",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="run",
        codec=JSON_CODEC,
        serialization_failure=_not_serializable,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        journal_discovery=False,
        sequential_tools_in_durable_context=False,
        tool_config_key=METADATA_KEY,
    )

    def __init__(
        self,
        *,
        name: str | None = None,
        models: Mapping[str, Any] | None = None,
        event_stream_handler: Any = None,
        tool_defaults: Mapping[str, Any] | None = None,
        approval_prompt: Callable[[str, dict[str, Any]], str] | None = None,
        approval_timeout_s: float | None = None,
        record_usage: bool = True,
        check_budget: bool = True,
        on_budget: _budget.OnBudget | None = None,
        expected_output_tokens: int = 1024,
    ) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        self._tool_defaults = dict(tool_defaults or {})
        ToolContract.from_config("<defaults>", self._tool_defaults)  # fail early on a typo
        self._approval_prompt = approval_prompt
        self._approval_timeout_s = approval_timeout_s
        self._record_usage_enabled = record_usage
        self._check_budget_enabled = check_budget
        self._on_budget = on_budget
        self._expected_output_tokens = max(0, int(expected_output_tokens))
        self._backend: TidebaseOperationBackend | None = None

    # --- the engine hooks ---

    @property
    def in_durable_context(self) -> bool:
        return _current.current_run() is not None

    def get_durable_operation_backend(self) -> TidebaseOperationBackend:
        backend = self._backend
        if backend is None or backend._capability is not self:
            backend = self._backend = TidebaseOperationBackend(self)
        return backend

    def get_default_run_id(self) -> str | None:
        run = _current.current_run()
        if run is None:
            return None
        n = _counters(run).next(f"agent-run:{self.name}")
        return f"{run.run_id}:{self.name}:{n}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    def _resolve_tool_config(self, operation_id: DurableOperationId, tool: object | None, tool_name: str) -> Any:
        if isinstance(operation_id, ToolsetValidateToolArgumentsId):
            return False  # argument validation is deterministic: run it in place, no step
        metadata = getattr(getattr(tool, "tool_def", None), "metadata", None) or {}
        declared = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
        if declared is False:
            return False
        if declared is None:
            return dict(self._tool_defaults)
        ToolContract.from_config(tool_name, declared)
        return {**self._tool_defaults, **declared}

    # --- budgets ---

    async def _check_budget(self, run: Any, step: str, params: Any) -> None:
        """Ask the server whether this request's projected cost fits the run's budgets; wait at the
        budget gate (or raise ``BudgetParked``) when it does not. A request whose cost cannot be
        projected (a model genai-prices does not price) is checked only by its step's begin."""
        if not self._check_budget_enabled:
            return
        projected = await projected_cost(params, expected_output_tokens=self._expected_output_tokens)
        if projected is None:
            return
        if isinstance(run, AsyncRunContext):
            await _async_budget.acheck(run, projected, step=step, on_budget=self._on_budget)
        else:
            await _call(run, _sync_budget.check, run, projected, step=step, on_budget=self._on_budget)

    # --- usage ---

    async def _record_usage(self, run: Any, step: str, payload: object, model_name: str) -> None:
        if not self._record_usage_enabled:
            return
        try:
            response = JSON_CODEC.load(ModelResponse, payload)
        except Exception:  # e.g. a recorded stream result of another shape: nothing to count
            return
        usage = response.usage
        cost: float | None = None
        with contextlib.suppress(Exception):  # unknown model/provider, or no usage reported
            cost = float(response.cost().total_price)
        frame = _current.current_step()
        step_id = frame.step_id if frame is not None and frame.name == step else None
        if frame is not None and frame.parent is not None:
            frame.parent.mark_auto_usage()
        details = {k: v for k, v in (usage.details or {}).items() if v}
        metadata: dict[str, Any] = {
            "source": _current.AUTO_USAGE_SOURCE,
            "agent": self.name,
            "step": step,
            "requests": usage.requests,
        }
        for field in ("cache_read_tokens", "cache_write_tokens"):
            if getattr(usage, field, 0):
                metadata[field] = getattr(usage, field)
        if details:
            metadata["details"] = details
        try:
            await _call(
                run,
                run.usage.record,
                kind="llm",
                provider=response.provider_name,
                model=response.model_name or model_name,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=cost,
                step_id=step_id,
                metadata=metadata,
            )
        except Exception as error:  # the paid answer matters more than its ledger row
            warnings.warn(f"Tidebase: could not record usage of {step}: {error}", RuntimeWarning, stacklevel=2)

    # --- approvals ---

    async def handle_deferred_tool_calls(
        self, ctx: RunContext[AgentDepsT], *, requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        run = _current.current_run()
        if run is None or not requests.approvals:
            return None
        decisions = await asyncio.gather(*(self._approve(run, call) for call in requests.approvals))
        results = DeferredToolResults()
        for call, (approved, message, actor, gate_name) in zip(requests.approvals, decisions, strict=True):
            results.approvals[call.tool_call_id] = ToolApproved() if approved else ToolDenied(message)
            results.metadata[call.tool_call_id] = {METADATA_KEY: {"gate": gate_name, "actor": actor}}
            if actor and hasattr(results, "answered_by"):  # pydantic-ai >= 2.64
                results.answered_by[call.tool_call_id] = actor
        return results

    async def _approve(self, run: Any, call: Any) -> tuple[bool, str, str | None, str]:
        args = _jsonable(call.args_as_dict())
        digest = arguments_digest(call.tool_name, args)
        occurrence = _counters(run).occurrence(call.tool_name, call.tool_call_id, "gate")
        gate_name = approval_gate_name(call.tool_name, call.tool_call_id, digest, occurrence=occurrence)
        if self._approval_prompt is not None:
            prompt = self._approval_prompt(call.tool_name, args)
        else:
            shown = stable_stringify(args)
            prompt = f"Allow {call.tool_name}({shown if len(shown) <= 300 else shown[:297] + '...'})?"
        data = {
            "agent": self.name,
            "tool": call.tool_name,
            "toolCallId": call.tool_call_id,
            "args": args,
            "argsDigest": digest,
        }
        decision = await _call(run, run.gate, gate_name, prompt, data, timeout_s=self._approval_timeout_s)
        if decision.approved:
            return True, "", decision.actor, gate_name
        payload = decision.payload if isinstance(decision.payload, Mapping) else {}
        reason = payload.get("reason") or payload.get("message") or payload.get("comment")
        who = f" by {decision.actor}" if decision.actor else ""
        message = f"The call to {call.tool_name} was {decision.decision}{who}" + (f": {reason}" if reason else ".")
        return False, message, decision.actor, gate_name


# ---- the wrapper --------------------------------------------------------------------------------


class TidebaseAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """``TidebaseAgent(agent)``: the agent with :class:`TidebaseDurability` added to every run,
    for code that cannot change how the agent is constructed. Same options as the capability."""

    def __init__(self, wrapped: AbstractAgent[AgentDepsT, OutputDataT], **options: Any) -> None:
        super().__init__(wrapped)
        if TidebaseDurability.from_agent(wrapped) is not None:
            raise UserError("This agent already has TidebaseDurability; use it directly.")
        if not (options.get("name") or wrapped.name):
            raise UserError("TidebaseAgent needs an agent `name` (or `name=`): step names are built from it.")
        self.durability: TidebaseDurability[AgentDepsT] = TidebaseDurability(**options)

    @contextlib.asynccontextmanager
    async def iter(self, user_prompt: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        capabilities = [*(kwargs.pop("capabilities", None) or ()), self.durability]
        async with self.wrapped.iter(user_prompt, capabilities=capabilities, **kwargs) as run:
            yield run
