"""Domain errors. Each carries a machine-readable ``code`` and an HTTP status; the API's one
error handler renders ``{"error": <message>, "code": <code>, **extra}`` (the top-level ``code``
is what the official client reads, PROTOCOL.md §19.4)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"
    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.extra}

    def headers(self) -> list[tuple[str, str]]:
        """Response headers that go with this error (``Retry-After`` for ``ServerBusy``)."""
        return []


class InvalidRequest(DomainError):
    code = "invalid_request"


class InvalidJson(DomainError):
    code = "invalid_json"


class UnsupportedValue(DomainError):
    code = "unsupported_value"


class ServerBusy(DomainError):
    """A lock wait or statement ran past its timeout; the transaction rolled back, so the client
    may send the request again (answered with ``Retry-After``)."""

    status_code = 503
    retry_after_s = 1

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or f"the server is busy ({code}); retry shortly")
        self.code = code

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after_s))]


class Unauthorized(DomainError):
    code = "unauthorized"
    status_code = 401


class Forbidden(DomainError):
    code = "forbidden"
    status_code = 403


class NotFound(DomainError):
    code = "not_found"
    status_code = 404


class RunNotFound(NotFound):
    def __init__(self, message: str = "run not found") -> None:
        super().__init__(message)


class Conflict(DomainError):
    code = "conflict"
    status_code = 409


class RunCancelled(Conflict):
    code = "run_cancelled"


class RunLeased(Conflict):
    code = "run_leased"


class LeaseLost(Conflict):
    code = "lease_lost"


class RunCompleted(Conflict):
    code = "run_completed"


class GateAlreadyResolved(Conflict):
    code = "gate_already_resolved"


class InvalidToken(Conflict):
    code = "invalid_token"


class NoRecoveryWebhook(DomainError):
    code = "no_recovery_webhook"
    status_code = 422


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status_code = 413
