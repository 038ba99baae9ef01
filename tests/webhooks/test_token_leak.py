"""An agent key can never approve its own gate (issue #12, item 1; docs/auth.md "Resolve tokens").

The attack: an agent opens a gate (or creates, enqueues or spawns the run) with a webhook channel
pointing at a receiver it controls; the ``gate.created`` delivery used to carry the gate's
``resolveToken``, and the resolve route accepts that token with no key and any ``actor``. Here a
real server (API closed), real Celery workers and real receivers play it out: deliveries to
channels an agent set carry ``resolveToken: null`` and a ``decideUrl``; channels an operator set
still get the token, and it still works as an approval link."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import start_live_server
from tidebase_core.auth import hash_key
from tidebase_core.models import ApiKey, ChannelDelivery, DeliveryStatus, Gate
from tidebase_core.wire import WITHHELD

from .conftest import TEST_ENV, Receiver, Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"Authorization": "Bearer secret"}


@pytest.fixture(autouse=True)
def deliveries_settled(transactional_db: None) -> Iterator[None]:
    """Each test's teardown truncates every table, while this module's worker may still be
    writing the deliveries the test's last request caused (a resolve's ``gate.resolved``): the
    truncate and that write deadlocked once. Let them finish first (best effort, bounded)."""
    yield
    deadline = time.monotonic() + 20
    while ChannelDelivery.objects.filter(status=DeliveryStatus.PENDING).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(test_database_url: str, broker_env: dict[str, str]) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_API_KEY="secret", **broker_env, **TEST_ENV)
    yield live.url
    live.stop()


@pytest.fixture(scope="module")
def worker(
    test_database_url: str, broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("token-leak") / "worker.log"
    running = Worker(test_database_url, broker_env, {}, log).start(concurrency=4, beat=True)
    yield running
    running.stop()


@pytest.fixture
def http(server: str, worker: Worker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture
def agent_receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def app_key(name: str, scope: str) -> dict[str, str]:
    raw = f"tb_{name}_{'y' * 24}"
    ApiKey.objects.create(name=name, prefix=raw[:10], key_hash=hash_key(raw), scope=scope)
    return {"Authorization": f"Bearer {raw}"}


def gate_created(receiver: Receiver, gate_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The ``gate.created`` deliveries of one gate a receiver got (waits for ``count``)."""

    def got() -> list[dict[str, Any]] | None:
        bodies = [b for b in receiver.bodies() if b["type"] == "gate.created" and b["gateId"] == gate_id]
        return bodies if len(bodies) >= count else None

    found: list[dict[str, Any]] = wait_for(got, 30, what=f"{count} gate.created deliveries")
    return found


def channel(receiver: Receiver) -> list[dict[str, str]]:
    return [{"type": "webhook", "url": receiver.url}]


# Every way an agent can attach a channel to a run that will hold a gate: (how, then open the gate).
Setup = Callable[[httpx.Client, dict[str, str], Receiver], tuple[str, list[dict[str, str]]]]


def via_run_create(http: httpx.Client, agent: dict[str, str], r: Receiver) -> tuple[str, list[dict[str, str]]]:
    run = http.post("/runs/agent-wf", json={"channels": channel(r)}, headers=agent).json()["run"]["id"]
    assert http.post(f"/runs/{run}/begin", headers=agent).status_code == 200
    return run, []


def via_enqueue(http: httpx.Client, agent: dict[str, str], r: Receiver) -> tuple[str, list[dict[str, str]]]:
    body = {"workflowName": "agent-wf", "channels": channel(r)}
    assert http.post("/queues/leak-q/enqueue", json=body, headers=agent).status_code == 200
    claimed = http.post("/queues/claim", json={"queues": ["leak-q"]}, headers=agent).json()["runs"]
    return claimed[0]["id"], []


def via_child(http: httpx.Client, agent: dict[str, str], r: Receiver) -> tuple[str, list[dict[str, str]]]:
    parent = http.post("/runs/agent-wf", json={}, headers=agent).json()["run"]["id"]
    body = {"name": "kid", "workflowName": "agent-wf", "channels": channel(r)}
    child = http.post(f"/runs/{parent}/children", json=body, headers=agent).json()["run"]["id"]
    assert http.post(f"/runs/{child}/begin", headers=agent).status_code == 200
    return child, []


def via_gate_inline(http: httpx.Client, agent: dict[str, str], r: Receiver) -> tuple[str, list[dict[str, str]]]:
    run = http.post("/runs/agent-wf", json={}, headers=agent).json()["run"]["id"]
    assert http.post(f"/runs/{run}/begin", headers=agent).status_code == 200
    return run, channel(r)


