"""OpenTelemetry tracing, optional (``pip install 'tidebase-django[otel]'``).

On when ``TIDEBASE_TRACING=1``, or when the standard variables ask for an exporter
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_TRACES_EXPORTER`` other than ``none``); ``TIDEBASE_TRACING=0`` or
``OTEL_SDK_DISABLED=true`` turn it off, and so does a missing ``opentelemetry-sdk`` (with one
warning). Off, nothing here imports OpenTelemetry and nothing calls into it: ``ENABLED`` is
checked once, where the WSGI application and the outbox hook are set up.

What is traced, with W3C trace context carried across every hop:

- **API requests**: a ``SERVER`` span per request (``traced_wsgi``), child of the caller's
  ``traceparent`` (the SDK sends it, ``tidebase/_tracing.py``), named by method and route
  template. Everything the request does runs inside it.
- **Outbox rows** written by a traced request (gate and run events for channels, recovery and
  invoke webhooks) keep that request's trace context in ``tb_outbox_trace``, in the same
  transaction (``record_outbox``), so the delivery continues the trace however late it happens,
  from whichever worker, after any number of retries or a sweep.
- **Deliveries**: the Celery worker opens a ``CLIENT`` span per attempt, child of the stored
  context (``delivery_span``), and sends its ``traceparent`` in the webhook request, so the
  receiver (``tidebase.receiver``, or anything instrumented) continues the same trace.

Spans go to the OTLP/HTTP exporter (``OTEL_EXPORTER_OTLP_*`` variables, batched) or, with
``OTEL_TRACES_EXPORTER=console``, to stdout; ``OTEL_SERVICE_NAME`` names the service
(default ``tidebase-server`` for web processes, ``tidebase-worker`` otherwise) and
``OTEL_TRACES_SAMPLER`` samples, as the OpenTelemetry SDK reads them; unset, the server only
records traces its callers started (``DEFAULT_SAMPLER``).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction

from tidebase_core.metrics import ROUTE_ENVIRON, route_label

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


def wanted() -> bool:
    """What the environment asks for (whether the SDK is installed is checked separately)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _ON:
        return False
    flag = os.environ.get("TIDEBASE_TRACING", "").strip().lower()
    if flag in _OFF:
        return False
    if flag in _ON:
        return True
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _installed() -> bool:
    needed = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
    try:
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
    except ModuleNotFoundError:
        missing = list(needed)
    if missing:
        logger.warning(
            "tracing.unavailable: tracing was asked for but %s is not installed "
            "(pip install 'tidebase-django[otel]'); tracing stays off",
            ", ".join(missing),
        )
    return not missing


ENABLED = wanted() and _installed()

DEFAULT_SAMPLER = "parentbased_always_off"
"""Unless ``OTEL_TRACES_SAMPLER`` says otherwise, the server records the traces its callers
started (a ``traceparent`` with the sampled flag: an SDK inside a traced agent) and starts none
of its own: a request from a client that does not trace then costs about 5 microseconds, where
recording it would cost about 45 (span, batch, OTLP encoding; ``scripts/bench_observability.py``),
several percent of a step. ``OTEL_TRACES_SAMPLER=parentbased_always_on`` (or
``parentbased_traceidratio``) records untraced requests and reconciler-made deliveries too."""

_lock = threading.Lock()
_tracer: Tracer | None = None
_pid: int | None = None


def tracer() -> Tracer:
    """This process's tracer; the provider and its exporter are set up on first use (in each
    process: a forked child gets its own export thread)."""
    global _tracer, _pid
    if _tracer is not None and _pid == os.getpid():
        return _tracer
    with _lock:
        if _tracer is None or _pid != os.getpid():
            _tracer, _pid = _setup(), os.getpid()
    return _tracer


def _setup() -> Tracer:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes: dict[str, str] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = (
            "tidebase-server" if os.environ.get("TIDEBASE_PROCESS") == "web" else "tidebase-worker"
        )
    sampler = None
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

        sampler = ParentBased(ALWAYS_OFF)  # see DEFAULT_SAMPLER
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    pid = os.getpid()

    def flush() -> None:
        if os.getpid() == pid:
            provider.shutdown()

    atexit.register(flush)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # so other instrumentation in this process joins in
    return provider.get_tracer("tidebase_core")


