from __future__ import annotations

import threading

import httpx


def test_create_run__same_idempotency_key_returns_the_first_run(api: httpx.Client) -> None:
    headers = {"Idempotency-Key": "create-1"}
    first = api.post("/runs/wf", json={"input": {"a": 1}}, headers=headers).json()["run"]
    second = api.post("/runs/wf", json={"input": {"a": 1}}, headers=headers).json()["run"]
    assert second["id"] == first["id"]
    assert len([r for r in api.get("/runs").json()["runs"] if r["workflowName"] == "wf"]) == 1


def test_usage__concurrent_retries_with_one_key_record_once(api: httpx.Client, live_server_url: str) -> None:
    run_id = api.post("/runs/wf", json={}).json()["run"]["id"]
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def record() -> None:
        with httpx.Client(base_url=live_server_url, timeout=30) as client:
            barrier.wait()
            response = client.post(
                f"/runs/{run_id}/usage", json={"inputTokens": 3}, headers={"Idempotency-Key": "usage-1"}
            )
            ids.append(response.json()["usage"]["id"])

    threads = [threading.Thread(target=record) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    detail = api.get(f"/runs/{run_id}").json()
    assert len(detail["usage"]) == 1
    assert [e["type"] for e in detail["events"]].count("usage.recorded") == 1