@pytest.mark.parametrize(
    "setup", [via_run_create, via_enqueue, via_child, via_gate_inline], ids=["create", "enqueue", "child", "inline"]
)
def test_agent_set_channel__gets_no_token_and_cannot_approve_its_own_gate(
    http: httpx.Client, server: str, agent_receiver: Receiver, setup: Setup
) -> None:
    agent = app_key("robot", "agent")
    run_id, inline = setup(http, agent, agent_receiver)
    opened = http.post(
        f"/runs/{run_id}/gates/begin", json={"name": "deploy", "prompt": "ship it?", "channels": inline}, headers=agent
    )
    gate_id = opened.json()["gate"]["id"]
    token = Gate.objects.get(id=gate_id).resolve_token

    [delivered] = gate_created(agent_receiver, gate_id)
    gate = delivered["payload"]["gate"]
    # The attack, as the issue describes it: resolve with what was delivered, no key, any actor.
    attack = http.post(
        f"/runs/{run_id}/gates/{gate_id}/resolve",
        json={"decision": "approved", "token": gate["resolveToken"], "actor": "security-team"},
    )
    with_key = http.post(
        f"/runs/{run_id}/gates/{gate_id}/resolve", json={"decision": "approved", "token": token}, headers=agent
    )
    detail = http.get(f"/runs/{run_id}", headers=agent)

    assert Gate.objects.get(id=gate_id).status == "pending", attack.json()
    assert attack.status_code == 400  # no token to present
    assert (with_key.status_code, with_key.json()["code"]) == (403, "forbidden")
    assert gate["resolveToken"] is None
    assert gate["decideUrl"] == f"{server}/dashboard/#gate-{gate_id}"
    assert gate["resolveUrl"] == f"{server}/runs/{run_id}/gates/{gate_id}/resolve"
    assert all(token not in r.body.decode() for r in agent_receiver.receipts)
    assert token not in detail.text
    assert token not in opened.text


def test_operator_set_channel__gets_the_token_and_it_still_resolves(
    http: httpx.Client, server: str, receiver: Receiver, agent_receiver: Receiver
) -> None:
    operator, agent = app_key("ops", "operator"), app_key("robot", "agent")
    run_id = http.post("/runs/reviewed", json={"channels": channel(receiver)}, headers=operator).json()["run"]["id"]
    assert http.post(f"/runs/{run_id}/begin", headers=agent).status_code == 200
    body = {"name": "deploy", "prompt": "ship it?", "channels": channel(agent_receiver)}
    gate_id = http.post(f"/runs/{run_id}/gates/begin", json=body, headers=agent).json()["gate"]["id"]
    token = Gate.objects.get(id=gate_id).resolve_token

    [to_operator] = gate_created(receiver, gate_id)
    [to_agent] = gate_created(agent_receiver, gate_id)

    assert to_operator["payload"]["gate"]["resolveToken"] == token
    assert to_operator["payload"]["gate"]["decideUrl"] == f"{server}/dashboard/#gate-{gate_id}"
    assert to_agent["payload"]["gate"]["resolveToken"] is None
    link = http.post(
        to_operator["payload"]["gate"]["resolveUrl"].removeprefix(server),
        json={"decision": "approved", "token": token, "actor": "reviewer@example.com"},
    )
    assert link.status_code == 200
    assert (link.json()["gate"]["status"], link.json()["gate"]["decidedBy"]) == ("approved", "token:resolve-token")


@pytest.mark.parametrize("who", ["env", "admin"])
def test_channels_set_by_the_env_key_or_an_admin_key__get_the_token(
    http: httpx.Client, receiver: Receiver, who: str
) -> None:
    headers = ENV if who == "env" else app_key("boss", "admin")
    run_id = http.post("/runs/wf", json={}, headers=headers).json()["run"]["id"]
    http.post(f"/runs/{run_id}/begin", headers=headers)
    body = {"name": "g", "prompt": "?", "channels": channel(receiver)}
    gate_id = http.post(f"/runs/{run_id}/gates/begin", json=body, headers=headers).json()["gate"]["id"]

    [delivered] = gate_created(receiver, gate_id)

    assert delivered["payload"]["gate"]["resolveToken"] == Gate.objects.get(id=gate_id).resolve_token


