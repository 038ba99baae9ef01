"""Slack's interactive callback (POST /slack/interactions) on a live server against real Postgres,
driven the way Slack drives it: a form-encoded ``payload`` signed with the app's signing secret
(``slack_sdk``'s ``generate_signature``, with the real time, inside each test). Forged, stale,
replayed and malformed requests are refused with a clear code; clicks refused for who clicked
(unknown Slack user, outside the policy's groups, the run's starter, already voted or decided)
are answered with an ephemeral message and change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from slack_sdk.signature import SignatureVerifier

from dashboard.roles import ensure_roles
from tests.conftest import start_live_server
from tests.core.test_probes import in_threads
from tidebase_core.models import AuditEntry, Event, Gate, GateVote, Notification, SlackUser, UsedNonce
from tidebase_core.services import approvals, audit, policies, runs
from tidebase_core.services import gates as gate_services

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
RESPONSE_URL = "https://hooks.slack.test/actions/T1/1/abc"


@pytest.fixture(scope="module")
def slack_server(test_database_url: str) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_SLACK_SIGNING_SECRET=SECRET)
    yield live.url
    live.stop()


@pytest.fixture
def slack(slack_server: str, test_database_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=slack_server, timeout=30) as client:
        yield client


@pytest.fixture
def people(db: None) -> dict[str, User]:
    group = Group.objects.create(name="payments")
    made = {n: User.objects.create_user(n, f"{n}@x.test", "pw") for n in ("alice", "bob", "eve", "starter")}
    for name in ("alice", "bob", "starter"):
        made[name].groups.add(group)
    role = ensure_roles()["approver"]  # a policy narrows who decides among those with the role
    for user in made.values():
        user.groups.add(role)
    for name, slack_id in (("alice", "UALICE"), ("bob", "UBOB"), ("eve", "UEVE"), ("starter", "USTARTER")):
        SlackUser.objects.create(slack_user_id=slack_id, user=made[name])
    return made


def make_policy(**body: Any) -> None:
    base = {"name": "payments", "workflow_pattern": "pay*", "approver_groups": ["payments"], "slack": RESPONSE_URL}
    policies.policy_save(policy_id=None, body={**base, **body}, actor="user:admin")


def make_gate(*, workflow: str = "payout") -> Gate:
    run = runs.run_create(workflow_name=workflow, started_by="user:starter")
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gate_services.gate_begin(run_id=run.id, name="send", prompt="Send 500 EUR?")
    return gate


def click_body(gate_id: str, *, user: str = "UALICE", action: str = "approve", **extra: Any) -> bytes:
    """What Slack posts when a button of a gate message is clicked (trimmed to what matters)."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T1"},
        "team": {"id": "T1"},
        "response_url": RESPONSE_URL,
        "actions": [
            {"type": "button", "block_id": "tidebase_gate", "action_id": action, "value": gate_id, "action_ts": "1"}
        ],
        **extra,
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if at is None else at)
    try:
        signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    except UnicodeDecodeError:  # slack_sdk signs text; sign raw bytes the same way
        digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
        signature = "v0=" + digest.hexdigest()
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post("/slack/interactions", content=body, headers=headers)


def click(client: httpx.Client, gate: Gate, **kw: Any) -> httpx.Response:
    body = click_body(gate.id, **kw)
    return post(client, body, signed(body))


def state(gate: Gate) -> tuple[Any, ...]:
    g = Gate.objects.get(id=gate.id)
    return (
        g.status,
        g.decided_by,
        GateVote.objects.filter(gate_id=gate.id).count(),
        Event.objects.filter(run_id=gate.run_id).count(),
        AuditEntry.objects.count(),
        UsedNonce.objects.count(),
        Notification.objects.filter(target=RESPONSE_URL, data__replace_original=True).count(),
    )


# --- accepted clicks ----------------------------------------------------------------------------


