"""One delivery attempt, observed: ``delivery_attempt`` with Prometheus figures and, when
tracing is on, a span that continues the trace of the request that wrote the row and whose
``traceparent`` goes out with the webhook (``tidebase_core.tracing``).

The Celery task calls ``attempt``; with metrics and tracing both off it is exactly
``webhooks.services.attempts.delivery_attempt``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tidebase_core import metrics, tracing
from webhooks.services.attempts import delivery_attempt, delivery_claim, delivery_record
from webhooks.services.kinds import Kind
from webhooks.services.messages import Claim
from webhooks.services.sending import Outcome, delivery_send


def outcome_label(outcome: Outcome, delay: float | None) -> str:
    """``delivered`` (2xx), ``retry`` (another attempt is scheduled) or ``failed`` (no further
    attempt: dead-lettered, or a late failure of a superseded attempt)."""
    if outcome.ok:
        return "delivered"
    return "retry" if delay is not None else "failed"


def attempt(*, kind: Kind, delivery_id: str, expected_attempts: int, trigger: str) -> float | None:
    """Claim, send and record one attempt; returns the retry delay when another attempt is
    scheduled (as ``delivery_attempt``)."""
    if not (metrics.ENABLED or tracing.ENABLED):
        return delivery_attempt(
            kind=kind, delivery_id=delivery_id, expected_attempts=expected_attempts, trigger=trigger
        )
    claim = delivery_claim(kind=kind, delivery_id=delivery_id, expected_attempts=expected_attempts, trigger=trigger)
    if claim is None:
        return None
    if tracing.ENABLED:
        return _traced(claim)
    outcome = delivery_send(claim)
    delay = delivery_record(claim, outcome)
    metrics.delivery_attempted(kind, claim.number, outcome_label(outcome, delay), outcome.latency_ms / 1000)
    return delay


def _traced(claim: Claim) -> float | None:
    from opentelemetry.trace import Status, StatusCode

    with tracing.delivery_span(claim.kind, claim.delivery_id, claim.number, claim.message.shown_url) as span:
        headers = tuple(tracing.current_headers(span).items())
        sent = dataclasses.replace(claim, message=dataclasses.replace(claim.message, headers=headers))
        outcome = delivery_send(sent)
        attributes: dict[str, Any] = {}
        if outcome.http_status is not None:
            attributes["http.response.status_code"] = outcome.http_status
        if outcome.error is not None:
            attributes["error.type"] = outcome.error.split(":", 1)[0]
        span.set_attributes(attributes)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, outcome.error or f"HTTP {outcome.http_status}"))
        delay = delivery_record(claim, outcome)
        label = outcome_label(outcome, delay)
        span.set_attribute("tidebase.delivery.outcome", label)
    metrics.delivery_attempted(claim.kind, claim.number, label, outcome.latency_ms / 1000)
    if delay is None:
        tracing.forget(claim.kind, claim.delivery_id)
    return delay
