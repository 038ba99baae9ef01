"""Approval policies over HTTP, against a live server with ``TIDEBASE_API_KEY`` set and app keys
made as the dashboard makes them: who started a run is recorded; every refusal is a clear 4xx with
its ``code`` and changes nothing; a counted vote answers the still-pending gate with ``quorum``;
approvers racing over real sockets resolve the gate once; the gate JSON carries the policy's
version and SLA times (the same in Python and in the run detail's SQL), a gate without a policy
answers as it always did, and the official ``tidebase==0.7.0`` client still decides gates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard.services import api_key_create
from tests.approvals.test_policies import policy, state
from tests.conftest import start_live_server
from tests.interop.conftest import ensure_interop_venv, run_scenario
from tidebase_core.models import AuditEntry, Event, Gate, GateVote, Run
from tidebase_core.wire import ts

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"Authorization": "Bearer secret"}


@pytest.fixture(scope="module")
def server(test_database_url: str) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_API_KEY="secret")
    yield live.url
    live.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def new_key(name: str, scope: str = "operator") -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key_create(name=name, scope=scope).secret}"}


@dataclass
class Gated:
    run: str
    gate: str
    token: str

    @property
    def url(self) -> str:
        return f"/runs/{self.run}/gates/{self.gate}"

    @property
    def row(self) -> Gate:
        return Gate.objects.get(id=self.gate)


def gated(http: httpx.Client, headers: dict[str, str] = ENV, workflow: str = "payout", name: str = "send") -> Gated:
    """A run started by ``headers``'s caller, with a pending gate."""
    run = http.post(f"/runs/{workflow}", json={}, headers=headers).json()["run"]["id"]
    assert http.post(f"/runs/{run}/begin", headers=headers).status_code == 200
    gate = http.post(f"/runs/{run}/gates/begin", json={"name": name, "prompt": "send?"}, headers=headers).json()
    return Gated(run, gate["gate"]["id"], Gate.objects.get(id=gate["gate"]["id"]).resolve_token)


def resolve(http: httpx.Client, g: Gated, headers: dict[str, str] | None, **body: Any) -> httpx.Response:
    return http.post(f"{g.url}/resolve", json={"decision": "approved", **body}, headers=headers or {})


