from __future__ import annotations

import threading
import time

import httpx


def test_claim__long_poll_returns_the_run_enqueued_while_waiting(api: httpx.Client) -> None:
    holder: dict[str, object] = {}

    def waiting_worker() -> None:
        started = time.monotonic()
        holder["claim"] = api.post("/queues/claim", json={"queues": ["lp"], "waitMs": 20000}).json()
        holder["waited"] = time.monotonic() - started

    worker = threading.Thread(target=waiting_worker)
    worker.start()
    time.sleep(0.3)  # the worker is now parked in the long-poll
    run = api.post("/queues/lp/enqueue", json={"workflowName": "wf"}).json()["run"]
    worker.join(30)
    claim = holder["claim"]
    assert isinstance(claim, dict)
    assert [r["id"] for r in claim["runs"]] == [run["id"]]
    assert isinstance(holder["waited"], float)
    assert holder["waited"] < 20  # woken by the enqueue, not by the timeout


def test_claim__long_poll_with_nothing_to_claim_answers_empty_after_the_wait(api: httpx.Client) -> None:
    response = api.post("/queues/claim", json={"queues": ["empty"], "waitMs": 200})
    assert response.status_code == 200
    assert response.json()["runs"] == []