def shutdown() -> None:
    """Export what is buffered (a web process's lifespan shutdown, a worker's exit)."""
    if _tracer is not None and _pid == os.getpid():
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush()


# ---- API requests -----------------------------------------------------------------------------


class _EnvironGetter:
    """Reads W3C headers (``traceparent``, ``tracestate``, ``baggage``) from a WSGI environ."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_ENVIRON = _EnvironGetter()


def traced_wsgi(app: WSGIApp) -> WSGIApp:
    """``app`` with a SERVER span around each request, continuing the caller's ``traceparent``.
    The span is current while the application runs (the outbox hook reads it)."""
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    def call(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        traced = "HTTP_TRACEPARENT" in environ or "HTTP_BAGGAGE" in environ
        parent = propagate.extract(environ, getter=_ENVIRON) if traced else None  # type: ignore[arg-type]
        method = environ.get("REQUEST_METHOD", "GET")
        span = tracer().start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": environ.get("PATH_INFO", "")},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        answered: list[int] = []

        def starting(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        try:
            result = app(environ, starting)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        finally:
            context.detach(token)
        operation = environ.get(ROUTE_ENVIRON)
        if operation is not None:
            route = route_label(environ.get("PATH_INFO", ""), operation)
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        if answered:
            span.set_attribute("http.response.status_code", answered[0])
            if answered[0] >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return result

    return call


# ---- outbox rows and their deliveries ---------------------------------------------------------

_RECORD_SQL = """INSERT INTO tb_outbox_trace (kind, delivery_id, traceparent, tracestate, created_at)
SELECT %s, unnest(%s::text[]), %s, %s, now() ON CONFLICT DO NOTHING"""


def current_headers(span: Span | None = None) -> dict[str, str]:
    """The W3C headers (``traceparent``, ``tracestate``) of ``span``, else of the current span;
    empty outside any recorded span."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
    return carrier


def record_outbox(kind: str, ids: list[str]) -> None:
    """Outbox hook (``tidebase_core.outbox.register_recorder``): remember the current trace
    context for new outbox rows, in the writer's transaction (a savepoint keeps a failure here
    from failing the request)."""
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        return  # no trace is being recorded: nothing to continue
    headers = current_headers()
    traceparent = headers.get("traceparent")
    if not traceparent or not ids:
        return
    params = [kind, ids, traceparent, headers.get("tracestate") or None]
    try:
        if connection.in_atomic_block:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(_RECORD_SQL, params)
        else:
            with connection.cursor() as cur:
                cur.execute(_RECORD_SQL, params)
    except Exception:
        logger.warning("tracing.outbox.record_failed", extra={"kind": kind, "count": len(ids)}, exc_info=True)


def stored_context(kind: str, delivery_id: str) -> Context | None:
    """The trace context recorded with an outbox row, or None (not traced, or tracing was off)."""
    from opentelemetry import propagate

    with connection.cursor() as cur:
        cur.execute(
            "SELECT traceparent, tracestate FROM tb_outbox_trace WHERE kind = %s AND delivery_id = %s",
            [kind, delivery_id],
        )
        row = cur.fetchone()
    if row is None:
        return None
    carrier = {"traceparent": row[0]}
    if row[1]:
        carrier["tracestate"] = row[1]
    return propagate.extract(carrier)


def forget(kind: str, delivery_id: str) -> None:
    """Drop a row's trace context once its delivery is final."""
    with connection.cursor() as cur:
        cur.execute("DELETE FROM tb_outbox_trace WHERE kind = %s AND delivery_id = %s", [kind, delivery_id])


@contextmanager
def delivery_span(kind: str, delivery_id: str, number: int, url: str) -> Iterator[Span]:
    """A CLIENT span around one webhook attempt, child of the trace that wrote the row."""
    from opentelemetry.trace import SpanKind

    parent = stored_context(kind, delivery_id)
    attributes: dict[str, str | int] = {
        "tidebase.delivery.kind": kind,
        "tidebase.delivery.id": delivery_id,
        "tidebase.delivery.attempt": number,
        "http.request.method": "POST",
        "url.full": url.split("?", 1)[0],
    }
    with tracer().start_as_current_span(
        f"deliver {kind}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span
