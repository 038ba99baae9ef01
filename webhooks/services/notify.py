"""Approval emails and Slack messages (docs/approvals.md): what a ``Notification`` row says and how
an email goes out. The core writes the rows (``tidebase_core.services.notifications``); they are
claimed, retried and dead-lettered like every other outbox row, and this module turns a claimed
row into a ``Message``.

A message is rendered when its attempt is claimed, from the gate as it is then, never from a
snapshot taken when the row was written: a retry an hour later shows the votes cast meanwhile,
and an approval request for a gate that was decided before it went out is not sent at all (the
row is delivered with the response "gate already decided").

- **Email** (``medium`` ``email``, ``target`` an address, ``user`` the recipient): who is asked,
  the gate (workflow, run, name, prompt, an excerpt of its data), the quorum so far, the SLA, a
  link to the run in the dashboard and, when the policy allows it and would let this recipient
  both approve and reject without a comment, signed one-click links (``services.links``) that
  confirm with a POST. Sent through Django's email framework; a recipient the SMTP server
  refuses for good (5xx) is dead-lettered, any other failure retried.
- **Slack** (``medium`` ``slack``): ``target`` an ``http(s)`` URL is an incoming webhook (or, with
  ``data.replace_original``, the ``response_url`` of a click, whose message is replaced); any
  other ``target`` is a channel id, posted to with ``chat.postMessage`` and the bot token. A
  message about a pending gate carries Approve/Reject buttons (the interactive callback parses
  block ``tidebase_gate``, action ``approve``/``reject``, value the gate id); one about a decided
  gate tells the outcome, without buttons, and replaces the bot's last request in that channel
  (``chat.update``) when there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import smtplib
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.template.loader import render_to_string
from django.urls import reverse

from tidebase_core.exceptions import CommentRequired
from tidebase_core.models import (
    ApprovalPolicy,
    DeliveryStatus,
    Gate,
    GateStatus,
    GateVote,
    Notification,
    NotificationMedium,
)
from tidebase_core.services import audit
from tidebase_core.services.approvals import tally
from tidebase_core.services.links import DECISIONS, link_url
from tidebase_core.services.policies import refusal, voter_for_user
from tidebase_core.services.slack_interactions import BLOCK_ID, LINK_BLOCK_ID
from webhooks.services.messages import Email, Message, Settled, compact_json
from webhooks.services.sending import Outcome

USER_AGENT = "tidebase-notify/0.1.0"
ASKING = ("gate.created", "gate.reminded", "gate.escalated")
"""Events that ask for a decision: sent only while the gate is pending."""
ALREADY_DECIDED = "gate already decided"
DATA_EXCERPT_CHARS = 500
PROMPT_CHARS = 1500
"""Of a gate's prompt in a Slack section (whose text may hold 3000 characters)."""
_TS = re.compile(r'"ts"\s*:\s*"(\d+\.\d+)"')
_CHANNEL = re.compile(r'"channel"\s*:\s*"([A-Za-z0-9]+)"')


@dataclass(frozen=True)
class GateView:
    """A gate as a message tells it, read when the message is rendered."""

    gate: Gate
    event_type: str
    workflow: str
    dashboard_url: str
    data_excerpt: str
    quorum: str | None
    """E.g. "1 of 2 approvals so far" when the policy needs more than one approval, else None."""
    voters: str
    expires_at: dt.datetime | None
    expiry_action: str
    outcome: str | None
    """What happened to a decided gate ("Approved by alice, bob"), None while it is pending."""

    @property
    def pending(self) -> bool:
        return self.gate.status == GateStatus.PENDING

    @property
    def expires(self) -> str:
        """When the SLA expires, in UTC (emails are read in every time zone), or ""."""
        if self.expires_at is None:
            return ""
        return self.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    @property
    def heading(self) -> str:
        if self.outcome is not None:
            return self.outcome
        return {
            "gate.reminded": "Reminder: approval still needed",
            "gate.escalated": "Escalation: approval still needed",
            "gate.expired": "Past its SLA: approval still needed",
        }.get(self.event_type, "Approval needed")


def gate_view(gate: Gate, policy: ApprovalPolicy | None, event_type: str) -> GateView:
    quorum = voters = ""
    if policy is not None:
        votes = tally(gate.id, policy.quorum)
        voters = ", ".join(v.removeprefix("user:") for v in votes.voters)
        if policy.quorum > 1:
            quorum = f"{votes.text()} approvals so far"
    return GateView(
        gate=gate,
        event_type=event_type,
        workflow=gate.run.workflow_name,
        dashboard_url=settings.TIDEBASE_PUBLIC_URL + reverse("dashboard:run", args=[gate.run_id]),
        data_excerpt=data_excerpt(gate.data),
        quorum=quorum or None,
        voters=voters,
        expires_at=gate.expire_at,
        expiry_action=policy.get_expiry_action_display() if policy is not None else "",
        outcome=None if gate.status == GateStatus.PENDING else outcome_text(gate),
    )


