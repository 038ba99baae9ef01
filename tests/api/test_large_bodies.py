"""Large request bodies are bounded per process (issue #11, goal 2): at most
``TIDEBASE_LARGE_BODY_CONCURRENCY`` requests with a body above ``TIDEBASE_LARGE_BODY_BYTES`` are
processed at once, so concurrent multi-megabyte checkpoints cannot multiply a process's memory
without limit. Others wait, then get 503 ``busy``; small requests never wait."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.conftest import ROOT, LiveServer, lock_waiters
from tests.live import wait_for

LARGE = 2000  # bytes: a "large" body for this server


@pytest.fixture
def one_slot(test_database_url: str) -> Iterator[LiveServer]:
    """One process, one slot for large bodies, a short wait for it."""
    (ROOT / "var").mkdir(exist_ok=True)
    env = {
        "DATABASE_URL": test_database_url,
        "TIDEBASE_API_KEY": "",
        "TIDEBASE_API_KEY_CACHE_S": "0",
        "TIDEBASE_LARGE_BODY_BYTES": str(LARGE),
        "TIDEBASE_LARGE_BODY_CONCURRENCY": "1",
        "TIDEBASE_LARGE_BODY_WAIT_S": "1",
        "TIDEBASE_LOCK_TIMEOUT_MS": "60000",
    }
    server = LiveServer(env, workers=1)
    yield server
    server.stop()


def big_state(n: int) -> dict[str, object]:
    return {"value": {"blob": "x" * n}}


@pytest.mark.parametrize("route", ["state", "step_complete"])
def test_large_bodies__a_second_one_waits_for_the_slot_then_is_503_busy_and_small_ones_pass(
    one_slot: LiveServer, test_database_url: str, route: str
) -> None:
    api = httpx.Client(base_url=one_slot.url, timeout=60)
    held = api.post("/runs/holds-the-slot", json={}).json()["run"]["id"]
    other = api.post("/runs/other", json={}).json()["run"]["id"]
    api.put(f"/runs/{held}/state", json={"value": {}})
    first: list[httpx.Response] = []

    with psycopg.connect(test_database_url) as holder:
        # The first large request takes the slot and then waits on this row lock.
        holder.execute("SELECT 1 FROM tb_run_state WHERE run_id = %s FOR UPDATE", [held])
        worker = threading.Thread(target=lambda: first.append(api.put(f"/runs/{held}/state", json=big_state(LARGE))))
        worker.start()
        wait_for(lambda: lock_waiters("tb_run_state") >= 1, 30)

        if route == "state":
            second = httpx.put(f"{one_slot.url}/runs/{other}/state", json=big_state(LARGE), timeout=60)
        else:  # the step hot path hands a large body to the framework path and its admission
            begun = httpx.post(
                f"{one_slot.url}/runs/{other}/steps/begin",
                json={"name": "s", "inputHash": "h", "leaseOwner": "w"},
                timeout=60,
            ).json()
            second = httpx.post(
                f"{one_slot.url}/runs/{other}/steps/{begun['step']['id']}/complete",
                json={"leaseOwner": "w", "output": "x" * LARGE},
                timeout=60,
            )
        small = httpx.put(f"{one_slot.url}/runs/{other}/state", json={"value": {"n": 1}}, timeout=60)
        holder.rollback()
    worker.join(60)

    assert second.status_code == 503, second.text
    assert (second.json()["code"], second.headers["retry-after"]) == ("busy", "1")
    assert small.status_code == 200, small.text
    assert first[0].status_code == 200, first[0].text
    # Once the slot is free again, the refused request goes through as it is.
    again = httpx.put(f"{one_slot.url}/runs/{other}/state", json=big_state(LARGE), timeout=60)
    assert again.status_code == 200, again.text
    api.close()