def test_approve_click__decides_as_the_linked_user_and_replaces_the_message(
    slack: httpx.Client, people: dict[str, User]
) -> None:
    make_policy()
    gate = make_gate()
    answer = click(slack, gate)
    assert answer.status_code == 200
    assert answer.json() == {"response_type": "ephemeral", "replace_original": False, "text": "Approved “send”."}
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by, gate.actor) == ("approved", "user:alice", "alice")
    assert list(GateVote.objects.filter(gate_id=gate.id).values_list("voter", "channel")) == [("user:alice", "slack")]
    entry = AuditEntry.objects.get(gate_id=gate.id)
    assert (entry.kind, entry.actor, entry.channel) == (audit.DECISION, "alice", audit.SLACK)
    replaced = Notification.objects.get(target=RESPONSE_URL, data__replace_original=True)
    assert (replaced.gate_id, replaced.medium, replaced.event_type) == (gate.id, "slack", "gate.resolved")


def test_reject_click__rejects(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    assert click(slack, gate, user="UBOB", action="reject").json()["text"] == "Rejected “send”."
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("rejected", "user:bob")


def test_quorum_reached_by_two_slack_users(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    first = click(slack, gate, user="UALICE")
    assert first.json()["text"] == "Your approval of “send” is counted (1 of 2 approvals); the policy needs more votes."
    # The message, with its buttons, stays for the second approver.
    assert not Notification.objects.filter(target=RESPONSE_URL, data__replace_original=True).exists()
    second = click(slack, gate, user="UBOB")
    assert second.json()["text"] == "Approved “send”."
    gate.refresh_from_db()
    assert (gate.status, gate.actor) == ("approved", "alice, bob")
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1
    assert Notification.objects.filter(target=RESPONSE_URL, data__replace_original=True).count() == 1


def test_click_on_a_gate_without_a_policy__needs_the_approver_role(
    slack: httpx.Client, people: dict[str, User]
) -> None:
    gate = make_gate(workflow="other")  # no policy matches
    people["alice"].groups.remove(Group.objects.get(name="approver"))
    before = state(gate)
    refused = click(slack, gate)
    assert (refused.status_code, refused.json()["code"]) == (200, "not_an_approver")
    assert state(gate) == before
    people["alice"].user_permissions.add(Permission.objects.get(codename="resolve_gate"))
    assert click(slack, gate).json()["text"] == "Approved “send”."


# --- refused requests: 4xx/503, nothing changes ------------------------------------------------------


def test_without_a_signing_secret__is_503(live_server_url: str, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    body = click_body(gate.id)
    answer = httpx.post(live_server_url + "/slack/interactions", content=body, headers=signed(body))
    assert (answer.status_code, answer.json()["code"]) == (503, "slack_not_configured")
    assert state(gate) == before


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda body, h: {k: v for k, v in h.items() if k != "X-Slack-Signature"}, id="no-signature"),
        pytest.param(lambda body, h: {k: v for k, v in h.items() if k != "X-Slack-Request-Timestamp"}, id="no-ts"),
        pytest.param(lambda body, h: signed(body, secret="another-app-secret"), id="other-secret"),
        pytest.param(lambda body, h: {**h, "X-Slack-Signature": "v0=" + "0" * 64}, id="zeros"),
        pytest.param(lambda body, h: {**h, "X-Slack-Request-Timestamp": "yesterday"}, id="bad-ts"),
        pytest.param(
            lambda body, h: {**h, "X-Slack-Request-Timestamp": str(int(h["X-Slack-Request-Timestamp"]) + 1)},
            id="moved-ts",
        ),
    ],
)
def test_forged_signature__is_refused_401(slack: httpx.Client, people: dict[str, User], forge: Any) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    body = click_body(gate.id)
    answer = post(slack, body, forge(body, signed(body)))
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_signature")
    assert state(gate) == before


def test_body_changed_after_signing__is_refused_401(slack: httpx.Client, people: dict[str, User]) -> None:
    """A captured request of eve's (refused) turned into bob's click by editing the body."""
    make_policy()
    gate = make_gate()
    before = state(gate)
    headers = signed(click_body(gate.id, user="UEVE"))
    answer = post(slack, click_body(gate.id, user="UBOB"), headers)
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_signature")
    assert state(gate) == before