def data_excerpt(data: Any) -> str:
    if data in (None, {}, []):
        return ""
    text = json.dumps(data, ensure_ascii=False, default=str)
    return text if len(text) <= DATA_EXCERPT_CHARS else text[: DATA_EXCERPT_CHARS - 1] + "…"


def outcome_text(gate: Gate) -> str:
    """What happened: "Approved by alice, bob", "Rejected by eve", "Expired: rejected by SLA",
    "Canceled (timeout)"."""
    if gate.expired_at is not None and gate.actor == "sla":  # services.sla.ACTOR decided it
        return f"Expired: {gate.status} by SLA"
    who = gate.actor or gate.decided_by or "someone"
    if gate.status == GateStatus.CANCELED:
        return f"Canceled ({who})"
    return f"{str(gate.status).capitalize()} by {who}"


def notification_message(row: Notification) -> Message:
    """The message of ``row``, rendered now. Expects ``gate__run``, ``gate__policy`` and ``user``
    loaded (the claim selects them)."""
    gate = row.gate
    if row.event_type in ASKING and gate.status != GateStatus.PENDING:
        return Message(
            url=_attempt_url(row),
            body=b"",
            secret=None,
            previous_secrets=(),
            user_agent=USER_AGENT,
            settled=Settled(ok=True, note=ALREADY_DECIDED),
        )
    view = gate_view(gate, gate.policy, row.event_type)
    if row.medium == NotificationMedium.EMAIL:
        return _email_message(row, view)
    return _slack_message(row, view)


def _attempt_url(row: Notification) -> str:
    return f"mailto:{row.target}" if row.medium == NotificationMedium.EMAIL else row.target


# --- Email ---------------------------------------------------------------------------------------


def one_click_links(row: Notification, gate: Gate, policy: ApprovalPolicy | None) -> tuple[dict[str, str], str]:
    """The recipient's one-click links (``{"approved": url, "rejected": url}``) and, when there are
    none though the policy offers them, why not. Offered only to a recipient the policy lets make
    both decisions: not the person who started the run (they may not approve it), a recipient
    outside the approver groups (e.g. an escalation contact) or one who has voted already. A
    policy that requires a comment still gets links: the confirmation page asks for it."""
    if policy is None or not policy.email_links:
        return {}, ""
    user = row.user
    if user is None or not user.is_active:
        return {}, "One-click links are sent only to active dashboard users."
    voter = voter_for_user(user, channel=audit.EMAIL)
    for decision in DECISIONS:
        refused = refusal(voter=voter, policy=policy, started_by=gate.run.started_by, decision=decision, comment="")
        if refused is not None and not isinstance(refused, CommentRequired):
            return {}, f"No one-click links: {refused.message}."
    if GateVote.objects.filter(gate_id=gate.id, voter=voter.identity).exists():
        return {}, "No one-click links: you have already voted on this gate."
    return {d: link_url(gate_id=gate.id, user_id=user.pk, decision=d) for d in DECISIONS}, ""


def _email_message(row: Notification, view: GateView) -> Message:
    gate = view.gate
    links, no_links = one_click_links(row, gate, gate.policy) if view.pending else ({}, "")
    user = row.user
    context = {
        "view": view,
        "gate": gate,
        "recipient": (user.get_full_name() or user.get_username()) if user is not None else row.target,
        "reminder": row.event_type == "gate.reminded",
        "escalation": row.event_type == "gate.escalated",
        "approve_url": links.get("approved", ""),
        "reject_url": links.get("rejected", ""),
        "no_links": no_links,
        "link_ttl": _duration(settings.TIDEBASE_APPROVAL_LINK_TTL_S),
    }
    subject = f"[Tidebase] {view.heading}: {view.workflow} / {gate.name}"
    email = Email(
        to=row.target,
        subject=" ".join(subject.split())[:200],  # a header: no line breaks from a gate's name
        text=render_to_string("webhooks/notifications/gate_email.txt", context),
        html=render_to_string("webhooks/notifications/gate_email.html", context),
        headers=(("X-Tidebase-Notification", row.id), ("X-Tidebase-Gate", gate.id)),
    )
    return Message(
        url=_attempt_url(row), body=b"", secret=None, previous_secrets=(), user_agent=USER_AGENT, email=email
    )


def _duration(seconds: int) -> str:
    if seconds < 2 * 3600:
        return f"{max(1, seconds // 60)} minutes"
    return f"{seconds // 3600} hours"


