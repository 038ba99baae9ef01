"""Slack's interactive callback: a click on the Approve or Reject button of a gate message
(docs/approvals.md, "Slack").

Slack signs each callback with the app's signing secret (``TIDEBASE_SLACK_SIGNING_SECRET``):
``v0=HMAC-SHA256(secret, "v0:<timestamp>:<raw body>")`` in ``X-Slack-Signature``, the timestamp
in ``X-Slack-Request-Timestamp``. ``slack_sdk``'s ``SignatureVerifier`` checks both (a 5-minute
window, a constant-time compare). Within the window a captured request could be sent again, so
an accepted one spends the nonce ``slack:<sha256 of its signature>`` in the decision's
transaction and a replay is refused (409 ``replayed``).

The clicker is the Django user their Slack id is linked to (``SlackUser``, made with
``manage.py tidebase_slack_link``), and the gate's policy applies to them exactly as in the
dashboard (``approvals.gate_decide``, channel ``slack``). A click the policy refuses is not an
error of the request: Slack is answered 200 with an ephemeral message saying why (shown to the
clicker only), and nothing changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from slack_sdk.signature import Clock, SignatureVerifier

from tidebase_core.exceptions import (
    DomainError,
    InvalidPayload,
    InvalidSignature,
    NotAnApprover,
    NotFound,
    Replayed,
    SlackNotConfigured,
    StaleRequest,
    UnknownSlackUser,
    UserInactive,
)
from tidebase_core.models import Gate, GateStatus, SlackUser, UsedNonce
from tidebase_core.services import approvals, audit, notifications, policies

MAX_BODY_BYTES = 256 * 1024
"""Largest callback accepted (Slack sends the whole message with a click: tens of KB at most)."""
WINDOW_S = 300
"""slack_sdk's timestamp window, on either side of now; a spent nonce is kept at least this long."""
BLOCK_ID = "tidebase_gate"
"""The ``block_id`` of the Approve/Reject actions block of a gate message (webhooks.services.notify)."""
LINK_BLOCK_ID = "tidebase_link"
"""The ``block_id`` of the "View in dashboard" link button (webhooks.services.notify)."""
ACTIONS = {"approve": GateStatus.APPROVED, "reject": GateStatus.REJECTED}
"""``action_id`` of each button → the decision."""


@dataclass(frozen=True)
class Click:
    slack_user_id: str
    decision: str
    gate_id: str
    response_url: str | None


def slack_verify(*, body: bytes, timestamp: str | None, signature: str | None, clock: Clock | None = None) -> None:
    """Raise unless ``body`` was signed by Slack with our secret within the window:
    SlackNotConfigured (503) without a secret, InvalidPayload (400) for a body that is not UTF-8,
    InvalidSignature (401) for a missing or wrong signature, StaleRequest (401) for a timestamp
    outside the window."""
    secret = settings.TIDEBASE_SLACK_SIGNING_SECRET
    if not secret:
        raise SlackNotConfigured("Slack is not configured here: set TIDEBASE_SLACK_SIGNING_SECRET")
    verifier = SignatureVerifier(secret, clock=clock or Clock())
    try:
        body.decode("utf-8")  # what the verifier signs; Slack sends nothing else
    except UnicodeDecodeError:
        raise InvalidPayload("the body is not UTF-8") from None
    if not timestamp or not signature:
        raise InvalidSignature("missing X-Slack-Signature or X-Slack-Request-Timestamp")
    try:
        sent = int(timestamp)
    except ValueError:
        raise InvalidSignature("X-Slack-Request-Timestamp is not a Unix time") from None
    if verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        return
    if abs(verifier.clock.now() - sent) > WINDOW_S:
        raise StaleRequest("the request's timestamp is outside Slack's 5-minute window")
    raise InvalidSignature("the Slack signature does not match")


def _invalid(what: str) -> InvalidPayload:
    return InvalidPayload(f"not a Tidebase gate button click: {what}")


