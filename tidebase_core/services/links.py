"""One-click decision links in approval emails: signed, bound to one recipient and one decision,
expiring, and single-use (docs/approvals.md).

A link is ``<TIDEBASE_PUBLIC_URL>/dashboard/decide/<token>/``. The token is a Django signature
(``SECRET_KEY``, salt ``tidebase.gate-link``) over the gate, the recipient's user id, the decision
and a random nonce, with its signing time. Opening it (a GET, which a mail scanner may prefetch)
only shows a confirmation page; the decision is made by the page's POST, which applies the
gate's policy to the recipient and spends the nonce in the decision's transaction.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.urls import reverse

from tidebase_core.exceptions import (
    AlreadyVoted,
    CommentRequired,
    LinkExpired,
    LinkInvalid,
    LinkOtherUser,
    LinksNotAllowed,
    LinkUsed,
    NotFound,
    UserInactive,
)
from tidebase_core.models import ApprovalPolicy, Gate, GateStatus, GateVote, UsedNonce
from tidebase_core.services import approvals, audit, policies

SALT = "tidebase.gate-link"
DECISIONS = ("approved", "rejected")


@dataclass(frozen=True)
class LinkClaim:
    gate_id: str
    user_id: int
    decision: str
    nonce: str


def link_token(*, gate_id: str, user_id: int, decision: str) -> str:
    if decision not in DECISIONS:
        raise ValueError(decision)
    body = {"g": gate_id, "u": user_id, "d": decision, "n": secrets.token_urlsafe(16)}
    return signing.dumps(body, salt=SALT, compress=True)


def link_url(*, gate_id: str, user_id: int, decision: str) -> str:
    token = link_token(gate_id=gate_id, user_id=user_id, decision=decision)
    return settings.TIDEBASE_PUBLIC_URL + reverse("dashboard:gate-link", args=[token])


def read_link(token: str) -> LinkClaim:
    """The claim of a link. Raises ``signing.SignatureExpired`` past
    ``TIDEBASE_APPROVAL_LINK_TTL_S`` and ``signing.BadSignature`` for anything forged or mangled."""
    body = signing.loads(token, salt=SALT, max_age=settings.TIDEBASE_APPROVAL_LINK_TTL_S)
    if not isinstance(body, dict) or body.get("d") not in DECISIONS:
        raise signing.BadSignature("not a decision link")
    try:
        return LinkClaim(gate_id=str(body["g"]), user_id=int(body["u"]), decision=str(body["d"]), nonce=str(body["n"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise signing.BadSignature("not a decision link") from exc


NONCE_PREFIX = "link:"
"""``UsedNonce`` key of a spent link: ``link:<its nonce>``."""


@dataclass(frozen=True)
class LinkOffer:
    """What an open link offers its recipient: the gate (with its run), the decision, the
    recipient (``user``), the policy that will apply and the votes so far."""

    claim: LinkClaim
    gate: Gate
    user: Any
    policy: ApprovalPolicy
    tally: approvals.Tally


def _link_target(*, token: str, signed_in: Any) -> tuple[LinkClaim, Gate, Any, ApprovalPolicy]:
    """What a link is for, checked without reading the gate's state: LinkInvalid, LinkExpired,
    UserInactive, LinkOtherUser, NotFound, LinksNotAllowed. The rest (used, decided, the policy's
    refusals, already voted) ``gate_decide`` settles under the gate's lock."""
    try:
        claim = read_link(token)
    except signing.SignatureExpired as exc:
        raise LinkExpired("this link has expired; open the gate in the dashboard instead") from exc
    except signing.BadSignature as exc:
        raise LinkInvalid("this link is not valid (it may have been cut or altered)") from exc
    user = get_user_model().objects.filter(pk=claim.user_id).first()
    if user is None or not user.is_active:
        raise UserInactive("the account this link was sent to is deactivated")
    if getattr(signed_in, "is_authenticated", False) and signed_in.pk != user.pk:
        raise LinkOtherUser(
            f"this link was sent to {user.get_username()}, but {signed_in.get_username()} is signed in "
            "here: sign out, or open the link in a private window"
        )
    gate = Gate.objects.select_related("run").filter(id=claim.gate_id).first()
    if gate is None:
        raise NotFound("gate not found")
    policy = ApprovalPolicy.objects.filter(id=gate.policy_id).first() if gate.policy_id else None
    if policy is None or not policy.email_links:
        raise LinksNotAllowed("the approval policy of this gate does not allow one-click links")
    return claim, gate, user, policy


def link_open(*, token: str, signed_in: Any) -> LinkOffer:
    """Check a link as its POST will, without deciding (a GET; mail scanners prefetch links).

    Raises, in this order: LinkInvalid (forged or mangled), LinkExpired, UserInactive (the
    recipient is deactivated or gone), LinkOtherUser (someone else is signed in in this browser),
    NotFound (the gate is gone), LinksNotAllowed (the gate's policy, as it is now, allows no
    links), LinkUsed, GateAlreadyResolved, the policy's refusals of the recipient (NotAnApprover,
    SelfApproval) and AlreadyVoted. A policy that requires a comment is not refused here: the
    confirmation page asks for one."""
    claim, gate, user, policy = _link_target(token=token, signed_in=signed_in)
    if UsedNonce.objects.filter(key=NONCE_PREFIX + claim.nonce).exists():
        raise LinkUsed("this link has already been used; links decide once")
    if gate.status != GateStatus.PENDING:
        raise approvals.already_decided(gate)
    voter = policies.voter_for_user(user, channel=audit.EMAIL)
    refused = policies.refusal(
        voter=voter, policy=policy, started_by=gate.run.started_by, decision=claim.decision, comment=""
    )
    if refused is not None and not isinstance(refused, CommentRequired):
        raise refused
    if GateVote.objects.filter(gate_id=gate.id, voter=voter.identity).exists():
        raise AlreadyVoted(f"{voter.actor} has already voted on this gate")
    return LinkOffer(claim=claim, gate=gate, user=user, policy=policy, tally=approvals.tally(gate.id, policy.quorum))


def link_decide(*, token: str, signed_in: Any, comment: str = "") -> approvals.Decision:
    """Decide as the link's recipient (the confirmation page's POST): what the link is for, then
    ``gate_decide`` with the recipient as the voter (channel ``email``), which settles the rest
    under the gate's lock, in ``link_open``'s order: it spends the link's nonce (LinkUsed), then
    checks the gate is pending, the policy and the votes. Checking those here first would read
    them outside the lock, and a POST racing a winner could see some before its commit and some
    after (already voted, where every loser should hear "link used"). A
    refusal changes nothing and leaves the link usable; a second use raises LinkUsed (409)."""
    claim, gate, user, _ = _link_target(token=token, signed_in=signed_in)
    comment = comment.strip()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.TIDEBASE_APPROVAL_LINK_TTL_S)
    return approvals.gate_decide(
        run_id=gate.run_id,
        gate_id=gate.id,
        decision=claim.decision,
        voter=policies.voter_for_user(user, channel=audit.EMAIL),
        payload={"comment": comment} if comment else None,
        nonce=(NONCE_PREFIX + claim.nonce, expires),
    )