def email_send(email: Email) -> Outcome:
    """Hand one email to the configured backend (SMTP in production). Never raises: a recipient
    refused for good (5xx) is the permanent error ``recipient_refused``; anything else (a server
    down, a 4xx greylisting, a timeout: ``EMAIL_TIMEOUT``) is an error a retry may fix."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    message = EmailMultiAlternatives(
        subject=email.subject,
        body=email.text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[email.to],
        headers=dict(email.headers),
    )
    message.attach_alternative(email.html, "text/html")
    try:
        with get_connection(fail_silently=False) as connection:
            sent = connection.send_messages([message])
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [int(code) for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{code} {_text(reply)}" for code, reply in exc.recipients.values())
        code = "recipient_refused" if codes and all(500 <= c < 600 for c in codes) else "smtp_deferred"
        return Outcome(latency_ms=elapsed(), error=f"{code}: {detail}"[:1000])
    except smtplib.SMTPResponseException as exc:
        return Outcome(latency_ms=elapsed(), error=f"smtp: {exc.smtp_code} {_text(exc.smtp_error)}"[:1000])
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(latency_ms=elapsed(), error=f"smtp: {type(exc).__name__}: {exc}"[:1000])
    if not sent:
        return Outcome(latency_ms=elapsed(), error="smtp: the backend sent nothing")
    return Outcome(latency_ms=elapsed(), sent=True, response=f"accepted for {email.to}")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else str(reply)


# --- Slack ---------------------------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    """Slack's escaping for text it formats: only ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(view: GateView) -> dict[str, Any]:
    """The message (``text`` for notifications and screen readers, ``blocks`` for the channel)."""
    gate = view.gate
    fallback = f"{view.heading}: {view.workflow} / {gate.name}"
    summary = (
        f"*{_mrkdwn(view.heading)}*\n"
        f"*Workflow:* `{_mrkdwn(view.workflow)}`   *Run:* `{gate.run_id}`   *Gate:* `{_mrkdwn(gate.name)}`"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(summary, 3000)}},
    ]
    if gate.prompt:
        quoted = "\n".join(f">{line}" for line in _mrkdwn(_clip(gate.prompt, PROMPT_CHARS)).splitlines())
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": quoted or ">"}})
    if view.data_excerpt:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{_mrkdwn(view.data_excerpt)}```"}})
    context: list[str] = []
    if view.quorum:
        context.append(view.quorum + (f" ({_mrkdwn(view.voters)})" if view.voters else ""))
    if view.pending and view.expires_at is not None:
        epoch = int(view.expires_at.timestamp())
        then = f" (then: {view.expiry_action})" if view.expiry_action else ""
        context.append(f"Expires <!date^{epoch}^{{date_short_pretty}} at {{time}}|{view.expires}>{then}")
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    if view.pending:
        blocks.append(
            {
                "type": "actions",
                "block_id": BLOCK_ID,
                "elements": [
                    _button("Approve", "approve", gate.id, style="primary"),
                    _button("Reject", "reject", gate.id, style="danger"),
                ],
            }
        )
    blocks.append(
        {
            "type": "actions",
            "block_id": LINK_BLOCK_ID,
            "elements": [
                {
                    "type": "button",
                    "action_id": "view",
                    "text": {"type": "plain_text", "text": "View in dashboard"},
                    "url": view.dashboard_url,
                }
            ],
        }
    )
    return {"text": _clip(fallback, 3000), "blocks": blocks}


def _button(label: str, action_id: str, value: str, *, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label},
        "style": style,
        "value": value,
    }


def _posted(row: Notification) -> tuple[str, str] | None:
    """The channel and ``ts`` of the bot's latest delivered request for this gate in the row's
    channel (read from ``chat.postMessage``'s stored answer), to replace with the outcome."""
    earlier = (
        Notification.objects.filter(
            gate_id=row.gate_id,
            medium=NotificationMedium.SLACK,
            target=row.target,
            event_type__in=ASKING,
            status=DeliveryStatus.DELIVERED,
        )
        .exclude(response_body=None)
        .order_by("-completed_at")
        .values_list("response_body", flat=True)
    )
    for body in earlier[:5]:
        ts, channel = _TS.search(body or ""), _CHANNEL.search(body or "")
        if ts and channel:
            return channel.group(1), ts.group(1)
    return None


def _slack_message(row: Notification, view: GateView) -> Message:
    payload = slack_payload(view)
    common: dict[str, Any] = {"secret": None, "previous_secrets": (), "user_agent": USER_AGENT, "slack": True}
    if row.target.startswith(("https://", "http://")):
        if row.data.get("replace_original"):
            payload = {"replace_original": True, **payload}
        return Message(url=row.target, body=compact_json(payload), **common)
    token = settings.TIDEBASE_SLACK_BOT_TOKEN
    if not token:
        return Message(url=row.target, body=b"", settled=Settled(ok=False, note="slack_bot_token_missing"), **common)
    api = settings.TIDEBASE_SLACK_API_URL
    posted = None if view.pending else _posted(row)
    if posted is not None:
        channel, ts = posted
        body = {"channel": channel, "ts": ts, **payload}
        return Message(url=f"{api}/chat.update", body=compact_json(body), bearer=token, **common)
    body = {"channel": row.target, **payload}
    return Message(url=f"{api}/chat.postMessage", body=compact_json(body), bearer=token, **common)
