"""Python client for Tidebase for Django: checkpoint agent steps, resume runs.

::

    from tidebase import Tidebase

    with Tidebase() as tide:  # TIDEBASE_URL (default http://localhost:7373), TIDEBASE_API_KEY
        def workflow(run, input):
            plan = run.step("plan", lambda: make_plan(input), input=input)
            decision = run.gate("approve", "Ship this plan?")
            return run.step("ship", lambda: ship(plan), side_effects=["deploy"], idempotency_key=plan["id"])

        tide.run("release", workflow, input={"version": "1.2"})

Re-running with ``run_id=`` replays finished steps from their checkpoints.
For asyncio use :mod:`tidebase.aio`. Depends on httpx only; pydantic is used
(when installed) to validate ``step(..., returns=Model)``.
"""

from __future__ import annotations

from ._base import RetryPolicy, __version__, new_run_id
from ._budget import BudgetExceeded, BudgetParked
from ._client import Queues, Runs, Schedules, Tidebase
from ._context import RunContext, RunGates, RunSession, RunSnapshots, RunState, RunUsage
from ._exceptions import (
    APIConnectionError,
    AsyncStepInSyncClient,
    Conflict,
    Forbidden,
    GateAlreadyResolved,
    GateTimeout,
    InputMismatch,
    InvalidRequest,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RunCancelled,
    RunCompleted,
    RunLeased,
    ServerError,
    StepLocked,
    StepOutputNotSerializable,
    TidebaseError,
    Unauthorized,
)
from ._json import CheckpointDict, hash_input, stable_stringify, to_json_data
from ._protocol import GateDecision
from .webhooks import sign_webhook, verify_webhook_signature

__all__ = [
    "APIConnectionError",
    "AsyncStepInSyncClient",
    "BudgetExceeded",
    "BudgetParked",
    "CheckpointDict",
    "Conflict",
    "Forbidden",
    "GateAlreadyResolved",
    "GateDecision",
    "GateTimeout",
    "InputMismatch",
    "InvalidRequest",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "Queues",
    "RateLimited",
    "RetryPolicy",
    "RunCancelled",
    "RunCompleted",
    "RunContext",
    "RunGates",
    "RunLeased",
    "RunSession",
    "RunSnapshots",
    "RunState",
    "RunUsage",
    "Runs",
    "Schedules",
    "ServerError",
    "StepLocked",
    "StepOutputNotSerializable",
    "Tidebase",
    "TidebaseError",
    "Unauthorized",
    "__version__",
    "hash_input",
    "new_run_id",
    "sign_webhook",
    "stable_stringify",
    "to_json_data",
    "verify_webhook_signature",
]