def test_an_echoing_receiver_cannot_hand_the_token_to_an_agent(http: httpx.Client, receiver: Receiver) -> None:
    """A receiver an operator chose that echoes its request: the stored answer holds the token;
    an agent reading the run detail sees neither it nor the payload's token; an operator does."""
    receiver.behaviour = lambda receipt: (200, {"content-type": "application/json"}, receipt.body)
    operator, agent = app_key("ops", "operator"), app_key("robot", "agent")
    run_id = http.post("/runs/echo", json={"channels": channel(receiver)}, headers=operator).json()["run"]["id"]
    http.post(f"/runs/{run_id}/begin", headers=agent)
    opened = http.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "?"}, headers=agent)
    gate_id = opened.json()["gate"]["id"]
    token = Gate.objects.get(id=gate_id).resolve_token
    wait_for(lambda: ChannelDelivery.objects.filter(gate_id=gate_id, status="delivered").exists(), 30, what="delivery")
    assert token in (ChannelDelivery.objects.get(gate_id=gate_id).response_body or "")

    as_agent = http.get(f"/runs/{run_id}", headers=agent)
    as_operator = http.get(f"/runs/{run_id}", headers=operator).json()

    assert token not in as_agent.text
    [seen] = as_agent.json()["channelDeliveries"]
    # Withheld whole, not just the token cut out: an agent could pad the gate's data so the
    # stored 8000-character excerpt ends inside the token, and guess the characters left.
    assert seen["responseBody"] == WITHHELD
    assert seen["payload"]["gate"]["resolveToken"] is None
    assert as_operator["channelDeliveries"][0]["payload"]["gate"]["resolveToken"] == token
    assert token in as_operator["channelDeliveries"][0]["responseBody"]


def test_a_channel_set_while_the_api_was_open__gets_no_token_once_a_key_closes_it(
    test_database_url: str, broker_env: dict[str, str], worker: Worker, receiver: Receiver
) -> None:
    """A run created by an anonymous caller while the API was open keeps its channels after the
    first key closes the API: from then on they are treated as agent-set."""
    live = start_live_server(test_database_url, **broker_env, **TEST_ENV)  # auto mode, no env key
    try:
        with httpx.Client(base_url=live.url, timeout=30) as anon:
            run_id = anon.post("/runs/early", json={"channels": channel(receiver)}).json()["run"]["id"]
            assert anon.post(f"/runs/{run_id}/begin").status_code == 200
            g0 = anon.post(f"/runs/{run_id}/gates/begin", json={"name": "g0", "prompt": "?"}).json()["gate"]["id"]
            [first] = gate_created(receiver, g0)
            assert first["payload"]["gate"]["resolveToken"] == Gate.objects.get(id=g0).resolve_token

            agent = app_key("robot", "agent")  # the first key: the API is closed from now on
            assert anon.post(f"/runs/{run_id}/gates/begin", json={"name": "g1", "prompt": "?"}).status_code == 401
            opened = anon.post(f"/runs/{run_id}/gates/begin", json={"name": "g1", "prompt": "?"}, headers=agent)
            [after] = gate_created(receiver, opened.json()["gate"]["id"])
            assert after["payload"]["gate"]["resolveToken"] is None
            assert after["payload"]["gate"]["decideUrl"]
    finally:
        live.stop()


def test_gate_events_and_resolved_deliveries_never_carry_the_token(http: httpx.Client, receiver: Receiver) -> None:
    """The rest of the family: the event log (and so SSE) and gate.resolved deliveries, even to
    a channel the env key set."""
    run_id = http.post("/runs/wf", json={"channels": channel(receiver)}, headers=ENV).json()["run"]["id"]
    http.post(f"/runs/{run_id}/begin", headers=ENV)
    opened = http.post(f"/runs/{run_id}/gates/begin", json={"name": "g", "prompt": "?"}, headers=ENV)
    gate_id = opened.json()["gate"]["id"]
    token = Gate.objects.get(id=gate_id).resolve_token
    http.post(f"/runs/{run_id}/gates/{gate_id}/resolve", json={"decision": "rejected"}, headers=ENV)

    resolved = wait_for(
        lambda: [b for b in receiver.bodies() if b["type"] == "gate.resolved"], 30, what="gate.resolved delivery"
    )
    with http.stream("GET", f"/runs/{run_id}/events", params={"token": "secret"}) as stream:
        lines = []
        for line in stream.iter_lines():
            lines.append(line)
            if "gate.resolved" in line:
                break

    assert resolved[0]["payload"]["gate"]["resolveToken"] is None
    assert token not in "\n".join(lines)
    assert any("gate.created" in line for line in lines)
