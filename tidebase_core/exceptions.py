"""Domain errors. Each carries a machine-readable ``code`` and an HTTP status; every error
answer, whoever renders it (the ninja handlers, the middleware, the step hot path, the ASGI
gateway, the server's header timeout), has the body ``error_body`` builds:
``{"error": <message>, "code": <code>, **extra}`` (the top-level ``code`` is what the official
client reads, PROTOCOL.md §19.4)."""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error envelope: the one place its shape is written."""
    return {"error": message, "code": code, **extra}


class DomainError(Exception):
    code = "error"
    status_code = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.extra)

    def headers(self) -> list[tuple[str, str]]:
        """Response headers that go with this error (``Retry-After`` for ``ServerBusy``)."""
        return []


class InvalidRequest(DomainError):
    code = "invalid_request"


class InvalidJson(DomainError):
    code = "invalid_json"


class MissingBody(DomainError):
    code = "missing_body"


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


class AlreadyVoted(Conflict):
    """This approver has already voted on the gate (a quorum needs distinct approvers)."""

    code = "already_voted"


class NotAnApprover(Forbidden):
    """The gate's approval policy does not let this user or key decide it."""

    code = "not_an_approver"


class SelfApproval(Forbidden):
    """Whoever started the run may not approve its gates (unless the policy allows it)."""

    code = "self_approval"


class TokenNotAllowed(Forbidden):
    """The gate's approval policy does not let a resolve token decide it."""

    code = "token_not_allowed"


class CommentRequired(DomainError):
    """The gate's approval policy requires a comment with every decision."""

    code = "comment_required"
    status_code = 422


class NoRecoveryWebhook(DomainError):
    code = "no_recovery_webhook"
    status_code = 422


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status_code = 413


class MethodNotAllowed(DomainError):
    code = "method_not_allowed"
    status_code = 405


class RequestTimeout(DomainError):
    code = "request_timeout"
    status_code = 408


class NotReady(DomainError):
    code = "not_ready"
    status_code = 503


class InternalError(DomainError):
    """The answer to an unexpected exception (logged where it is caught; its text never goes out)."""

    code = "internal_error"
    status_code = 500

    def __init__(self, message: str = "internal server error") -> None:
        super().__init__(message)


class BudgetParked(Conflict):
    """steps/begin of a run stopped at a budget, for a caller that did not ask for the ``parked``
    answer (``onBudget: "park"``): the official client, and agents that cannot wait. Carries the
    budget gate and the budget."""

    code = "budget_parked"


class BudgetExceeded(Conflict):
    """The run was stopped at its budget: its budget gate was rejected."""

    code = "budget_exceeded"


class LinkInvalid(DomainError):
    """A one-click decision link that was forged, mangled or truncated."""

    code = "link_invalid"


class LinkExpired(DomainError):
    """A one-click decision link older than ``TIDEBASE_APPROVAL_LINK_TTL_S``."""

    code = "link_expired"
    status_code = 410


class LinkUsed(Conflict):
    """A one-click decision link that has already decided (links are single-use)."""

    code = "link_used"


class LinkOtherUser(Forbidden):
    """A decision link opened while someone else is signed in: links are bound to their recipient."""

    code = "link_other_user"


class LinksNotAllowed(Forbidden):
    """The gate's approval policy does not allow one-click email links (any more)."""

    code = "links_not_allowed"


class UserInactive(Forbidden):
    """The account a link or a Slack user maps to is deactivated (or gone)."""

    code = "user_inactive"


class SlackNotConfigured(DomainError):
    """The Slack callback without ``TIDEBASE_SLACK_SIGNING_SECRET``: nothing can be verified."""

    code = "slack_not_configured"
    status_code = 503


class InvalidSignature(Unauthorized):
    """A Slack callback whose signature is missing or does not verify."""

    code = "invalid_signature"


class StaleRequest(Unauthorized):
    """A Slack callback signed outside Slack's timestamp window (5 minutes)."""

    code = "stale_request"


class Replayed(Conflict):
    """A Slack callback that was already accepted, sent again (same signature)."""

    code = "replayed"


class InvalidPayload(DomainError):
    """A Slack callback body that is too large or not a Tidebase button click."""

    code = "invalid_payload"


class UnknownSlackUser(Forbidden):
    """A Slack user no Django user is linked to (``manage.py tidebase_slack_link``)."""

    code = "unknown_slack_user"
