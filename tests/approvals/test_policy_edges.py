"""Edges of approval policies found in review, against real Postgres: the approver role is needed
on every channel (a policy narrows who decides, never widens it); budget gates fall only under
policies that name them; Slack webhook URLs (credentials) stay out of the audit trail and the
attempt log; a save that changes nothing is no new version; the env key and an app key named
``env`` are different approvers; the Audit page names policy changes."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from dashboard.roles import ensure_roles
from tidebase_core.auth import ENV, Principal
from tidebase_core.exceptions import NotAnApprover
from tidebase_core.models import ApprovalPolicyVersion, AuditEntry, Gate
from tidebase_core.services import approvals, audit, budgets, gates, policies, runs
from webhooks.services.messages import Message

pytestmark = pytest.mark.django_db(transaction=True)

HOOK = "https://hooks.slack.com/services/T000/B000/verysecrettoken1234"


def policy(**body: Any) -> Any:
    return policies.policy_save(policy_id=None, body={"name": "payments", **body}, actor="user:admin")


def open_gate(name: str = "send", started_by: str | None = None) -> Gate:
    run = runs.run_create(workflow_name="payout", started_by=started_by)
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gates.gate_begin(run_id=run.id, name=name, prompt="send it?")
    return gate


def test_a_group_member_without_the_approver_role_may_not_decide_on_any_channel() -> None:
    policy(approver_groups=["payments"])
    viewer = User.objects.create_user("vic", "vic@x.test", "pw")
    viewer.groups.add(Group.objects.create(name="payments"), ensure_roles()["viewer"])
    gate = open_gate()
    for channel in (audit.DASHBOARD, audit.EMAIL, audit.SLACK):
        voter = policies.voter_for_user(viewer, channel=channel)
        with pytest.raises(NotAnApprover, match="approver role"):
            approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=voter)
    viewer.groups.add(ensure_roles()["approver"])
    viewer = User.objects.get(pk=viewer.pk)  # has_perm caches
    voter = policies.voter_for_user(viewer, channel=audit.EMAIL)
    assert approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=voter).final


def test_budget_gates_fall_only_under_a_policy_that_names_them() -> None:
    catch_all = policy(gate_pattern="*", expire_after_s=60, expiry_action="approve")
    assert open_gate("send").policy_id == catch_all.id
    budget_gate = open_gate(f"{budgets.GATE_PREFIX}run:1")
    assert budget_gate.policy_id is None  # a catch-all expiry must not grant money unattended
    named = policies.policy_save(
        policy_id=None, body={"name": "budgets", "gate_pattern": "budget:*"}, actor="user:admin"
    )
    assert open_gate(f"{budgets.GATE_PREFIX}run:2").policy_id == named.id


def test_slack_webhook_urls_stay_out_of_the_audit_trail_and_the_attempt_log() -> None:
    saved = policy(slack=HOOK, escalate_slack="C0123")
    (entry,) = AuditEntry.objects.filter(kind=audit.POLICY_CHANGE)
    assert "verysecrettoken" not in str(entry.data)
    assert entry.data["body"]["slack"] == "hooks.slack.com webhook …1234"
    assert entry.data["body"]["escalate_slack"] == "C0123"  # a channel id is no secret
    assert ApprovalPolicyVersion.objects.get(policy=saved).body["slack"] == HOOK  # the policy keeps it

    def shown(url: str) -> str:
        message = Message(url=url, body=b"", secret=None, previous_secrets=(), user_agent="t", slack=True)
        return message.shown_url

    assert shown(HOOK) == "https://hooks.slack.com/…"
    assert shown("https://slack.com/api/chat.postMessage") == "https://slack.com/api/chat.postMessage"


def test_a_save_that_changes_nothing_is_no_new_version() -> None:
    saved = policy(quorum=2)
    again = policies.policy_save(policy_id=saved.id, body={"quorum": 2, "name": " payments "}, actor="user:bob")
    assert again.version == 1
    assert ApprovalPolicyVersion.objects.filter(policy=saved).count() == 1
    assert AuditEntry.objects.filter(kind=audit.POLICY_CHANGE).count() == 1
    assert policies.policy_save(policy_id=saved.id, body={"quorum": 3}, actor="user:bob").version == 2


def test_the_env_key_and_an_app_key_named_env_are_different_approvers() -> None:
    policy(approver_keys=["env"], quorum=2, allow_self_approval=True)
    gate = open_gate()
    app_key_named_env = policies.voter_for_principal(Principal("env", "operator", "key"), actor=None)
    with pytest.raises(NotAnApprover):
        approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=app_key_named_env)
    env = policies.voter_for_principal(ENV, actor=None)
    assert not approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=env).final


def test_the_audit_page_names_policy_changes() -> None:
    policy(quorum=2)
    admin = User.objects.create_superuser("root", "root@x.test", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("dashboard:audit")).content.decode()
    assert "approval policy payments" in page
    assert "budget" not in page.split("<tbody>")[1]