def refused(
    http: httpx.Client, g: Gated, headers: dict[str, str] | None, status: int, code: str, **body: Any
) -> dict[str, Any]:
    """The decision is answered ``status`` with ``code`` and a message, and changes nothing."""
    before = state(g.row)
    answer = resolve(http, g, headers, **body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["error"]
    assert state(g.row) == before
    return dict(answer.json())


# ---- who started the run ------------------------------------------------------------------------


def test_started_by__is_the_caller_that_created_or_enqueued_the_run(http: httpx.Client) -> None:
    ops = new_key("ops")
    created = http.post("/runs/payout", json={}, headers=ops).json()["run"]["id"]  # the hot path
    by_env = http.post("/runs/payout", json={}, headers=ENV).json()["run"]["id"]
    enqueued = http.post("/queues/q1/enqueue", json={"workflowName": "payout"}, headers=ops).json()["run"]["id"]
    assert Run.objects.get(id=created).started_by == "key:ops"
    assert Run.objects.get(id=by_env).started_by == "api-key:env"
    assert Run.objects.get(id=enqueued).started_by == "key:ops"


# ---- each refusal: its status and code, and nothing changes -------------------------------------


def test_self_approval__the_key_that_started_the_run_may_not_approve_it(http: httpx.Client) -> None:
    policy(approver_keys=["ops", "lead"])
    ops, lead = new_key("ops"), new_key("lead")
    g = gated(http, ops)
    body = refused(http, g, ops, 403, "self_approval", actor="a colleague")
    assert body["error"].startswith("key:ops started this run and may not approve its gates")
    assert resolve(http, g, lead).json()["gate"]["status"] == "approved"

    policy("self-ok", position=1, approver_keys=["ops"], allow_self_approval=True)
    mine = gated(http, ops)
    assert resolve(http, mine, ops).json()["gate"]["status"] == "approved"


def test_approver_keys__unlisted_keys_and_the_env_key_are_not_approvers(http: httpx.Client) -> None:
    policy(approver_keys=["lead"])
    g = gated(http)
    body = refused(http, g, new_key("ops"), 403, "not_an_approver")
    assert body["error"] == "policy 'payments' lets only key lead decide this gate"
    refused(http, g, ENV, 403, "not_an_approver")
    refused(http, g, new_key("bot", "agent"), 403, "forbidden")  # agent keys never decide
    answer = resolve(http, g, new_key("lead"), actor="carol", payload={"ok": 1})
    assert answer.status_code == 200
    assert answer.json()["gate"].items() >= {"status": "approved", "actor": "carol", "decidedBy": "key:lead"}.items()
    assert answer.json()["quorum"] == {"needed": 1, "approvals": 1, "rejections": 0}

    policy("env", position=1, approver_keys=["env"])
    assert resolve(http, gated(http, new_key("agent", "agent")), ENV).status_code == 200


def test_require_comment__422_without_one_then_top_level_or_in_the_payload(http: httpx.Client) -> None:
    policy(require_comment=True, quorum=2)
    g = gated(http)
    a, b = new_key("a"), new_key("b")
    body = refused(http, g, a, 422, "comment_required")
    assert body["field"] == "comment"
    refused(http, g, a, 422, "comment_required", comment="  ", payload={"comment": ""})
    refused(http, g, a, 400, "invalid_request", comment="x" * 2001)
    refused(http, g, a, 400, "invalid_request", comment=42)
    assert resolve(http, g, a, comment="looked at it").json()["gate"]["status"] == "pending"
    assert resolve(http, g, b, payload={"comment": "me too"}).json()["gate"]["status"] == "approved"
    comments = list(GateVote.objects.filter(gate_id=g.gate).order_by("id").values_list("comment", flat=True))
    assert comments == ["looked at it", "me too"]


def test_allow_token_false__403_token_not_allowed(http: httpx.Client) -> None:
    policy(allow_token=False)
    g = gated(http)
    refused(http, g, None, 403, "token_not_allowed", token=g.token)
    refused(http, g, None, 409, "invalid_token", token="nope")
    refused(http, g, ENV, 403, "self_approval")  # the env key started this run
    assert resolve(http, g, new_key("lead")).status_code == 200


def test_allow_token_true__the_token_is_one_vote_and_losers_are_told_why(http: httpx.Client) -> None:
    policy(allow_token=True, quorum=2)
    g = gated(http)
    first = resolve(http, g, None, token=g.token, actor="reviewer")
    assert first.status_code == 200
    assert first.json()["gate"]["status"] == "pending"
    assert first.json()["quorum"] == {"needed": 2, "approvals": 1, "rejections": 0}
    body = refused(http, g, None, 409, "already_voted", token=g.token, actor="someone else")
    assert body["error"].startswith("this gate's resolve token has already voted")
    done = resolve(http, g, new_key("lead"))
    assert done.json()["gate"]["status"] == "approved"
    assert done.json()["quorum"] == {"needed": 2, "approvals": 2, "rejections": 0}
    body = refused(http, g, ENV, 409, "gate_already_resolved", decision="rejected")
    assert body["error"] == f"gate already approved by {g.row.actor}"
    assert body["gate"] == {"id": g.gate, "status": "approved", "decision": "approved", "actor": g.row.actor}


def test_reject_modes__any_rejection_or_a_quorum_of_them(http: httpx.Client) -> None:
    policy(quorum=2, workflow_pattern="any-*")
    policy("by-quorum", quorum=2, reject_mode="quorum", workflow_pattern="quorum-*")
    a, b = new_key("a"), new_key("b")
    one = gated(http, workflow="any-x")
    assert resolve(http, one, a).json()["gate"]["status"] == "pending"
    assert resolve(http, one, b, decision="rejected").json()["gate"]["status"] == "rejected"
    two = gated(http, workflow="quorum-x")
    answer = resolve(http, two, a, decision="rejected").json()
    assert (answer["gate"]["status"], answer["quorum"]["rejections"]) == ("pending", 1)
    assert resolve(http, two, b, decision="rejected").json()["gate"]["status"] == "rejected"


# ---- races over real sockets --------------------------------------------------------------------


def test_race__four_keys_approve_at_once_and_one_resolution_wins(http: httpx.Client, server: str) -> None:
    policy(quorum=2, approver_keys=["k0", "k1", "k2", "k3"])
    keys = [new_key(f"k{i}") for i in range(4)]
    g = gated(http)
    barrier = threading.Barrier(4)
    answers: list[httpx.Response | None] = [None] * 4

    def click(i: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as client:
            barrier.wait()
            answers[i] = resolve(client, g, keys[i])

    threads = [threading.Thread(target=click, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = sorted((a.status_code, a.json().get("code") or a.json()["gate"]["status"]) for a in answers if a)
    assert got == [(200, "approved"), (200, "pending"), (409, "gate_already_resolved"), (409, "gate_already_resolved")]
    assert GateVote.objects.filter(gate_id=g.gate).count() == 2
    assert Event.objects.filter(run_id=g.run, type="gate.resolved").count() == 1
    assert AuditEntry.objects.filter(gate_id=g.gate).count() == 2


# ---- the gate's JSON ----------------------------------------------------------------------------

POLICY_FIELDS = ("policyVersion", "remindAt", "escalateAt", "expireAt", "remindedAt", "escalatedAt", "expiredAt")


def test_gate_json__carries_the_policy_version_and_sla_times_everywhere(http: httpx.Client) -> None:
    policy(remind_after_s=60, escalate_after_s=120, expire_after_s=300, expiry_action="reject")
    g = gated(http)
    row = g.row
    opened = http.get(g.url, headers=ENV).json()["gate"]
    assert opened["policyVersion"] == 1
    assert (opened["remindAt"], opened["escalateAt"], opened["expireAt"]) == (
        _ts(row.remind_at),
        _ts(row.escalate_at),
        _ts(row.expire_at),
    )
    assert (row.remind_at - row.created_at).total_seconds() == pytest.approx(60, abs=1)
    assert (opened["remindedAt"], opened["escalatedAt"], opened["expiredAt"]) == (None, None, None)
    detail = http.get(f"/runs/{g.run}", headers=ENV).json()
    assert detail["gates"] == [opened]  # the run detail's SQL answers what wire.gate_out answers
    created = Event.objects.get(run_id=g.run, type="gate.created").payload["gate"]
    assert {k: created[k] for k in POLICY_FIELDS} == {k: opened[k] for k in POLICY_FIELDS}
    resolved = resolve(http, g, new_key("lead")).json()["gate"]
    assert resolved["policyVersion"] == 1


def test_a_gate_without_a_policy__answers_as_before(http: httpx.Client) -> None:
    policy(workflow_pattern="other-*", approver_keys=["nobody"])
    g = gated(http)
    answer = resolve(http, g, None, token=g.token, actor="reviewer", payload={"note": "ok"})
    assert answer.status_code == 200
    body = answer.json()
    assert list(body) == ["gate"]  # no "quorum": nothing was counted
    expected = {"status": "approved", "actor": "reviewer", "decidedBy": "token:resolve-token"}
    assert body["gate"].items() >= expected.items()
    assert {k: body["gate"][k] for k in POLICY_FIELDS} == dict.fromkeys(POLICY_FIELDS)
    assert GateVote.objects.count() == 0
    for event in Event.objects.filter(run_id=g.run, type__startswith="gate."):
        assert not set(POLICY_FIELDS) & set(event.payload["gate"]), event.payload  # event shape unchanged
    refused(http, g, ENV, 409, "gate_already_resolved")


def _ts(value: Any) -> str:
    out = ts(value)
    assert out is not None
    return out


# ---- the official client ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interop_python() -> Path:
    return ensure_interop_venv()


def test_official_client__waits_for_and_reads_a_gate_decided_under_a_policy(
    interop_python: Path, live_server_url: str
) -> None:
    """``tidebase==0.7.0`` blocks in ``run.gate()`` while a reviewer (raw HTTP, the token)
    decides a gate under a policy: it parses the gate with its additive fields, and sees the
    reviewer's name as the actor."""
    policy(workflow_pattern="gated*", allow_token=True)
    out = run_scenario(interop_python, live_server_url, "gate", "approved")
    assert out["decision"] == "approved"
    assert out["result"] == {"published": True}
    decided = Gate.objects.get(id=out["reviewer"]["gate_id"])
    assert (decided.policy_version, decided.actor) == (1, "reviewer@example.com")
    assert GateVote.objects.filter(gate_id=decided.id).count() == 1