def parse_click(body: bytes) -> Click | None:
    """The click in a verified body (``payload=<json>``, type ``block_actions``, the first
    action from our actions block), or None for a click on the message's "View in dashboard"
    link button (Slack reports those too; the browser has opened the link). Raises
    InvalidPayload (400) for anything else."""
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
        payload = json.loads(fields["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError):
        raise _invalid("the body must be payload=<JSON>") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise _invalid("type must be block_actions")
    user = payload.get("user")
    actions = payload.get("actions")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not user_id:
        raise _invalid("no user.id")
    action = actions[0] if isinstance(actions, list) and actions else None
    if isinstance(action, dict) and action.get("block_id") == LINK_BLOCK_ID:
        return None
    if not isinstance(action, dict) or action.get("block_id") != BLOCK_ID:
        raise _invalid(f"the action is not from the {BLOCK_ID} block")
    decision = ACTIONS.get(str(action.get("action_id")))
    gate_id = action.get("value")
    if decision is None:
        raise _invalid("action_id must be approve or reject")
    if not isinstance(gate_id, str) or not gate_id or len(gate_id) > 40:
        raise _invalid("the action's value must be a gate id")
    response_url = payload.get("response_url")
    if response_url is not None and not (
        isinstance(response_url, str) and response_url.startswith(("https://", "http://"))
    ):
        raise _invalid("response_url must be a URL")
    return Click(slack_user_id=user_id, decision=decision, gate_id=gate_id, response_url=response_url)


def ephemeral(text: str, *, code: str | None = None) -> dict[str, Any]:
    """An answer Slack shows to the clicker only, leaving the message as it is."""
    body: dict[str, Any] = {"response_type": "ephemeral", "replace_original": False, "text": text}
    if code is not None:
        body["code"] = code
    return body


def slack_interaction(*, body: bytes, timestamp: str | None, signature: str | None) -> dict[str, Any]:
    """Verify, parse and apply one button click; the JSON to answer Slack with (200).

    Raises (the request itself is wrong) SlackNotConfigured, InvalidSignature, StaleRequest,
    InvalidPayload and Replayed. A click refused for who clicked or the gate's state (an unknown
    Slack user, a deactivated account, not an approver, self-approval, already voted, already
    decided, a comment required) answers an ephemeral message with the error's code, and changes
    nothing. A decision replaces the original message with the outcome through the
    notifications outbox (Slack's ``response_url``); a vote counted towards a quorum leaves the
    message, and its buttons, for the other approvers."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidPayload(f"the body is larger than {MAX_BODY_BYTES} bytes")
    slack_verify(body=body, timestamp=timestamp, signature=signature)
    click = parse_click(body)
    if click is None:  # a link button: nothing to decide, and Slack wants its 200
        return {}
    nonce = approvals.SLACK_NONCE_PREFIX + hashlib.sha256(str(signature).encode()).hexdigest()
    if UsedNonce.objects.filter(key=nonce).exists():  # also checked, race-free, in gate_decide
        raise Replayed("this Slack request was already accepted")
    # Kept twice the window: the signature's window is read on this process's clock and the
    # prune on the database's, so skew between them must not free a nonce still replayable.
    expires = dt.datetime.fromtimestamp(int(str(timestamp)) + 2 * WINDOW_S, dt.UTC)
    try:
        decision = _decide(click, nonce=(nonce, expires))
    except Replayed:
        raise
    except DomainError as exc:
        return ephemeral(f"Not recorded: {exc.message}.", code=exc.code)
    gate = decision.gate
    if decision.final:
        if click.response_url:
            notifications.notify_slack_response(gate, click.response_url)
        return ephemeral(f"{gate.status.capitalize()} “{gate.name}”.")
    counted = "approval" if click.decision == GateStatus.APPROVED else "rejection"
    progress = f" ({decision.tally.text()} approvals)" if decision.tally is not None else ""
    return ephemeral(f"Your {counted} of “{gate.name}” is counted{progress}; the policy needs more votes.")


def _decide(click: Click, *, nonce: tuple[str, dt.datetime]) -> approvals.Decision:
    link = SlackUser.objects.select_related("user").filter(slack_user_id=click.slack_user_id).first()
    if link is None:
        raise UnknownSlackUser(
            f"your Slack account ({click.slack_user_id}) is not linked to a Tidebase user; "
            "an administrator links it with manage.py tidebase_slack_link"
        )
    user = link.user
    if not user.is_active:
        raise UserInactive(f"the Tidebase account {user.get_username()} is deactivated")
    gate = Gate.objects.filter(id=click.gate_id).only("id", "run_id", "policy_id").first()
    if gate is None:
        raise NotFound("gate not found")
    if not user.has_perm("dashboard.resolve_gate"):
        # The approver role, as in the dashboard (a policy's refusal says the same for its gates).
        raise NotAnApprover(f"{user.get_username()} may not approve or reject gates (the approver role)")
    return approvals.gate_decide(
        run_id=gate.run_id,
        gate_id=gate.id,
        decision=click.decision,
        voter=policies.voter_for_user(user, channel=audit.SLACK),
        nonce=nonce,
    )
