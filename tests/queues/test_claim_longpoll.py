from __future__ import annotations

import threading
import time

import httpx


def test_claim__long_poll_returns_the_run_enqueued_while_waiting(api: httpx.Client, live_server_url: str) -> None:
    holder: dict[str, object] = {}
    sent = threading.Event()

    def waiting_worker() -> None:
        # Its own client, whose event hook tells the test the claim is on its way (not a sleep).
        hooks = {"request": [lambda request: sent.set()]}
        with httpx.Client(base_url=live_server_url, timeout=60, event_hooks=hooks) as worker_api:
            started = time.monotonic()
            holder["claim"] = worker_api.post("/queues/claim", json={"queues": ["lp"], "waitMs": 20000}).json()
            holder["waited"] = time.monotonic() - started

    worker = threading.Thread(target=waiting_worker)
    worker.start()
    assert sent.wait(30)
    # Enqueued once the claim is on its way: whether the server has parked it yet or not (it
    # subscribes before its first read), the claim must come back with this run.
    run = api.post("/queues/lp/enqueue", json={"workflowName": "wf"}).json()["run"]
    worker.join(60)
    claim = holder["claim"]
    assert isinstance(claim, dict)
    assert [r["id"] for r in claim["runs"]] == [run["id"]]
    assert isinstance(holder["waited"], float)
    assert holder["waited"] < 20  # woken by the enqueue, not by the timeout


def test_claim__long_poll_with_nothing_to_claim_answers_empty_after_the_wait(api: httpx.Client) -> None:
    response = api.post("/queues/claim", json={"queues": ["empty"], "waitMs": 200})
    assert response.status_code == 200
    assert response.json()["runs"] == []
