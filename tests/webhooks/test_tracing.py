"""One trace from an agent's step to the webhook it causes (``tidebase_core.tracing``).

A real agent process (OpenTelemetry SDK, OTLP/HTTP export) runs a step that opens a gate with a
webhook channel and then fails its run, which has a recovery webhook. The server (two web
processes) and the Celery worker export to the same local OTLP/HTTP receiver, decoded here
with ``opentelemetry-proto``. Expected, all under the agent's trace id:

    agent.invocation (agent)
    ├── tidebase.step (agent)
    │   └── POST /runs/{run_id}/gates/begin (server)
    │       └── deliver channel (worker) ── its traceparent is the gate.created webhook's header
    └── POST /runs/{run_id}/fail (server)
        └── deliver recovery (worker) ── its traceparent is the run.resume webhook's header
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import ROOT, free_port, start_live_server

from .conftest import TEST_ENV, Receipt, Receiver, Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SERVER_KIND, CLIENT_KIND = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Collector:
    """A local OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Exported] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    values = {a.key: _plain(a.value) for a in span.attributes}
                    found.append(
                        Exported(
                            service=attributes.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=values,
                        )
                    )
        with self.lock:
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[Exported]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def _one(spans: list[Exported], **match: Any) -> Exported:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name, s.kind, s.span_id, s.parent_id) for s in spans])
    return found[0]


def test_one_trace_from_the_agents_step_to_the_webhooks_it_causes(
    test_database_url: str,
    start_worker: Callable[..., Worker],
    broker_env: dict[str, str],
    receiver: Receiver,
    collector: Collector,
) -> None:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within moments, not the default 5 s
        "TIDEBASE_TRACING": "1",
    }
    server = start_live_server(test_database_url, TIDEBASE_API_KEY="secret", **broker_env, **TEST_ENV, **otel)
    try:
        # TIDEBASE_PROCESS: this test process may have imported config.wsgi, which marks itself "web"
        # in os.environ, and the worker inherits the environment; its spans must say "worker".
        start_worker(**otel, TIDEBASE_PROCESS="worker")
        agent = subprocess.run(
            [sys.executable, "-m", "tests.webhooks.traced_agent", server.url, collector.url, receiver.url],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            capture_output=True,
            timeout=120,
            check=True,
        )
        ran = json.loads(agent.stdout.decode().strip().splitlines()[-1])
        trace_id = ran["traceId"]

        receipts = wait_for(lambda: len(receiver.receipts) >= 2 and list(receiver.receipts), 30, what="both webhooks")
        by_type = {json.loads(r.body)["type"]: r for r in receipts}
        expected = {"agent.invocation", "tidebase.step", "deliver channel", "deliver recovery"}

        def complete() -> list[Exported] | None:
            found = collector.trace(trace_id)
            return found if expected <= {s.name for s in found} else None

        spans = wait_for(complete, 30, what="every span of the trace")
    finally:
        server.stop()

    root = _one(spans, name="agent.invocation", service="agent")
    step = _one(spans, name="tidebase.step", service="agent", parent_id=root.span_id)
    assert step.attributes["tidebase.run.id"] == ran["runId"]
    gate_request = _one(spans, service="tidebase-server", name="POST /runs/{run_id}/gates/begin")
    assert (gate_request.kind, gate_request.parent_id) == (SERVER_KIND, step.span_id)
    assert gate_request.attributes["http.response.status_code"] == 200
    fail_request = _one(spans, service="tidebase-server", name="POST /runs/{run_id}/fail")
    assert fail_request.parent_id == root.span_id
    gate_delivery = _one(spans, name="deliver channel", service="tidebase-worker", kind=CLIENT_KIND)
    recovery_delivery = _one(spans, name="deliver recovery", service="tidebase-worker", kind=CLIENT_KIND)
    assert gate_delivery.parent_id == gate_request.span_id
    assert recovery_delivery.parent_id == fail_request.span_id
    assert gate_delivery.attributes["tidebase.delivery.outcome"] == "delivered"

    # The webhooks carry the delivery spans' context: their receivers continue the same trace.
    assert _context(by_type["gate.created"]) == (trace_id, gate_delivery.span_id, "sampled")
    assert _context(by_type["run.resume"]) == (trace_id, recovery_delivery.span_id, "sampled")


def _context(receipt: Receipt) -> tuple[str, str, str]:
    """A W3C ``traceparent`` header: trace id, parent span id, whether it is sampled."""
    version, trace_id, span_id, flags = receipt.headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, "sampled" if int(flags, 16) & 1 else "not sampled"
