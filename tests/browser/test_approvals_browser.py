"""Approval policies in a real browser: an approver outside the policy's group sees the gate but
no buttons, and a forged POST is refused; two approvers in their own browsers reach a quorum of
two ("1 of 2" after the first); the SLA countdown ticks with the inbox's poll and the "Escalated"
badge appears once the server's SLA tick has escalated the gate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db.models.functions import Now
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, shot
from tests.browser.test_csp import Violations
from tidebase_core.models import ApprovalPolicy, Gate, GateVote
from tidebase_core.services import gates, policies, runs, sla


@pytest.fixture
def payments(operators: dict[str, Any]) -> ApprovalPolicy:
    """alice and bob are in ``payments``; olga approves other things (``approver`` role only)."""
    group = Group.objects.create(name="payments")
    operators["alice"].groups.add(group)
    operators["bob"].groups.add(group)
    olga = User.objects.create_user(username="olga", password=PASSWORD)
    olga.groups.add(Group.objects.get(name="approver"))
    return policies.policy_save(
        policy_id=None,
        body={
            "name": "payments",
            "workflow_pattern": "payout*",
            "approver_groups": ["payments"],
            "quorum": 2,
            "escalate_after_s": 3600,
            "expire_after_s": 7200,
        },
        actor="user:root",
    )


def open_gate(name: str) -> Gate:
    """As an agent opens it: the policy, its version and SLA times are attached."""
    run = runs.run_create(workflow_name="payout-eu", started_by="key:payout-agent")
    runs.run_begin(run_id=run.id, owner="worker")
    gate, _ = gates.gate_begin(run_id=run.id, name=name, prompt=f"Send the {name} batch?")
    return gate


def test_outsider_cannot_decide__two_approvers_reach_the_quorum(login: Any, payments: ApprovalPolicy) -> None:
    gate = open_gate("send-payout")
    violations = Violations()

    # Olga approves gates, but not under this policy: the card says why, with no buttons.
    olga = violations.watch(login("olga"))
    card_o = olga.locator("article.gate-card", has_text="send-payout")
    expect(card_o).to_contain_text("payments v1")
    expect(card_o).to_contain_text("0 of 2 approvals")
    expect(card_o).to_contain_text("lets only payments decide this gate")
    expect(card_o.get_by_role("button", name="Approve")).to_have_count(0)
    expect(card_o.get_by_role("button", name="Reject")).to_have_count(0)
    shot(olga, "policy-outsider")
    # "May decide" hides it from her.
    olga.get_by_role("link", name="May decide").click()
    expect(olga.locator("#inbox-rows")).to_contain_text("Nothing is waiting for your decision")
    expect(card_o).to_have_count(0)
    # A POST forged with her session and CSRF token is refused by the server, and changes nothing.
    token = next(c["value"] for c in olga.context.cookies() if c["name"] == "csrftoken")
    forged = olga.request.post(
        f"/dashboard/gates/{gate.id}/decide",
        form={"decision": "approved"},
        headers={"X-CSRFToken": token, "HX-Request": "true"},
    )
    assert forged.status == 403
    assert "lets only payments decide this gate" in forged.text()
    assert not GateVote.objects.filter(gate_id=gate.id).exists()

    # Alice and Bob, each in their own browser: the first approval is counted, the second decides.
    alice, bob = violations.watch(login("alice")), violations.watch(login("bob"))
    card_a = alice.locator("article.gate-card", has_text="send-payout")
    card_b = bob.locator("article.gate-card", has_text="send-payout")
    alice.get_by_role("link", name="May decide").click()
    expect(card_a).to_be_visible()
    card_a.get_by_role("button", name="Approve").click()
    expect(card_a).to_contain_text("Your approval is counted: 1 of 2.")
    expect(card_a.get_by_role("button", name="Approve")).to_have_count(0)
    shot(alice, "policy-counted")
    # Bob's inbox catches up on its own poll.
    expect(card_b).to_contain_text("1 of 2 approvals", timeout=15_000)
    expect(card_b).to_contain_text("alice approved")
    assert Gate.objects.get(id=gate.id).status == "pending"
    card_b.get_by_role("button", name="Approve").click()
    expect(card_b).to_contain_text("Approved by bob")
    expect(card_b).to_contain_text("2 of 2 approvals")
    shot(bob, "policy-quorum")
    decided = Gate.objects.get(id=gate.id)
    assert (decided.status, decided.actor, decided.policy_version) == ("approved", "alice, bob", 1)
    # Alice's card leaves the pending list (3 s poll); the decision reaches her history (15 s poll).
    expect(card_a).to_have_count(0, timeout=15_000)
    expect(alice.locator("#history-rows")).to_contain_text("send-payout", timeout=25_000)
    assert violations.seen == []


def test_sla_countdown_ticks_and_escalation_appears(login: Any, payments: ApprovalPolicy) -> None:
    gate = open_gate("refund")
    violations = Violations()
    alice = violations.watch(login("alice"))
    card = alice.locator("article.gate-card", has_text="refund")
    countdown = card.locator(".sla", has_text="Escalation in")
    expect(countdown).to_contain_text("59 minutes")
    expect(card.locator(".sla", has_text="Expiry in")).to_contain_text("1 hour 59 minutes")
    expect(card.locator(".escalated")).to_have_count(0)
    # Rendered from the database clock on every 3 s poll: the seconds move without a reload.
    before = countdown.inner_text()
    expect(countdown).not_to_have_text(before, timeout=15_000)
    shot(alice, "policy-countdown")

    # The escalation comes due (the clock is the edge we move), and the server's SLA tick escalates.
    Gate.objects.filter(id=gate.id).update(escalate_at=Now() - dt.timedelta(seconds=1))
    assert sla.sla_tick()["escalated"] == 1
    assert Gate.objects.filter(id=gate.id, escalated_at__isnull=False).exists()
    expect(card.locator(".escalated")).to_have_text("Escalated", timeout=15_000)
    expect(card.locator(".sla", has_text="Escalation")).to_have_count(0)
    expect(card.locator(".sla", has_text="Expiry in")).to_be_visible()
    shot(alice, "policy-escalated")

    # The policy page reads the same policy, and its history, under the same strict CSP.
    root = violations.watch(login("root"))
    root.goto(f"/dashboard/policies/{payments.id}/")
    expect(root.locator("h1")).to_contain_text("payments")
    expect(root.locator("#history")).to_be_visible()
    shot(root, "policy-detail")
    root.goto("/dashboard/policies/")
    expect(root.locator("table")).to_contain_text("escalate 1h · expire 2h (leave pending)")
    shot(root, "policies")
    assert violations.seen == []
