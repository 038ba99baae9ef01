"""Push-mode queues end to end: a queue with an ``invokeUrl`` gets signed ``run.invoke``
deliveries from the reconciler through the dispatcher; the SDK receiver begins each run by id
and finishes it; a duplicate invitation of a finished run executes nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_live_server
from tidebase import Tidebase
from tidebase.receiver import WebhookHandler, serve
from tidebase_core.models import RecoveryAttempt, Run
from tidebase_core.services.runs import recovery_record

from .conftest import TEST_ENV, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "push-secret"


def test_push_queue__invites_a_worker_which_runs_each_run_once(
    test_database_url: str, start_worker: Any, broker_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_live_server(test_database_url, TIDEBASE_WEBHOOK_SECRET=SECRET, **broker_env, **TEST_ENV)
    log = tmp_path / "executions.log"
    tide = Tidebase(url=server.url, webhook_secret=SECRET)

    @tide.workflow("pushed")
    def pushed(run: Any, input: Any) -> int:
        def body() -> int:
            with log.open("a") as fh:
                fh.write(f"{input['n']}\n")
            return int(input["n"]) * 10

        return int(run.step("work", body, input=input))

    handler = WebhookHandler(tide)
    http = serve(handler, "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        tide.queues.configure("push-q", invoke_url=f"http://127.0.0.1:{http.server_port}/")
        run_ids = [tide.enqueue("pushed", queue="push-q", input={"n": n})["run"]["id"] for n in range(3)]
        start_worker(TIDEBASE_WEBHOOK_SECRET=SECRET)  # beat ticks the reconciler every 300 ms
        wait_for(lambda: Run.objects.filter(id__in=run_ids, status="completed").count() == 3, 30, what="pushed runs")
        assert handler.join(60)
        assert sorted(log.read_text().split()) == ["0", "1", "2"]
        invites = RecoveryAttempt.objects.filter(run_id__in=run_ids, type="run.invoke")
        assert invites.count() == 3
        assert set(invites.values_list("reason", flat=True)) == {"queue_dispatch"}
        assert set(invites.values_list("status", flat=True)) == {"delivered"}

        # A duplicate invitation (at-least-once delivery) of a finished run is harmless.
        duplicate = recovery_record(
            Run.objects.get(id=run_ids[0]), reason="queue_dispatch", type="run.invoke", url=invites[0].webhook_url
        )
        wait_for(lambda: RecoveryAttempt.objects.get(id=duplicate.id).status == "delivered", 30, what="the duplicate")
        assert handler.join(60)
        assert sorted(log.read_text().split()) == ["0", "1", "2"]
        assert [r.result for r in Run.objects.filter(id__in=run_ids).order_by("created_at")] == [0, 10, 20]
    finally:
        http.shutdown()
        http.server_close()
        tide.close()
        server.stop()
