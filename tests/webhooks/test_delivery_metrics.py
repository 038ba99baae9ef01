"""Webhook attempts and reconciler ticks happen in the Celery worker, not in the web processes:
their figures reach the web server's ``GET /metrics`` through the shared multiprocess folder
(``PROMETHEUS_MULTIPROC_DIR``, as ``tidebase_run`` sets it up for its children)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_live_server
from tests.core.test_metrics import ENV, Samples, scrape, value

from .conftest import TEST_ENV, Receipt, Receiver, Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DELIVERED = {"kind": "channel", "outcome": "delivered", "attempt": "2"}


def test_deliveries_by_outcome_and_attempt_reach_the_web_servers_metrics(
    test_database_url: str,
    start_worker: Callable[..., Worker],
    broker_env: dict[str, str],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    server = start_live_server(test_database_url, TIDEBASE_API_KEY="secret", **broker_env, **TEST_ENV, **shared)

    def first_fails(receipt: Receipt) -> tuple[int, dict[str, str], bytes]:
        return (500, {}, b"try again") if receipt.attempt == 1 else (200, {}, b"ok")

    receiver.behaviour = first_fails
    try:
        start_worker(**shared)
        channel = {"type": "webhook", "url": receiver.url, "events": ["state.updated"]}
        with httpx.Client(base_url=server.url, headers=ENV, timeout=30) as http:
            run = http.post("/runs/wf-deliveries", json={"channels": [channel]}).json()["run"]["id"]
            assert http.put(f"/runs/{run}/state", json={"value": {"n": 1}}).status_code == 200

        wait_for(lambda: len(receiver.receipts) == 2, 30, what="the retry to be delivered")

        def delivered() -> Samples | None:
            samples = scrape(server.url)
            return samples if value(samples, "tidebase_webhook_deliveries_total", **DELIVERED) else None

        samples = wait_for(delivered, 30, what="the worker's figures in /metrics")
    finally:
        server.stop()

    deliveries = "tidebase_webhook_deliveries_total"
    assert value(samples, deliveries, kind="channel", outcome="retry", attempt="1") == 1
    assert value(samples, deliveries, kind="channel", outcome="delivered", attempt="2") == 1
    assert value(samples, deliveries, kind="channel", outcome="failed", attempt="1") == 0
    assert value(samples, "tidebase_webhook_attempt_duration_seconds_count", kind="channel") == 2
    assert value(samples, "tidebase_reconciler_tick_duration_seconds_count") >= 1  # beat ticks every 300 ms
    assert value(samples, "tidebase_reconciler_last_tick_timestamp_seconds") > 0
    assert value(samples, "tidebase_outbox_pending", kind="channel") == 0
