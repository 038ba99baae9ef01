"""One-click decision links in approval emails: signed, bound to one recipient and one decision,
expiring, and single-use (docs/approvals.md).

A link is ``<TIDEBASE_PUBLIC_URL>/dashboard/decide/<token>/``. The token is a Django signature
(``SECRET_KEY``, salt ``tidebase.gate-link``) over the gate, the recipient's user id, the decision
and a random nonce, with its signing time. Opening it (a GET, which a mail scanner may prefetch)
only shows a confirmation page; the decision is made by the page's POST, which applies the
gate's policy to the recipient and spends the nonce in the decision's transaction.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

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
