"""JSON has no integer limit: an integer beyond 64 bits is stored and answered exactly, on the
WSGI hot path, through the framework, and through the ORM (never rounded into a float, never a
500 when it is read back)."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_protocol_routes import begun

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

BIG = 2**70 + 1  # a float would round it


def test_big_integers_round_trip_exactly_everywhere(api: httpx.Client) -> None:
    created = api.post("/runs/wf", json={"input": {"n": BIG}, "metadata": {"n": [BIG]}})
    assert created.status_code == 200, created.text
    assert created.json()["run"]["input"] == {"n": BIG}
    assert created.json()["run"]["metadata"] == {"n": [BIG]}

    run_id, owner = begun(api)
    hot = api.post(
        f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "input": BIG, "leaseOwner": owner}
    )
    assert hot.status_code == 200, hot.text
    step_id = hot.json()["step"]["id"]
    assert hot.json()["step"]["input"] == BIG
    done = api.post(f"/runs/{run_id}/steps/{step_id}/complete", json={"leaseOwner": owner, "output": [BIG]})
    assert done.status_code == 200, done.text
    replay = api.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "input": BIG})
    assert replay.json()["output"] == [BIG]

    framework = api.post(
        f"/runs/{run_id.replace('_', '%5F', 1)}/steps/begin",
        json={"name": "t", "inputHash": "h", "input": {"n": BIG}, "leaseOwner": owner},
    )
    assert framework.status_code == 200, framework.text

    gate = api.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "ok?", "data": {"n": BIG}}).json()
    resolved = api.post(
        f"/runs/{run_id}/gates/{gate['gate']['id']}/resolve", json={"decision": "approved", "payload": {"n": BIG}}
    )
    assert resolved.status_code == 200, resolved.text
    assert api.put(f"/runs/{run_id}/state", json={"value": {"n": BIG}}).status_code == 200
    assert api.patch(f"/runs/{run_id}/state", json={"value": {"m": BIG}}).status_code == 200
    assert api.post(f"/runs/{run_id}/usage", json={"kind": "llm", "metadata": {"n": BIG}}).status_code == 200

    detail = api.get(f"/runs/{run_id}")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["s"]["output"] == [BIG]
    assert steps["t"]["input"] == {"n": BIG}
    assert body["gates"][0]["data"] == {"n": BIG}
    assert body["gates"][0]["decisionPayload"] == {"n": BIG}
    assert body["state"]["value"] == {"n": BIG, "m": BIG}
    assert body["usage"][0]["metadata"] == {"n": BIG}
