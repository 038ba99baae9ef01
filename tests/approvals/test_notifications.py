"""Approval emails and Slack messages, delivered through the outbox like every webhook: a real
SMTP server (aiosmtpd) and a real HTTP stand-in for Slack on loopback, real Postgres, and (for
the end-to-end test) a real Celery worker with beat on a real broker.

Most tests run one attempt at a time with ``delivery_attempt`` (what the worker's task runs), so
each retry and dead letter is observed exactly; the last test lets a worker deliver on its own,
including a row whose after-commit message was lost (the sweep sends it)."""

from __future__ import annotations

import email
import email.policy
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from dashboard.roles import ensure_roles
from tests.approvals.slack_standin import TOKEN, SlackCall, SlackStandIn
from tests.conftest import free_port
from tests.webhooks.conftest import (  # noqa: F401 (broker_env: a fixture)
    Worker,
    _configure_this_process,
    broker_env,
    wait_for,
)
from tidebase_core.models import ApprovalPolicy, DeliveryStatus, Gate, Notification, NotificationMedium
from tidebase_core.services import approvals, audit, gates, notifications, policies, runs
from tidebase_core.services.links import read_link
from webhooks.models import DeliveryAttempt
from webhooks.services.attempts import delivery_attempt

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "https://tidebase.test"
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
LINK = re.compile(re.escape(PUBLIC) + r"/dashboard/decide/([^/\s\"]+)/")


# --- A real SMTP server ---------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the aiosmtpd server received. ``refuse``: addresses answered ``550`` at RCPT;
    ``defer``: how many next messages are answered ``451`` (try again later) at DATA."""

    port: int = field(default_factory=free_port)
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    defer: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.defer:
                self.defer -= 1
                return "451 4.3.0 try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.messages.append(message)
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    standin = SlackStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def outbound(settings: Any, mailbox: Mailbox, slack: SlackStandIn, broker_env: dict[str, str]) -> Any:  # noqa: F811
    """This process sends as a worker would: SMTP to the mailbox, Slack to the stand-in (loopback
    let through the SSRF guard), links on the public URL. After-commit messages go to this
    session's own broker, where no worker listens (each test attempts rows itself)."""
    settings.EMAIL_BACKEND = SMTP_BACKEND
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = mailbox.port
    settings.EMAIL_TIMEOUT = 5
    settings.TIDEBASE_PUBLIC_URL = PUBLIC
    settings.TIDEBASE_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    settings.TIDEBASE_WEBHOOK_RETRY_SCHEDULE = [0.2, 0.5, 1.0]
    settings.TIDEBASE_SLACK_API_URL = slack.api_url
    settings.TIDEBASE_SLACK_BOT_TOKEN = TOKEN
    return settings


# --- Arrangements ---------------------------------------------------------------------------------


@dataclass
class Team:
    alice: User
    bob: User
    carol: User
    dave: User
    """On call: in the escalation group, not an approver."""


def team() -> Team:
    payments, oncall = Group.objects.create(name="payments"), Group.objects.create(name="oncall")
    people = {}
    for name, first in (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"), ("dave", "Dave")):
        people[name] = User.objects.create_user(name, f"{name}@x.test", "pw", first_name=first, last_name="Test")
    for name in ("alice", "bob", "carol"):
        people[name].groups.add(payments)
    people["dave"].groups.add(oncall)
    role = ensure_roles()["approver"]  # a policy narrows who decides among those with the role
    for user in people.values():
        user.groups.add(role)
    return Team(**people)


def policy(**body: Any) -> ApprovalPolicy:
    base = {"name": "payments", "workflow_pattern": "pay*", "approver_groups": ["payments"]}
    return policies.policy_save(policy_id=None, body={**base, **body}, actor="user:admin")


def open_gate(*, started_by: str = "user:bob", data: Any = None) -> Gate:
    run = runs.run_create(workflow_name="payout", started_by=started_by)
    runs.run_begin(run_id=run.id, owner="w")
    gate, created = gates.gate_begin(
        run_id=run.id,
        name="send-money",
        prompt="Send 1200 EUR to ACME Corp?",
        data={"amount": 1200, "currency": "EUR", "to": "ACME <Corp>"} if data is None else data,
    )
    assert created
    return gate


def rows(gate: Gate, *, event_type: str = "gate.created", medium: str | None = None) -> list[Notification]:
    qs = Notification.objects.filter(gate_id=gate.id, event_type=event_type)
    if medium:
        qs = qs.filter(medium=medium)
    return list(qs.select_related("user").order_by("created_at", "id"))


def row_for(gate: Gate, user: User, event_type: str = "gate.created") -> Notification:
    return next(r for r in rows(gate, event_type=event_type, medium=NotificationMedium.EMAIL) if r.user_id == user.pk)


def attempt(row: Notification) -> float | None:
    """One attempt of ``row``, as the worker's task makes it."""
    fresh = Notification.objects.get(id=row.id)
    return delivery_attempt(kind="notification", delivery_id=row.id, expected_attempts=fresh.attempts, trigger="test")


def vote(gate: Gate, user: User, decision: str = "approved") -> approvals.Decision:
    voter = policies.voter_for_user(user, channel=audit.DASHBOARD)
    return approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision=decision, voter=voter)