def test_stale_request__is_refused_401(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    body = click_body(gate.id)
    answer = post(slack, body, signed(body, at=int(time.time()) - 6 * 60))  # correctly signed, 6 minutes ago
    assert (answer.status_code, answer.json()["code"]) == (401, "stale_request")
    assert state(gate) == before


def test_replayed_request__is_refused_409(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    body = click_body(gate.id)
    headers = signed(body)
    assert post(slack, body, headers).status_code == 200
    before = state(gate)
    again = post(slack, body, headers)
    assert (again.status_code, again.json()["code"]) == (409, "replayed")
    assert state(gate) == before


def test_same_request_sent_twice_at_once__decides_once(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    body = click_body(gate.id)
    headers = signed(body)
    answers = in_threads(4, lambda _: post(slack, body, headers))
    outcomes = sorted((a.status_code, a.json().get("code")) for a in answers)
    assert outcomes == [(200, None)] + [(409, "replayed")] * 3
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1
    assert GateVote.objects.filter(gate_id=gate.id).count() == 1


def test_refused_click__leaves_its_request_unspent(slack: httpx.Client, people: dict[str, User]) -> None:
    """A refusal spends nothing: sending the same signed request again is refused the same way."""
    make_policy()
    gate = make_gate()
    body = click_body(gate.id, user="UEVE")
    headers = signed(body)
    assert post(slack, body, headers).json()["code"] == "not_an_approver"
    assert post(slack, body, headers).json()["code"] == "not_an_approver"
    assert UsedNonce.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"payload=%7Bnot+json", id="not-json"),
        pytest.param(b"nothing=here", id="no-payload"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(urlencode({"payload": json.dumps([1, 2])}).encode(), id="not-an-object"),
        pytest.param(urlencode({"payload": json.dumps({"type": "view_submission"})}).encode(), id="other-type"),
        pytest.param(
            urlencode(
                {"payload": json.dumps({"type": "block_actions", "user": {"id": "UALICE"}, "actions": []})}
            ).encode(),
            id="no-actions",
        ),
    ],
)
def test_malformed_payload__is_refused_400(slack: httpx.Client, people: dict[str, User], body: bytes) -> None:
    answer = post(slack, body, signed(body))
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_payload")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"action": "maybe"}, id="action-id"),
        pytest.param({"user": ""}, id="no-user"),
        pytest.param({"response_url": "javascript:alert(1)"}, id="response-url"),
    ],
)
def test_click_not_from_our_buttons__is_refused_400(
    slack: httpx.Client, people: dict[str, User], change: dict[str, Any]
) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    body = click_body(gate.id, **change)
    answer = post(slack, body, signed(body))
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_payload")
    assert state(gate) == before


def test_other_block__is_refused_400(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    body = urlencode(
        {
            "payload": json.dumps(
                {
                    "type": "block_actions",
                    "user": {"id": "UALICE"},
                    "actions": [{"block_id": "someone_else", "action_id": "approve", "value": gate.id}],
                }
            )
        }
    ).encode()
    answer = post(slack, body, signed(body))
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_payload")


def test_click_on_the_view_link_button__is_acknowledged_and_changes_nothing(
    slack: httpx.Client, people: dict[str, User]
) -> None:
    """Slack reports clicks on a URL button too; the browser has opened the dashboard, and a non-200
    would put an error mark on the button."""
    make_policy()
    gate = make_gate()
    before = state(gate)
    action = {"block_id": "tidebase_link", "action_id": "view", "type": "button", "url": "https://x.test/"}
    body = urlencode(
        {"payload": json.dumps({"type": "block_actions", "user": {"id": "UALICE"}, "actions": [action]})}
    ).encode()
    answer = post(slack, body, signed(body))
    assert (answer.status_code, answer.json()) == (200, {})
    assert state(gate) == before


def test_too_large_body__is_refused_400(slack: httpx.Client, people: dict[str, User]) -> None:
    body = b"payload=" + b"x" * (300 * 1024)
    answer = post(slack, body, signed(body))
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_payload")


def test_get__is_refused_405(slack: httpx.Client) -> None:
    answer = slack.get("/slack/interactions")
    assert (answer.status_code, answer.json()["code"], answer.headers["Allow"]) == (405, "method_not_allowed", "POST")


# --- verified clicks the policy refuses: 200 ephemeral, nothing changes -------------------------------


@pytest.mark.parametrize(
    ("user", "action", "code"),
    [
        ("UNOBODY", "approve", "unknown_slack_user"),
        ("UEVE", "approve", "not_an_approver"),  # linked to a user outside the policy's groups
        ("USTARTER", "approve", "self_approval"),
    ],
)
def test_click_the_policy_refuses__is_answered_ephemerally(
    slack: httpx.Client, people: dict[str, User], user: str, action: str, code: str
) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    answer = click(slack, gate, user=user, action=action)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["response_type"], body["replace_original"], body["code"]) == ("ephemeral", False, code)
    assert body["text"].startswith("Not recorded: ")
    assert state(gate) == before


