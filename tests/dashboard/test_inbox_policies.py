"""The inbox under approval policies: each card names its policy, shows the quorum and the SLA
countdown, offers only the decisions the signed-in user may make (the reason otherwise), and
"May decide" (``?mine=1``) keeps only the gates they may approve. Decisions go through
``gate_decide``: a counted vote answers "Your approval is counted: 1 of 2", a refusal the reason."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard.selectors import approvals as selectors
from tests.dashboard.conftest import client_for, make_user
from tidebase_core.models import ApprovalPolicy, Gate, GateVote
from tidebase_core.services import audit, gates, policies, runs

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
ROWS = {"HX-Request": "true", "HX-Target": "inbox-rows"}


def make_policy(name: str, **body: Any) -> ApprovalPolicy:
    return policies.policy_save(policy_id=None, body={"name": name, **body}, actor="user:root")


def open_gate(name: str, *, workflow: str = "payout", started_by: str = "user:someone") -> Gate:
    """A gate opened the way an agent opens one, so its policy and SLA times are attached."""
    run = runs.run_create(workflow_name=workflow, started_by=started_by)
    runs.run_begin(run_id=run.id, owner="worker")
    gate, _ = gates.gate_begin(run_id=run.id, name=name, prompt=f"{name}?")
    return gate


@pytest.fixture
def team(users: dict[str, User]) -> dict[str, User]:
    """alice and bob approve and are in ``payments``; olga approves but is in ``ops``."""
    payments, ops = Group.objects.create(name="payments"), Group.objects.create(name="ops")
    made = {}
    for name, group in (("alice", payments), ("bob", payments), ("olga", ops)):
        user = make_user(name, "approver")
        user.groups.add(group)
        made[name] = user
    return {**users, **made}


@pytest.fixture
def payments(team: dict[str, User]) -> ApprovalPolicy:
    return make_policy("payments", workflow_pattern="pay*", approver_groups=["payments"], quorum=2, expire_after_s=3600)


def card_html(body: str, gate: Gate) -> str:
    start = body.index(f'id="gate-{gate.id}"')
    return body[start : body.index("</article>", start)]


def rows(user: User, **params: str) -> str:
    return client_for(user).get(reverse("dashboard:inbox"), params, headers=ROWS).content.decode()


def decide(user: User, gate: Gate, decision: str = "approved", **form: str) -> Any:
    url = reverse("dashboard:gate-decide", args=[gate.id])
    return client_for(user).post(url, {"decision": decision, **form}, headers=HX)


def test_card__names_the_policy_and_shows_the_quorum_with_who_voted(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    gate = open_gate("send")
    card = card_html(rows(team["bob"]), gate)
    assert "payments v1" in card
    assert "<b>0 of 2</b> approvals" in card
    assert decide(team["alice"], gate).status_code == 200
    card = card_html(rows(team["bob"]), gate)
    assert "<b>1 of 2</b> approvals" in card
    assert "alice approved" in card


def test_counted_vote__200_says_counted_and_triggers_gate_decided(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    gate = open_gate("send")
    response = decide(team["alice"], gate)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Your approval is counted: 1 of 2." in body
    assert "Approve</button>" not in body  # alice has voted: no second vote offered
    assert "You approved" in body
    trigger = json.loads(response["HX-Trigger"])["gate-decided"]
    assert trigger["status"] == "pending"
    assert trigger["message"] == "Your approval is counted: 1 of 2."
    assert Gate.objects.get(id=gate.id).status == "pending"
    final = decide(team["bob"], gate)
    assert final.status_code == 200
    assert "Approved</strong> by" in final.content.decode()
    assert Gate.objects.get(id=gate.id).status == "approved"


def test_outsider__sees_the_reason_not_the_buttons_and_a_forged_post_is_refused(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    gate = open_gate("send")
    card = card_html(rows(team["olga"]), gate)
    assert "Approve</button>" not in card
    assert "Reject</button>" not in card
    assert "lets only payments decide this gate" in card
    forged = decide(team["olga"], gate)
    assert forged.status_code == 403
    assert "lets only payments decide this gate" in forged.content.decode()
    assert "HX-Trigger" not in forged
    assert not GateVote.objects.filter(gate=gate).exists()
    assert Gate.objects.get(id=gate.id).status == "pending"


def test_starter__may_reject_but_not_approve_their_own_run(team: dict[str, User], payments: ApprovalPolicy) -> None:
    gate = open_gate("send", started_by="user:alice")
    card = card_html(rows(team["alice"]), gate)
    assert "Reject</button>" in card
    assert "Approve</button>" not in card
    assert "Alice started this run and may not approve its gates" in card
    refused = decide(team["alice"], gate, "approved")
    assert refused.status_code == 403
    assert not GateVote.objects.filter(gate=gate).exists()


def test_required_comment__labelled_and_a_decision_without_one_is_422(team: dict[str, User]) -> None:
    make_policy("strict", approver_groups=["payments"], require_comment=True)
    gate = open_gate("send")
    card = card_html(rows(team["alice"]), gate)
    assert "(required)" in card
    assert "Approve</button>" in card
    response = decide(team["alice"], gate)
    assert response.status_code == 422
    assert "requires a comment with every decision" in response.content.decode()
    assert decide(team["alice"], gate, comment="checked the invoice").status_code == 200
    assert Gate.objects.get(id=gate.id).status == "approved"


def test_second_vote_by_the_same_approver__409_with_the_reason(team: dict[str, User], payments: ApprovalPolicy) -> None:
    gate = open_gate("send")
    assert decide(team["alice"], gate).status_code == 200
    again = decide(team["alice"], gate)
    assert again.status_code == 409
    assert "Alice has already voted on this gate" in again.content.decode()
    assert GateVote.objects.filter(gate=gate).count() == 1


def test_may_decide_filter__keeps_only_the_gates_the_user_may_approve(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    make_policy("ops", workflow_pattern="deploy*", approver_groups=["ops"])
    mine = open_gate("mine")
    open_policy = open_gate("no-policy", workflow="triage")
    theirs = open_gate("theirs", workflow="deploy")
    own_run = open_gate("own-run", started_by="user:alice")
    voted = open_gate("voted")
    assert decide(team["alice"], voted).status_code == 200
    everything = rows(team["alice"])
    for gate in (mine, open_policy, theirs, own_run, voted):
        assert f'id="gate-{gate.id}"' in everything
    filtered = rows(team["alice"], mine="1")
    shown = {g.name for g in (mine, open_policy, theirs, own_run, voted) if f'id="gate-{g.id}"' in filtered}
    assert shown == {"mine", "no-policy"}
    # Olga (ops) sees hers and the open one; a viewer may decide nothing.
    olga = rows(team["olga"], mine="1")
    assert {g.name for g in (mine, open_policy, theirs) if f'id="gate-{g.id}"' in olga} == {"no-policy", "theirs"}
    assert "Nothing is waiting for your decision" in rows(team["viewer"], mine="1")


def test_may_decide_filter__the_page_keeps_it_in_its_poll_and_marks_the_toggle(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    page = client_for(team["alice"]).get(reverse("dashboard:inbox"), {"mine": "1"}).content.decode()
    assert 'hx-get="/dashboard/?mine=1"' in page
    assert 'href="/dashboard/?mine=1" aria-current="true"' in page
    plain = client_for(team["alice"]).get(reverse("dashboard:inbox")).content.decode()
    assert 'hx-get="/dashboard/"' in plain


def _set_times(gate: Gate, **fields: dt.timedelta | None) -> None:
    """Move a gate's SLA times relative to the database clock (the clock is the edge we set)."""
    with connection.cursor() as cur:
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]  # type: ignore[index]
    Gate.objects.filter(id=gate.id).update(**{k: None if v is None else now + v for k, v in fields.items()})