def links_in(text: str) -> dict[str, Any]:
    """The one-click links of an email, by decision (their signed claims)."""
    return {claim.decision: claim for claim in (read_link(token) for token in LINK.findall(text))}


# --- Email ----------------------------------------------------------------------------------------


def test_email__asks_each_approver_with_summary_quorum_sla_and_own_links(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    policy(email=True, email_links=True, quorum=2, expire_after_s=3600, expiry_action="reject")
    gate = open_gate()
    created = rows(gate, medium=NotificationMedium.EMAIL)
    assert {r.target for r in created} == {"alice@x.test", "bob@x.test", "carol@x.test"}  # dave is not asked

    assert attempt(row_for(gate, people.alice)) is None
    (mail,) = mailbox.to("alice@x.test")
    text, html = text_of(mail), html_of(mail)
    assert mail["Subject"] == "[Tidebase] Approval needed: payout / send-money"
    assert mail["X-Tidebase-Gate"] == gate.id
    assert "Hi Alice Test," in text
    assert "Hi Alice Test," in html
    for fact in ("payout", gate.run_id, "send-money", "Send 1200 EUR to ACME Corp?", '"amount": 1200'):
        assert fact in text, fact
    assert "0 of 2 approvals so far" in text
    assert f"Expires: {gate.expire_at:%Y-%m-%d %H:%M} UTC (then: reject)" in text
    assert f"{PUBLIC}/dashboard/runs/{gate.run_id}/" in text
    assert f'href="{PUBLIC}/dashboard/runs/{gate.run_id}/"' in html
    assert "ACME &lt;Corp&gt;" in html
    assert "ACME <Corp>" not in html
    links = links_in(text)
    assert set(links) == {"approved", "rejected"}
    assert all(c.user_id == people.alice.pk and c.gate_id == gate.id for c in links.values())
    assert links_in(html).keys() == links.keys()

    row = Notification.objects.get(id=row_for(gate, people.alice).id)
    assert row.status == DeliveryStatus.DELIVERED
    assert row.attempts == 1
    assert row.error_text is None
    (logged,) = DeliveryAttempt.objects.filter(kind="notification", delivery_id=row.id)
    assert logged.url == "mailto:alice@x.test"
    assert logged.finished_at is not None
    assert logged.error is None

    # Bob started the run: he is asked (he may still reject in the dashboard) but gets no links.
    assert attempt(row_for(gate, people.bob)) is None
    bob_text = text_of(mailbox.to("bob@x.test")[0])
    assert not LINK.search(bob_text)
    assert not LINK.search(html_of(mailbox.to("bob@x.test")[0]))
    assert "may not approve its gates" in bob_text


def test_email__links_only_where_the_policy_allows_them(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    plain = policy(email=True, email_links=False)
    gate = open_gate()
    attempt(row_for(gate, people.alice))
    text = text_of(mailbox.to("alice@x.test")[0])
    assert not LINK.search(text)
    assert "one-click" not in text.lower()

    policies.policy_save(policy_id=plain.id, body={"email_links": True, "require_comment": True}, actor="user:admin")
    gate = open_gate()
    attempt(row_for(gate, people.alice))
    text = text_of(mailbox.to("alice@x.test")[1])
    assert LINK.search(text)  # the confirmation page asks for the comment the policy requires


def test_email__reminder_and_escalation_say_so_and_show_the_votes(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    policy(email=True, email_links=True, quorum=2, escalate_groups=["oncall"])
    gate = open_gate(started_by="user:admin")
    vote(gate, people.alice)
    with transaction.atomic():
        notifications.notify_gate(gate, "gate.reminded")
        notifications.notify_gate(gate, "gate.escalated")

    attempt(row_for(gate, people.carol, "gate.reminded"))
    (reminder,) = mailbox.to("carol@x.test")
    assert reminder["Subject"].startswith("[Tidebase] Reminder: approval still needed")
    text = text_of(reminder)
    assert "This is a reminder" in text
    assert "1 of 2 approvals so far (alice)" in text
    assert set(links_in(text)) == {"approved", "rejected"}

    attempt(row_for(gate, people.alice, "gate.reminded"))  # alice has voted: no links to vote again
    text = text_of(mailbox.to("alice@x.test")[0])
    assert not LINK.search(text)
    assert "already voted" in text

    (escalation_row,) = rows(gate, event_type="gate.escalated", medium=NotificationMedium.EMAIL)
    assert escalation_row.user_id == people.dave.pk
    attempt(escalation_row)
    (escalation,) = mailbox.to("dave@x.test")
    assert escalation["Subject"].startswith("[Tidebase] Escalation: approval still needed")
    text = text_of(escalation)
    assert "This is an escalation" in text
    assert "Hi Dave Test," in text
    assert not LINK.search(text)
    assert "lets only payments decide" in text


def test_email__smtp_failures_are_retried_until_the_server_accepts(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    policy(email=True)
    gate = open_gate()
    row = row_for(gate, people.alice)

    outbound.EMAIL_PORT = free_port()  # nothing listens: connection refused
    assert attempt(row) is not None
    outbound.EMAIL_PORT = mailbox.port
    mailbox.defer = 1  # the server answers 451 at DATA
    assert attempt(row) is not None
    assert mailbox.to("alice@x.test") == []
    assert attempt(row) is None

    assert len(mailbox.to("alice@x.test")) == 1
    row.refresh_from_db()
    assert row.status == DeliveryStatus.DELIVERED
    assert row.attempts == 3
    errors = list(DeliveryAttempt.objects.filter(delivery_id=row.id).order_by("number").values_list("error", flat=True))
    assert errors[0] is not None
    assert errors[0].startswith("smtp: ConnectionRefusedError")
    assert errors[1] is not None
    assert errors[1].startswith("smtp: 451")
    assert errors[2] is None


def test_email__a_recipient_refused_for_good_is_dead_lettered_at_once(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    policy(email=True)
    gate = open_gate()
    mailbox.refuse.add("carol@x.test")
    row = row_for(gate, people.carol)

    assert attempt(row) is None  # no retry scheduled
    row.refresh_from_db()
    assert row.status == DeliveryStatus.FAILED
    assert row.attempts == 1
    assert row.error_text is not None
    assert row.error_text.startswith("recipient_refused: 550")
    assert mailbox.messages == []


def test_email__a_gate_decided_before_the_email_goes_out_is_not_emailed(outbound: Any, mailbox: Mailbox) -> None:
    people = team()
    policy(email=True, email_links=True)
    gate = open_gate()
    vote(gate, people.alice, "rejected")

    row = row_for(gate, people.carol)
    assert attempt(row) is None
    row.refresh_from_db()
    assert row.status == DeliveryStatus.DELIVERED
    assert row.response_body == "gate already decided"
    assert mailbox.messages == []


# --- Slack ----------------------------------------------------------------------------------------


def only_slack(gate: Gate, event_type: str) -> Notification:
    (row,) = rows(gate, event_type=event_type, medium=NotificationMedium.SLACK)
    return row


def assert_buttons(call: SlackCall, gate: Gate) -> None:
    actions = call.block("tidebase_gate")
    assert actions is not None
    assert actions["type"] == "actions"
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [("approve", gate.id), ("reject", gate.id)]
    link = call.block("tidebase_link")
    assert link is not None
    assert link["elements"][0]["url"] == f"{PUBLIC}/dashboard/runs/{gate.run_id}/"


def test_slack__incoming_webhook_gets_the_request_then_the_outcome(outbound: Any, slack: SlackStandIn) -> None:
    people = team()
    policy(slack=slack.webhook_url())
    gate = open_gate()

    assert attempt(only_slack(gate, "gate.created")) is None
    (asked,) = slack.of_kind("webhook")
    assert asked.text == "Approval needed: payout / send-money"
    assert "Send 1200 EUR to ACME Corp?" in asked.all_text()
    assert "ACME &lt;Corp&gt;" in asked.all_text()
    assert_buttons(asked, gate)
    assert "authorization" not in asked.headers

    vote(gate, people.alice)
    assert attempt(only_slack(gate, "gate.resolved")) is None
    told = slack.of_kind("webhook")[1]
    assert told.text == "Approved by alice: payout / send-money"
    assert told.block("tidebase_gate") is None  # no buttons on a decided gate
    assert Notification.objects.get(id=only_slack(gate, "gate.resolved").id).status == DeliveryStatus.DELIVERED


def test_slack__bot_token_posts_then_updates_the_message_with_the_outcome(outbound: Any, slack: SlackStandIn) -> None:
    people = team()
    policy(slack="C0APPROVALS")
    gate = open_gate()

    assert attempt(only_slack(gate, "gate.created")) is None
    (posted,) = slack.of_kind("chat.postMessage")
    assert posted.headers["authorization"] == f"Bearer {TOKEN}"
    assert posted.body["channel"] == "C0APPROVALS"
    assert_buttons(posted, gate)
    assert isinstance(posted.answer, dict)

    vote(gate, people.carol, "rejected")
    assert attempt(only_slack(gate, "gate.resolved")) is None
    (updated,) = slack.of_kind("chat.update")
    assert updated.headers["authorization"] == f"Bearer {TOKEN}"
    assert (updated.body["channel"], updated.body["ts"]) == ("C0APPROVALS", posted.answer["ts"])
    assert updated.text.startswith("Rejected by carol")
    assert updated.block("tidebase_gate") is None
    assert len(slack.of_kind("chat.postMessage")) == 1


def test_slack__ok_false_is_a_failed_attempt(outbound: Any, slack: SlackStandIn) -> None:
    team()
    policy(slack="C0APPROVALS")
    gate = open_gate()
    row = only_slack(gate, "gate.created")

    slack.fail_next(error="ratelimited")  # HTTP 200, {"ok": false}: Slack's way of saying no
    assert attempt(row) is not None
    row.refresh_from_db()
    assert row.status == DeliveryStatus.PENDING
    assert row.http_status == 200
    assert row.error_text == "slack_error: ratelimited"
    assert attempt(row) is None
    row.refresh_from_db()
    assert row.status == DeliveryStatus.DELIVERED
    assert row.attempts == 2
    assert [c.ok for c in slack.of_kind("chat.postMessage")] == [False, True]

    # An error no retry can fix is dead-lettered at once.
    gate2 = open_gate()
    row2 = only_slack(gate2, "gate.created")
    slack.fail_next(error="channel_not_found")
    assert attempt(row2) is None
    row2.refresh_from_db()
    assert row2.status == DeliveryStatus.FAILED
    assert row2.error_text == "slack_refused: channel_not_found"


def test_slack__a_channel_without_a_bot_token_is_dead_lettered(outbound: Any, slack: SlackStandIn) -> None:
    team()
    policy(slack="C0APPROVALS")
    outbound.TIDEBASE_SLACK_BOT_TOKEN = None
    gate = open_gate()
    row = only_slack(gate, "gate.created")

    assert attempt(row) is None
    row.refresh_from_db()
    assert row.status == DeliveryStatus.FAILED
    assert row.error_text == "slack_bot_token_missing"
    assert slack.calls == []


def test_slack__response_url_replaces_the_clicked_message(outbound: Any, slack: SlackStandIn) -> None:
    people = team()
    policy(slack="C0APPROVALS", quorum=2)
    gate = open_gate()

    first = vote(gate, people.alice)
    with transaction.atomic():
        (voted_id,) = notifications.notify_slack_response(first.gate, slack.response_url("one"))
    assert attempt(Notification.objects.get(id=voted_id)) is None
    (call,) = slack.of_kind("response_url")
    assert call.path == "/actions/one"
    assert call.body["replace_original"] is True
    assert "1 of 2 approvals so far (alice)" in call.all_text()
    assert_buttons(call, gate)  # still pending: the next approver clicks in the same message

    second = vote(gate, people.carol)
    with transaction.atomic():
        (resolved_id,) = notifications.notify_slack_response(second.gate, slack.response_url("two"))
    assert attempt(Notification.objects.get(id=resolved_id)) is None
    call = slack.of_kind("response_url")[1]
    assert call.body["replace_original"] is True
    assert call.text.startswith("Approved by alice, carol")
    assert call.block("tidebase_gate") is None
    assert slack.of_kind("chat.postMessage") == []  # nothing else was sent


def test_slack__dead_letter_is_listed_and_redelivered_from_the_dashboard(outbound: Any, slack: SlackStandIn) -> None:
    team()
    policy(slack=slack.webhook_url("T000/B000/secret-part"))
    gate = open_gate()
    row = only_slack(gate, "gate.created")
    slack.fail_next(4, error="internal_error", status=500)
    while attempt(row) is not None:  # four failures exhaust the schedule (three retries): dead letter
        pass
    row.refresh_from_db()
    assert row.status == DeliveryStatus.FAILED
    assert row.attempts == 4

    client = Client()
    client.force_login(User.objects.create_superuser("admin", "admin@x.test", "pw"))
    page = client.get(reverse("dashboard:webhooks") + "?kind=notification&status=failed")
    assert page.status_code == 200
    html = page.content.decode()
    assert row.id in html
    assert "gate.created (slack)" in html
    assert "secret-part" not in html  # an incoming-webhook URL is a capability: shown by its host only
    redelivered = client.post(reverse("dashboard:webhook-redeliver", args=["notification", row.id]))
    assert redelivered.status_code == 302

    row.refresh_from_db()
    assert row.status == DeliveryStatus.PENDING
    assert attempt(row) is None
    row.refresh_from_db()
    assert row.status == DeliveryStatus.DELIVERED
    assert row.attempts == 5
    assert [c.ok for c in slack.of_kind("webhook")] == [False, False, False, False, True]


# --- End to end: a real worker ----------------------------------------------------------------------


def test_end_to_end__a_worker_delivers_them_and_the_sweep_sends_a_lost_one(
    test_database_url: str,
    broker_env: dict[str, str],  # noqa: F811
    outbound: Any,
    mailbox: Mailbox,
    slack: SlackStandIn,
    tmp_path: Path,
) -> None:
    people = team()
    policy(email=True, email_links=True, slack=slack.webhook_url())
    env = {
        "EMAIL_BACKEND": SMTP_BACKEND,
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(mailbox.port),
        "TIDEBASE_PUBLIC_URL": PUBLIC,
    }
    _configure_this_process(broker_env)  # afresh: an earlier test may have left this process's publisher closed
    worker = Worker(test_database_url, broker_env, env, tmp_path / "worker.log").start(concurrency=4)
    try:
        gate = open_gate()  # its after-commit messages go to the broker; the worker sends them
        wait_for(lambda: len(mailbox.messages) == 3, 30, what="three approval emails")
        slack.wait(lambda calls: len(calls) == 1)
        assert set(links_in(text_of(mailbox.to("alice@x.test")[0]))) == {"approved", "rejected"}
        assert_buttons(slack.calls[0], gate)

        vote(gate, people.alice)
        told = slack.wait(lambda calls: [c for c in calls if c.text.startswith("Approved by alice")])
        assert told[0].block("tidebase_gate") is None
        created = [r.id for r in Notification.objects.filter(gate_id=gate.id)]
        triggers = set(DeliveryAttempt.objects.filter(delivery_id__in=created).values_list("trigger", flat=True))
        assert triggers == {"dispatch"}  # delivered on their after-commit message, not by the sweep

        # A row whose message was lost (written without its after-commit hand-off): the sweep sends it.
        lost = Notification.objects.create(
            run_id=gate.run_id,
            gate_id=gate.id,
            medium=NotificationMedium.SLACK,
            event_type="gate.resolved",
            target=slack.webhook_url("T000/B000/lost"),
            next_attempt_at=Now(),
        )
        slack.wait(lambda calls: [c for c in calls if c.path == "/services/T000/B000/lost"], timeout=30)
        wait_for(
            lambda: Notification.objects.get(id=lost.id).status == DeliveryStatus.DELIVERED, 10, what="the lost row"
        )
        assert list(DeliveryAttempt.objects.filter(delivery_id=lost.id).values_list("trigger", flat=True)) == ["sweep"]
    finally:
        worker.stop()
