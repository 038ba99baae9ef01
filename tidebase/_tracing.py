"""OpenTelemetry for the SDK: a span per step and W3C trace context on every request.

Nothing here needs OpenTelemetry: without ``opentelemetry-api`` installed every function is a
no-op, and with it installed but no tracer provider configured by the application, spans are
non-recording and no header is added. The SDK never configures exporters: the application
does (``opentelemetry-sdk``), as for any instrumented library.

- ``inject(headers)`` adds ``traceparent`` (and ``tracestate``, ``baggage``) of the current span
  to a request's headers; the server continues that trace in its request span, keeps it with
  the webhooks the request causes, and sends it on to their receivers.
- ``step_span(run_id, name)`` wraps one ``run.step(...)``: begin, the step's own work (model and
  tool calls made inside are its children) and complete, as one ``INTERNAL`` span named
  ``tidebase.step``.
- ``continue_trace(headers)`` makes the trace of an incoming request (a recovery webhook)
  current, so the resumed run's steps join the trace that failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

_api: Any = None
"""``(trace, propagate)`` once looked up; ``False`` when opentelemetry-api is not installed."""


def _otel() -> Any:
    global _api
    if _api is None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            _api = False
        else:
            _api = (trace, propagate)
    return _api


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to ``headers`` (nothing outside a recording span)."""
    api = _otel()
    if not api:
        return
    trace, propagate = api
    if not trace.get_current_span().get_span_context().is_valid:
        return  # the common case without tracing: one context lookup
    propagate.inject(headers)


@contextlib.contextmanager
def step_span(run_id: str, name: str, **attributes: Any) -> Iterator[Any]:
    """The span of one step (``None`` without OpenTelemetry). Exceptions are recorded on it and
    re-raised."""
    api = _otel()
    if not api:
        yield None
        return
    trace = api[0]
    tracer = trace.get_tracer("tidebase")
    fields = {"tidebase.run.id": run_id, "tidebase.step.name": name}
    fields.update({f"tidebase.step.{k}": v for k, v in attributes.items() if v is not None})
    with tracer.start_as_current_span("tidebase.step", kind=trace.SpanKind.INTERNAL, attributes=fields) as span:
        yield span


@contextlib.contextmanager
def continue_trace(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context carried by ``headers`` (``traceparent``...) current meanwhile."""
    api = _otel()
    if not api or not any(k.lower() == "traceparent" for k in headers):
        yield
        return
    from opentelemetry import context

    carrier = {k.lower(): v for k, v in headers.items()}
    token = context.attach(api[1].extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
