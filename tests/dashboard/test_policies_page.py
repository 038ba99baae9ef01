"""The Policies page: everyone with the dashboard reads the policies and their history; admins
(``manage_policies``) create, edit, enable and disable them, always through ``policy_save`` (a new
version, an audit entry). Bad input re-renders the form with the errors and 422, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from dashboard.roles import ensure_roles
from dashboard.services import api_key_create, api_key_revoke
from tidebase_core.models import ApprovalPolicy, ApprovalPolicyVersion, AuditEntry
from tidebase_core.services import policies

pytestmark = pytest.mark.django_db

LIST = "/dashboard/policies/"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/abcdefSECRET1234"


@pytest.fixture
def groups(db: None) -> list[str]:
    for name in ("payments", "ops"):
        Group.objects.get_or_create(name=name)
    return ["payments", "ops"]


def form(**over: Any) -> dict[str, Any]:
    """What the browser posts for a policy: checkboxes absent when off, durations as typed."""
    data: dict[str, Any] = {
        "name": "payments",
        "enabled": "on",
        "position": "10",
        "workflow_pattern": "pay*",
        "gate_pattern": "*",
        "approver_groups": ["payments"],
        "quorum": "2",
        "reject_mode": "any",
        "slack": "",
        "remind_after_s": "15m",
        "escalate_after_s": "1h 30m",
        "escalate_groups": ["ops"],
        "escalate_slack": "",
        "expire_after_s": "1d",
        "expiry_action": "reject",
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def create(client: Client, **over: Any) -> Any:
    return client.post(reverse("dashboard:policy-create"), form(**over))


def test_admin_creates_a_policy__version_1_history_and_audit(clients: dict[str, Client], groups: list[str]) -> None:
    response = create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:policy", args=[policy.id])
    assert (policy.version, policy.quorum, policy.approver_groups, policy.escalate_groups) == (
        1,
        2,
        ["payments"],
        ["ops"],
    )
    assert (policy.remind_after_s, policy.escalate_after_s, policy.expire_after_s) == (900, 5400, 86400)
    assert policy.updated_by == "user:admin"
    assert ApprovalPolicyVersion.objects.filter(policy=policy).count() == 1
    entry = AuditEntry.objects.get(kind="policy_change")
    assert (entry.actor, entry.channel, entry.policy_version) == ("user:admin", "dashboard", "1")
    listed = clients["viewer"].get(LIST).content.decode()
    assert "payments" in listed
    assert "remind 15m · escalate 1h 30m · expire 1d (reject)" in listed


def test_admin_edits__a_new_version_and_the_history_says_what_changed(
    clients: dict[str, Client], groups: list[str]
) -> None:
    create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    url = reverse("dashboard:policy-edit", args=[policy.id])
    response = clients["admin"].post(url, form(quorum="3", approver_groups=["payments", "ops"], require_comment="on"))
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.version, policy.quorum, policy.require_comment) == (2, 3, True)
    page = clients["viewer"].get(reverse("dashboard:policy", args=[policy.id])).content.decode()
    history = page[page.index('id="history"') :]
    assert '<b>Quorum</b>: <span class="muted">2</span> → 3' in history
    assert '<b>Approver groups</b>: <span class="muted">payments</span> → payments, ops' in history
    assert '<b>Comment required</b>: <span class="muted">no</span> → yes' in history
    assert "Created" in history
    assert history.index("v2") < history.index("v1")  # newest first


def test_the_edit_form_shows_the_policy_as_it_is(clients: dict[str, Client], groups: list[str]) -> None:
    create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    page = clients["admin"].get(reverse("dashboard:policy", args=[policy.id])).content.decode()
    assert 'name="escalate_after_s" value="1h 30m"' in page
    assert 'name="approver_groups" value="payments"' in page
    assert page.count("checked") >= 3  # enabled, payments, ops (escalation)


@pytest.mark.parametrize(
    ("over", "field", "message"),
    [
        ({"name": ""}, "name", "This field is required."),
        ({"quorum": "0"}, "quorum", "Ensure this value is greater than or equal to 1."),
        ({"position": "first"}, "position", "Enter a whole number."),
        ({"approver_groups": ["no-such-group"]}, "approver_groups", "Select a valid choice."),
        ({"remind_after_s": "5 parsecs"}, "remind_after_s", "Write a duration like 90s"),
        ({"remind_after_s": "0"}, "remind_after_s", "A delay must be longer than zero"),
        ({"expire_after_s": "400d"}, "expire_after_s", "A delay may be at most 365 days."),
        ({"expire_after_s": ""}, "expire_after_s", "an expiry action needs expire_after_s"),
        ({"reject_mode": "maybe"}, "reject_mode", "Select a valid choice."),
        ({"workflow_pattern": "   "}, "workflow_pattern", "This field is required."),
        ({"slack": "javascript:alert(1)"}, "slack", "Enter a Slack webhook URL"),
        ({"slack": "ftp://hooks.slack.com/x"}, "slack", "Enter a Slack webhook URL"),
        ({"email_links": "on"}, "email_links", "turn on Email too"),
    ],
)
def test_bad_input__422_with_the_error_at_its_field_and_nothing_saved(
    clients: dict[str, Client], groups: list[str], over: dict[str, Any], field: str, message: str
) -> None:
    response = create(clients["admin"], **over)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert field in response.context["form"].errors
    assert not ApprovalPolicy.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_taken_name__422_on_the_name_field(clients: dict[str, Client], groups: list[str]) -> None:
    create(clients["admin"])
    response = create(clients["admin"], workflow_pattern="other*")
    assert response.status_code == 422
    assert "a policy named &#x27;payments&#x27; already exists" in response.content.decode()
    assert "name" in response.context["form"].errors
    assert ApprovalPolicy.objects.count() == 1


def test_bad_edit__422_on_the_policy_page_and_the_version_unchanged(
    clients: dict[str, Client], groups: list[str]
) -> None:
    create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    response = clients["admin"].post(reverse("dashboard:policy-edit", args=[policy.id]), form(quorum="-1"))
    assert response.status_code == 422
    assert 'id="history"' in response.content.decode()
    policy.refresh_from_db()
    assert policy.version == 1


def test_disable_then_enable__each_a_version_and_a_disabled_policy_matches_no_gate(
    clients: dict[str, Client], groups: list[str]
) -> None:
    create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    url = reverse("dashboard:policy-enable", args=[policy.id])
    assert clients["admin"].post(url, {"enabled": "0"}).status_code == 302
    policy.refresh_from_db()
    assert (policy.enabled, policy.version) == (False, 2)
    assert policies.policy_for(run_id="none", gate_name="x") is None
    assert "disabled" in clients["viewer"].get(LIST).content.decode()
    assert clients["admin"].post(url, {"enabled": "1"}).status_code == 302
    policy.refresh_from_db()
    assert (policy.enabled, policy.version) == (True, 3)
    assert clients["admin"].post(url, {"enabled": "maybe"}).status_code == 422
    assert ApprovalPolicy.objects.get(id=policy.id).version == 3


def test_readers_read__only_admins_write(clients: dict[str, Client], groups: list[str]) -> None:
    create(clients["admin"])
    policy = ApprovalPolicy.objects.get(name="payments")
    detail = reverse("dashboard:policy", args=[policy.id])
    for role in ("viewer", "approver"):
        page = clients[role].get(LIST)
        assert page.status_code == 200
        assert "Only admins" in page.content.decode()
        assert 'action="/dashboard/policies/new"' not in page.content.decode()
        assert clients[role].get(detail).status_code == 200
        assert create(clients[role], name="sneaky").status_code == 403
        edit = clients[role].post(reverse("dashboard:policy-edit", args=[policy.id]), form(quorum="1"))
        assert edit.status_code == 403
        toggle = clients[role].post(reverse("dashboard:policy-enable", args=[policy.id]), {"enabled": "0"})
        assert toggle.status_code == 403
    assert clients["nobody"].get(LIST).status_code == 403
    assert Client().get(LIST).status_code == 302
    assert ApprovalPolicy.objects.get(id=policy.id).version == 1
    assert not ApprovalPolicy.objects.filter(name="sneaky").exists()
    assert 'href="/dashboard/policies/"' in clients["viewer"].get("/dashboard/").content.decode()


def test_unknown_policy__404(clients: dict[str, Client]) -> None:
    assert clients["viewer"].get(reverse("dashboard:policy", args=[999999])).status_code == 404
    assert clients["admin"].post(reverse("dashboard:policy-edit", args=[999999]), form()).status_code == 404
    assert clients["admin"].post(reverse("dashboard:policy-enable", args=[999999]), {"enabled": "0"}).status_code == 404


def test_slack_webhook_urls_are_masked_outside_the_admins_form(clients: dict[str, Client], groups: list[str]) -> None:
    create(clients["admin"], slack=WEBHOOK)
    policy = ApprovalPolicy.objects.get(name="payments")
    assert policy.slack == WEBHOOK
    for page in (clients["viewer"].get(LIST), clients["viewer"].get(reverse("dashboard:policy", args=[policy.id]))):
        body = page.content.decode()
        assert "SECRET" not in body
        assert "hooks.slack.com webhook …1234" in body
    assert WEBHOOK in clients["admin"].get(reverse("dashboard:policy", args=[policy.id])).content.decode()


def test_key_picker_offers_live_api_keys(clients: dict[str, Client], groups: list[str]) -> None:
    api_key_create(name="ci-bot", scope="operator")
    gone = api_key_create(name="old-bot", scope="operator").key
    api_key_revoke(key_id=gone.id)
    page = clients["admin"].get(LIST).content.decode()
    assert 'name="approver_keys" value="ci-bot"' in page
    assert 'value="old-bot"' not in page
    assert create(clients["admin"], approver_keys=["ci-bot"]).status_code == 302
    assert ApprovalPolicy.objects.get(name="payments").approver_keys == ["ci-bot"]


def test_ensure_roles_grants_manage_policies_to_admin(users: dict[str, User]) -> None:
    admin = Group.objects.get(name="admin")
    perm = Permission.objects.get(codename="manage_policies")
    admin.permissions.remove(perm)
    ensure_roles()
    assert admin.permissions.filter(codename="manage_policies").exists()
    assert User.objects.get(username="admin").has_perm("tidebase_core.manage_policies")
