"""Errors raised by the Tidebase SDK.

::

    RuntimeError
    ├── RunCancelled                 the run was cancelled; let it propagate
    └── TidebaseError                any other failure (.status .code .body .path)
        ├── APIConnectionError       no HTTP response (connect/read failure after retries)
        ├── InvalidRequest           400
        ├── Unauthorized             401
        ├── Forbidden                403
        ├── NotFound                 404
        ├── Conflict                 409
        │   ├── LeaseLost            409 lease_lost (step or run lease fenced off)
        │   ├── RunLeased            409 run_leased
        │   ├── RunCompleted         409 run_completed
        │   ├── GateAlreadyResolved  409 gate_already_resolved / invalid_token
        │   └── StepLocked           steps/begin answered "locked"
        ├── PayloadTooLarge          413
        ├── RateLimited              429
        ├── ServerError              5xx
        ├── InputMismatch            (also ValueError) a completed step's input changed
        ├── GateTimeout              (also TimeoutError) gate() passed its timeout_s
        ├── StepOutputNotSerializable (also TypeError) a step result is not JSON data
        └── AsyncStepInSyncClient    (also TypeError) awaitable step inside a running loop

``RunCancelled`` deliberately does not derive from ``TidebaseError``: code that
catches API errors to retry or log them must not swallow a cancellation.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "AsyncStepInSyncClient",
    "Conflict",
    "Forbidden",
    "GateAlreadyResolved",
    "GateTimeout",
    "InputMismatch",
    "InvalidRequest",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RunCancelled",
    "RunCompleted",
    "RunLeased",
    "ServerError",
    "StepLocked",
    "StepOutputNotSerializable",
    "TidebaseError",
    "Unauthorized",
]


class TidebaseError(RuntimeError):
    """A Tidebase call failed.

    ``status`` is the HTTP status (``None`` when there was no response),
    ``code`` the server's machine-readable code, ``body`` the decoded JSON
    error body (or the raw text) and ``path`` the request path.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body
        self.path = path


class APIConnectionError(TidebaseError):
    """The server could not be reached, or the response was lost."""


class InvalidRequest(TidebaseError):
    """400: the server rejected the request body or query."""


class Unauthorized(TidebaseError):
    """401: missing or wrong API key (set ``TIDEBASE_API_KEY``)."""


class Forbidden(TidebaseError):
    """403."""


class NotFound(TidebaseError):
    """404: no such run, gate, step or schedule."""


class Conflict(TidebaseError):
    """409."""


class LeaseLost(Conflict):
    """Another worker holds (or took over) the lease this worker relied on."""


class RunLeased(Conflict):
    """The run is leased by another live worker."""


class RunCompleted(Conflict):
    """The run already completed."""


class GateAlreadyResolved(Conflict):
    """The gate was already resolved, or the resolve token is wrong."""


class StepLocked(Conflict):
    """Another worker currently holds this step's lease."""


class PayloadTooLarge(TidebaseError):
    """413: the body exceeds the server's limit."""


class RateLimited(TidebaseError):
    """429 after every retry was spent."""


class ServerError(TidebaseError):
    """5xx after every retry was spent."""


class InputMismatch(TidebaseError, ValueError):
    """The step already ran for this run with a different input.

    Step names identify checkpoints; if the input legitimately changes, give
    the step a content-keyed name (``f"summarize:{doc_id}"``).
    """

    def __init__(self, step_name: str, expected_hash: str, actual_hash: str, *, path: str | None = None) -> None:
        super().__init__(
            f"Step {step_name!r} was checkpointed with input hash {expected_hash}, "
            f"but this call has input hash {actual_hash}. Use a different step name "
            "for different input, or keep the input stable across resumes.",
            code="input_mismatch",
            path=path,
        )
        self.step_name = step_name
        self.expected_hash = expected_hash
        self.actual_hash = actual_hash


class GateTimeout(TidebaseError, TimeoutError):
    """``gate()`` waited longer than ``timeout_s``; the gate stays pending."""


class StepOutputNotSerializable(TidebaseError, TypeError):
    """A step returned a value that cannot be checkpointed as JSON.

    The step is failed with ``resumeDecision="fail_hard"`` and never retried,
    so the (possibly expensive) work is not silently repeated.
    """


class AsyncStepInSyncClient(TidebaseError, TypeError):
    """The sync client got an awaitable step result while an event loop runs.

    Use ``tidebase.aio.AsyncTidebase`` in async code.
    """


class RunCancelled(RuntimeError):
    """The run was cancelled while this worker held it. Let it propagate."""

    def __init__(self, run_id: str, *, body: Any = None) -> None:
        super().__init__(f"Run {run_id} was cancelled")
        self.run_id = run_id
        self.code = "run_cancelled"
        self.body = body


_BY_CODE: dict[str, type[TidebaseError]] = {
    "lease_lost": LeaseLost,
    "run_leased": RunLeased,
    "run_completed": RunCompleted,
    "gate_already_resolved": GateAlreadyResolved,
    "invalid_token": GateAlreadyResolved,
    "not_found": NotFound,
    "invalid_json": InvalidRequest,
    "invalid_request": InvalidRequest,
    "unsupported_value": InvalidRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "payload_too_large": PayloadTooLarge,
    "internal_error": ServerError,
}

_BY_STATUS: dict[int, type[TidebaseError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
}


def error_class_for(status: int, code: str | None) -> type[TidebaseError]:
    """Pick the exception class: the server's ``code`` wins over the status."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, TidebaseError)
