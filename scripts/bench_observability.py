"""What metrics and tracing add to one hot-path request, measured in-process (CPU microseconds).

``make bench`` measures whole steps against a live server; on a busy machine its noise (tens of
percent) hides a few percent. This script times only the code that metrics and tracing add,
each variant against the same request without it, in alternating batches of one process, so the
difference survives a loaded machine:

- ``gateway``: the ASGI gateway serving a trivial WSGI answer with ``TIDEBASE_METRICS`` off and
  on (the send wrapper, the route label, one histogram observation), in the multiprocess mode
  the server uses (a temporary ``PROMETHEUS_MULTIPROC_DIR``);
- ``step_complete``: the step-latency observation made on every complete;
- ``tracing``: the WSGI request span (W3C extract, SERVER span, attach/detach, end) with the
  OpenTelemetry SDK, a batch processor and the OTLP protobuf encoding, sampled
  (``parentbased_always_on``) or not (``parentbased_always_off``, a caller without a trace);
- ``sdk_inject``: the SDK's ``traceparent`` injection per request, outside any span and inside one.

Prints one JSON object: microseconds per request for each, median of the batches.
``python scripts/bench_observability.py [requests_per_batch] [batches]``
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tidebase-bench-metrics-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_URL", "postgres://unused@127.0.0.1/unused")


def per_call_us(fn: Callable[[int], None], n: int) -> float:
    t0 = time.process_time()
    fn(n)
    return (time.process_time() - t0) * 1e6 / n


def alternate(variants: dict[str, Callable[[int], None]], n: int, batches: int) -> dict[str, float]:
    """Median CPU microseconds per call of each variant, batches interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(batches):
        for name, fn in variants.items():
            samples[name].append(per_call_us(fn, n))
    return {name: round(statistics.median(xs), 2) for name, xs in samples.items()}


def gateway_variants() -> dict[str, Callable[[int], None]]:
    import django

    django.setup()
    from tidebase_core import metrics
    from tidebase_core.gateway import Gateway

    body = b'{"step":{}}'

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ[metrics.ROUTE_ENVIRON] = "complete_step"  # as the hot path leaves it
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    gateway = Gateway(wsgi, threads=1)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/runs/run_1/steps/step_1/complete",
        "raw_path": b"/runs/run_1/steps/step_1/complete",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 7373),
        "client": ("127.0.0.1", 5000),
    }
    loop = asyncio.new_event_loop()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    def run(enabled: bool) -> Callable[[int], None]:
        def go(n: int) -> None:
            metrics.ENABLED = enabled

            async def many() -> None:
                for _ in range(n):
                    await gateway(dict(scope), receive, send)

            loop.run_until_complete(many())

        return go

    return {"gateway_metrics_off": run(False), "gateway_metrics_on": run(True)}


def step_variants() -> dict[str, Callable[[int], None]]:
    import datetime as dt

    from tidebase_core import metrics

    class StepRow:
        started_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        completed_at = started_at + dt.timedelta(milliseconds=3)

    row = StepRow()

    def observe(n: int) -> None:
        metrics.ENABLED = True
        for _ in range(n):
            metrics.step_completed(row)

    def nothing(n: int) -> None:
        for _ in range(n):
            pass

    return {"step_complete_baseline": nothing, "step_complete_observe": observe}


def tracing_variants() -> dict[str, Callable[[int], None]]:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from tidebase_core import tracing

    class Encoding(SpanExporter):  # what the OTLP exporter does before its HTTP POST
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializePartialToString()
            return SpanExportResult.SUCCESS

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["tidebase.route"] = "complete_step"
        start_response("200 OK", [])
        return [b""]

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/runs/run_1/steps/step_1/complete"}

    def variant(sampler: Any) -> Callable[[int], None]:
        provider = TracerProvider(sampler=sampler)
        processor = BatchSpanProcessor(Encoding(), max_queue_size=100_000)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("bench")
        wrapped = tracing.traced_wsgi(app)

        def go(n: int) -> None:
            tracing._tracer, tracing._pid = tracer, os.getpid()
            for _ in range(n):
                wrapped(dict(environ), lambda status, headers, exc_info=None: None)
            processor.force_flush()  # the export thread's work is counted too

        return go

    def plain(n: int) -> None:
        for _ in range(n):
            app(dict(environ), lambda status, headers, exc_info=None: None)

    trace.get_tracer_provider()
    return {
        "tracing_off": plain,
        "tracing_sampled": variant(ParentBased(ALWAYS_ON)),
        "tracing_unsampled_root": variant(ParentBased(ALWAYS_OFF)),
    }


def sdk_variants() -> dict[str, Callable[[int], None]]:
    from opentelemetry.sdk.trace import TracerProvider

    from tidebase import _tracing

    tracer = TracerProvider().get_tracer("bench")

    def outside(n: int) -> None:
        for _ in range(n):
            _tracing.inject({"content-type": "application/json"})

    def inside(n: int) -> None:
        with tracer.start_as_current_span("step"):
            for _ in range(n):
                _tracing.inject({"content-type": "application/json"})

    return {"sdk_inject_no_span": outside, "sdk_inject_in_span": inside}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    report: dict[str, Any] = {"requests_per_batch": n, "batches": batches, "us_per_request": {}}
    for variants in (gateway_variants(), step_variants(), tracing_variants(), sdk_variants()):
        report["us_per_request"].update(alternate(variants, n, batches))
    us = report["us_per_request"]
    report["added_us"] = {
        "metrics_per_request": round(us["gateway_metrics_on"] - us["gateway_metrics_off"], 2),
        "metrics_per_step": round(
            2 * (us["gateway_metrics_on"] - us["gateway_metrics_off"])
            + us["step_complete_observe"]
            - us["step_complete_baseline"],
            2,
        ),
        "tracing_sampled_per_request": round(us["tracing_sampled"] - us["tracing_off"], 2),
        "tracing_unsampled_per_request": round(us["tracing_unsampled_root"] - us["tracing_off"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
