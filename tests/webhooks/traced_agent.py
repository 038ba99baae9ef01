"""An agent process with OpenTelemetry configured (tests/webhooks/test_tracing.py).

``python -m tests.webhooks.traced_agent SERVER_URL OTLP_URL RECEIVER_URL``: under one root span
it runs a workflow whose step opens a gate with a webhook channel, then fails, so the run's
recovery webhook goes out too. Prints ``{"runId", "traceId"}`` as JSON and exits once its spans
are exported."""

from __future__ import annotations

import contextlib
import json
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tidebase import Tidebase


def main(server: str, otlp: str, receiver: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "agent"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp}/v1/traces")))
    trace.set_tracer_provider(provider)
    tide = Tidebase(url=server, api_key="secret")
    seen: dict[str, str] = {}

    def workflow(run: object, input: object) -> None:
        run_id = run.run_id  # type: ignore[attr-defined]
        seen["runId"] = run_id
        body = {
            "name": "ship",
            "prompt": "Ship it?",
            "channels": [{"type": "webhook", "url": receiver, "events": ["gate.created"]}],
        }
        # run.step opens the SDK's step span (tidebase/_tracing.py); the gate request is its child.
        run.step("ask-approval", lambda: tide.request("POST", f"/runs/{run_id}/gates/begin", body))  # type: ignore[attr-defined]
        raise RuntimeError("the agent gives up")  # fails the run: its recovery webhook goes out

    with (
        trace.get_tracer("agent").start_as_current_span("agent.invocation") as root,
        contextlib.suppress(RuntimeError),
    ):
        tide.run("traced", workflow, recovery_webhook=receiver)
    tide.close()
    provider.shutdown()
    print(json.dumps({"runId": seen["runId"], "traceId": format(root.get_span_context().trace_id, "032x")}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