def test_click_of_a_deactivated_user__is_answered_ephemerally(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    User.objects.filter(pk=people["alice"].pk).update(is_active=False)
    before = state(gate)
    assert click(slack, gate).json()["code"] == "user_inactive"
    assert state(gate) == before


def test_click_on_a_decided_gate__is_answered_ephemerally(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    voter = policies.voter_for_user(people["bob"], channel=audit.DASHBOARD)
    approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="rejected", voter=voter)
    before = state(gate)
    body = click(slack, gate).json()
    assert (body["code"], body["text"]) == ("gate_already_resolved", "Not recorded: gate already rejected by bob.")
    assert state(gate) == before


def test_second_click_of_the_same_approver__is_answered_ephemerally(
    slack: httpx.Client, people: dict[str, User]
) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    assert click(slack, gate).status_code == 200
    before = state(gate)
    again = click_body(gate.id)  # a new click: another time, another signature
    assert post(slack, again, signed(again, at=int(time.time()) - 30)).json()["code"] == "already_voted"
    assert state(gate) == before


def test_click_on_an_unknown_gate__is_answered_ephemerally(slack: httpx.Client, people: dict[str, User]) -> None:
    body = click_body("gate_missing")
    assert post(slack, body, signed(body)).json()["code"] == "not_found"


def test_comment_required__is_answered_ephemerally(slack: httpx.Client, people: dict[str, User]) -> None:
    make_policy(require_comment=True)
    gate = make_gate()
    before = state(gate)
    assert click(slack, gate).json()["code"] == "comment_required"
    assert state(gate) == before


# --- manage.py tidebase_slack_link -----------------------------------------------------------------


def test_slack_link_command__links_relinks_and_removes(db: None) -> None:
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    out = StringIO()
    call_command("tidebase_slack_link", "alice", "U0ALICE", stdout=out)
    assert SlackUser.objects.get(slack_user_id="U0ALICE").user == alice
    call_command("tidebase_slack_link", "bob", "U0ALICE", stdout=out)
    assert SlackUser.objects.get(slack_user_id="U0ALICE").user == bob
    assert "(was alice)" in out.getvalue()
    call_command("tidebase_slack_link", "bob", "U0BOB2", stdout=out)
    call_command("tidebase_slack_link", "bob", "U0ALICE", "--remove", stdout=out)
    assert list(SlackUser.objects.values_list("slack_user_id", flat=True)) == ["U0BOB2"]
    call_command("tidebase_slack_link", "bob", "--remove", stdout=out)
    assert not SlackUser.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nobody", "U1"), "no user named 'nobody'"),
        (("alice", "not an id"), "is not a Slack member id"),
        (("alice",), "give the Slack member id"),
        (("alice", "--remove"), "alice has no Slack link"),
    ],
)
def test_slack_link_command__refuses_bad_input(db: None, args: tuple[str, ...], message: str) -> None:
    User.objects.create_user("alice")
    with pytest.raises(CommandError, match=message):
        call_command("tidebase_slack_link", *args, stdout=StringIO())
