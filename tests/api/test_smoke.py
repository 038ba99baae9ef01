from __future__ import annotations

import httpx


def test_health__is_open_and_json(api: httpx.Client) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_create_run__percent_encoded_slash_stays_in_the_name(api: httpx.Client) -> None:
    response = api.post("/runs/a%2Fb", json={})
    assert response.status_code == 200
    run = response.json()["run"]
    assert run["workflowName"] == "a/b"
    assert run["status"] == "pending"
    assert api.get(f"/runs/{run['id']}").json()["run"]["workflowName"] == "a/b"