def test_sla__countdown_from_the_database_clock_then_escalated_and_overdue(
    team: dict[str, User], payments: ApprovalPolicy
) -> None:
    gate = open_gate("send")
    card = card_html(rows(team["bob"]), gate)
    # The gate opened at the test transaction's now(); the card reads the statement's clock.
    assert "Expiry in <time" in card
    assert re.search(r">59 minutes \d+ seconds?</time>", card)
    _set_times(gate, remind_at=dt.timedelta(minutes=5), escalate_at=dt.timedelta(minutes=-1))
    card = card_html(rows(team["bob"]), gate)
    assert re.search(r">4 minutes \d+ seconds?</time>", card)
    assert "Escalation due now" in card
    assert "Escalated" not in card
    _set_times(gate, escalated_at=dt.timedelta(0))
    card = card_html(rows(team["bob"]), gate)
    assert '<span class="badge s-failed escalated">Escalated</span>' in card
    assert "Escalation" not in card  # done: no countdown for it
    _set_times(gate, expire_at=dt.timedelta(seconds=-1), expired_at=dt.timedelta(0))
    card = card_html(rows(team["bob"]), gate)
    assert "Overdue" in card
    assert "Expiry" not in card


def test_inbox__queries_fixed_with_policies_votes_and_the_filter(team: dict[str, User]) -> None:
    make_policy("payments", workflow_pattern="pay*", approver_groups=["payments"], quorum=3, remind_after_s=60)
    make_policy("ops", workflow_pattern="deploy*", approver_groups=["ops"])
    client = client_for(team["alice"])

    def count(**params: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(reverse("dashboard:inbox"), params)
        assert response.status_code == 200
        return len(ctx.captured_queries)

    def add(n: int) -> None:
        for i in range(n):
            gate = open_gate(f"pay-{i}")
            decide(team["bob"], gate)
            decide(team["olga"], gate)  # refused: not in payments
            open_gate(f"deploy-{i}", workflow="deploy")
            open_gate(f"triage-{i}", workflow="triage")

    add(1)
    small = (count(), count(mine="1"))
    add(6)
    assert (count(), count(mine="1")) == small
    assert small[0] <= 8


def test_may_decide_filter__finds_the_users_gates_behind_many_older_ones(team: dict[str, User]) -> None:
    """The filter is applied in SQL before the inbox's limit: older gates of another group do
    not push the user's gate out of the page."""
    make_policy("ops", workflow_pattern="deploy*", approver_groups=["ops"])
    for i in range(3):
        open_gate(f"deploy-{i}", workflow="deploy")
    mine = open_gate("triage", workflow="triage")
    viewer = selectors.viewer_for(team["alice"], can_resolve=True, channel=audit.DASHBOARD)
    assert [c.gate.id for c in selectors.pending_cards(viewer=viewer, mine=True, limit=2)] == [mine.id]
