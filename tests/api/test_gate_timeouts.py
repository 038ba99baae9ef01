"""A gate past its ``timeoutAt`` reads as cancelled by ``timeout`` without waiting for the
reconciler: the gate poll cancels it (an explicit service call after the read), through the same
exactly-once update as a decision. Through the live server, with no reconciler running."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from django.db.models.functions import Now

from tidebase_core.models import Event, Gate

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


def open_gate(api: httpx.Client) -> tuple[str, str]:
    run_id = api.post("/runs/wf", json={}).json()["run"]["id"]
    api.post(f"/runs/{run_id}/begin")
    response = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "ok?", "timeoutMs": 3_600_000})
    assert response.status_code == 200, response.text
    gate_id: str = response.json()["gate"]["id"]
    return run_id, gate_id


def resolved_events(run_id: str) -> list[dict[str, Any]]:
    return list(Event.objects.filter(run_id=run_id, type="gate.resolved").values_list("payload", flat=True))


def test_gate_poll__a_gate_past_its_timeout_answers_cancelled_by_timeout_once(api: httpx.Client) -> None:
    run_id, gate_id = open_gate(api)
    Gate.objects.filter(id=gate_id).update(timeout_at=Now() - dt.timedelta(seconds=1))

    first = api.get(f"/runs/{run_id}/gates/{gate_id}")
    again = api.get(f"/runs/{run_id}/gates/{gate_id}")

    assert first.status_code == again.status_code == 200
    gate = first.json()["gate"]
    assert (gate["status"], gate["decision"], gate["actor"], gate["decidedBy"]) == (
        "canceled",
        "canceled",
        "timeout",
        "reconciler",
    )
    assert gate["decisionPayload"] == {"reason": "timeout"}
    assert again.json()["gate"] == gate
    assert Gate.objects.get(id=gate_id).status == "canceled"
    assert len(resolved_events(run_id)) == 1


def test_gate_poll__a_gate_not_yet_due_stays_pending(api: httpx.Client) -> None:
    run_id, gate_id = open_gate(api)

    gate = api.get(f"/runs/{run_id}/gates/{gate_id}").json()["gate"]

    assert (gate["status"], gate["decision"]) == ("pending", None)
    assert resolved_events(run_id) == []


def test_gate_long_poll__wakes_up_at_the_timeout_and_answers_it(api: httpx.Client) -> None:
    """Nothing notifies at a timeout: the long poll re-checks when the gate falls due. The wait
    is far longer than the timeout, so a poll that only woke on NOTIFY would answer pending."""
    run_id, gate_id = open_gate(api)
    Gate.objects.filter(id=gate_id).update(timeout_at=Now() + dt.timedelta(milliseconds=300))

    response = api.get(f"/runs/{run_id}/gates/{gate_id}", params={"waitMs": 60_000}, timeout=120)

    assert response.status_code == 200
    assert (response.json()["gate"]["status"], response.json()["gate"]["actor"]) == ("canceled", "timeout")
