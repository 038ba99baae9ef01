"""The dashboard's Processes page and the heartbeat rows behind it (issue #13, item 2)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from tidebase_core.models import QueueConfig, Run
from webhooks.heartbeat import Heartbeat
from webhooks.models import ProcessHeartbeat

pytestmark = pytest.mark.django_db


def test_heartbeat__upserts_one_row_per_process_and_prunes_old_ones() -> None:
    ProcessHeartbeat.objects.create(
        id="worker-gone", kind="worker", hostname="h", pid=1, started_at=timezone.now(), last_seen=timezone.now()
    )
    ProcessHeartbeat.objects.filter(id="worker-gone").update(last_seen=timezone.now() - timedelta(days=2))
    heartbeat = Heartbeat("worker")

    assert heartbeat.beat()
    assert heartbeat.beat()

    rows = list(ProcessHeartbeat.objects.all())
    assert [(r.id, r.kind, r.pid, r.stopped_at) for r in rows] == [(heartbeat.id, "worker", heartbeat.pid, None)]


def test_processes_page__lists_heartbeats_and_warns_when_no_worker_is_alive(clients: dict[str, Client]) -> None:
    Heartbeat("beat").beat()

    page = clients["viewer"].get("/dashboard/processes/").content.decode()

    assert 'data-warning="no-worker"' in page
    assert 'data-warning="no-beat"' not in page
    assert "alive" in page


def test_processes_page__no_warning_when_a_worker_and_a_beat_are_alive(clients: dict[str, Client]) -> None:
    Heartbeat("worker").beat()
    Heartbeat("beat").beat()

    page = clients["viewer"].get("/dashboard/processes/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="process-rows")

    assert page.status_code == 200
    assert "data-warning" not in page.content.decode()


def test_processes_page__warns_about_a_queue_with_ready_runs_that_nobody_claims(clients: dict[str, Client]) -> None:
    Heartbeat("worker").beat()
    Heartbeat("beat").beat()
    long_ago = timezone.now() - timedelta(minutes=5)
    for queue in ("orphaned", "polled", "paused"):
        run = Run.objects.create(workflow_name="w", queue=queue, status="queued")
        Run.objects.filter(id=run.id).update(updated_at=long_ago)
    Run.objects.create(workflow_name="w", queue="polled", status="running", claimed_at=timezone.now())
    QueueConfig.objects.create(name="paused", paused=True)

    page = clients["viewer"].get("/dashboard/processes/").content.decode()

    assert page.count('data-warning="queue-not-polled"') == 1
    assert ">orphaned<" in page


def test_processes_page__needs_a_login() -> None:
    response = Client().get("/dashboard/processes/")

    assert response.status_code == 302
