"""A first pass through a policy: quorum of two distinct approvers, the starter refused."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from tidebase_core.exceptions import AlreadyVoted, GateAlreadyResolved, NotAnApprover, SelfApproval
from tidebase_core.models import GateVote
from tidebase_core.services import approvals, audit, gates, policies, runs

pytestmark = pytest.mark.django_db(transaction=True)


def test_quorum_of_two_with_refusals() -> None:
    group = Group.objects.create(name="payments")
    alice, bob, eve = (User.objects.create_user(n, f"{n}@x.test", "pw") for n in ("alice", "bob", "eve"))
    alice.groups.add(group)
    bob.groups.add(group)
    policies.policy_save(
        policy_id=None,
        body={"name": "payments", "workflow_pattern": "pay*", "approver_groups": ["payments"], "quorum": 2},
        actor="user:admin",
    )
    run = runs.run_create(workflow_name="payout", started_by="user:bob")
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gates.gate_begin(run_id=run.id, name="send", prompt="send?")
    assert gate.policy_id is not None and gate.policy_version == 1

    def vote(user: User, decision: str = "approved") -> approvals.Decision:
        voter = policies.voter_for_user(user, channel=audit.DASHBOARD)
        return approvals.gate_decide(run_id=run.id, gate_id=gate.id, decision=decision, voter=voter)

    with pytest.raises(NotAnApprover):
        vote(eve)
    with pytest.raises(SelfApproval):
        vote(bob)
    first = vote(alice)
    assert not first.final and first.tally is not None and first.tally.text() == "1 of 2"
    with pytest.raises(AlreadyVoted):
        vote(alice)
    carol = User.objects.create_user("carol", "c@x.test", "pw")
    carol.groups.add(group)
    second = vote(carol)
    assert second.final and second.gate.status == "approved" and second.gate.actor == "alice, carol"
    with pytest.raises(GateAlreadyResolved):
        vote(bob, "rejected")
    assert GateVote.objects.filter(gate_id=gate.id).count() == 2
