"""One-click Approve/Reject links from approval emails, over HTTP on a live server against real
Postgres: a GET only shows the confirmation page (mail scanners prefetch links); the POST decides
as the link's recipient under the gate's policy and spends the link in the decision's
transaction. Forged, expired, replayed, cross-user and policy-refused links are refused with a
clear code and change nothing: no vote, no event, no audit entry, and the link stays unspent."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.core import signing
from django.test import Client

from dashboard.roles import ensure_roles
from tests.core.test_probes import in_threads
from tidebase_core.models import AuditEntry, Event, Gate, GateVote, UsedNonce
from tidebase_core.services import approvals, audit, links, policies, runs
from tidebase_core.services import gates as gate_services

pytestmark = pytest.mark.django_db(transaction=True)

CODE = re.compile(r'data-code="([a-z_]+)"')
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture
def http(live_server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server_url, timeout=30) as client:
        yield client


@pytest.fixture
def people(db: None) -> dict[str, User]:
    group = Group.objects.create(name="payments")
    made = {n: User.objects.create_user(n, f"{n}@x.test", "pw") for n in ("alice", "bob", "carol", "eve", "starter")}
    for name in ("alice", "bob", "carol", "starter"):
        made[name].groups.add(group)
    role = ensure_roles()["approver"]  # a policy narrows who decides among those with the role
    for user in made.values():
        user.groups.add(role)
    return made


def make_policy(**body: Any) -> None:
    base = {"name": "payments", "workflow_pattern": "pay*", "approver_groups": ["payments"], "email_links": True}
    policies.policy_save(policy_id=None, body={**base, **body}, actor="user:admin")


def make_gate(*, started_by: str = "user:starter") -> Gate:
    run = runs.run_create(workflow_name="payout", started_by=started_by)
    runs.run_begin(run_id=run.id, owner="w")
    gate, _ = gate_services.gate_begin(run_id=run.id, name="send", prompt="Send 500 EUR?", data={"amount": 500})
    return gate


def path_of(gate: Gate, user: User, decision: str = "approved") -> str:
    return "/dashboard/decide/" + links.link_token(gate_id=gate.id, user_id=user.pk, decision=decision) + "/"


def code_of(response: httpx.Response) -> str:
    found = CODE.search(response.text)
    assert found is not None, response.text[:500]
    return found.group(1)


def open_link(http: httpx.Client, path: str) -> httpx.Response:
    return http.get(path)


def confirm(http: httpx.Client, path: str, comment: str = "") -> httpx.Response:
    """What the recipient does: open the page (which sets the CSRF cookie), then press its button."""
    page = http.get(path)
    assert page.status_code == 200, page.text[:500]
    found = CSRF.search(page.text)
    assert found is not None
    return http.post(path, data={"csrfmiddlewaretoken": found.group(1), "comment": comment})


def state(gate: Gate) -> tuple[Any, ...]:
    """Everything a refused link must leave as it was."""
    g = Gate.objects.get(id=gate.id)
    return (
        g.status,
        g.decided_by,
        GateVote.objects.filter(gate_id=gate.id).count(),
        Event.objects.filter(run_id=gate.run_id).count(),
        AuditEntry.objects.count(),
        UsedNonce.objects.count(),
    )


def sign_in(http: httpx.Client, user: User) -> None:
    """A dashboard session for ``user`` in this browser (sessions live in the database)."""
    client = Client()
    client.force_login(user)
    http.cookies.set("sessionid", client.cookies["sessionid"].value)


# --- the happy path -------------------------------------------------------------------------------


def test_link_get__shows_the_confirmation_and_never_decides(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    path = path_of(gate, people["alice"])
    for _ in range(2):  # a mail scanner, then the person
        page = open_link(http, path)
        assert (page.status_code, code_of(page)) == (200, "confirm")
    assert '<strong id="link-user">alice</strong>' in page.text
    assert "Send 500 EUR?" in page.text
    assert "Approve “send”?" in page.text
    assert page.headers["Cache-Control"].startswith("max-age=0")
    assert state(gate) == before


def test_link_post__decides_as_the_recipient_through_the_email_channel(
    http: httpx.Client, people: dict[str, User]
) -> None:
    make_policy()
    gate = make_gate()
    answer = confirm(http, path_of(gate, people["alice"]), comment="looks right")
    assert (answer.status_code, code_of(answer)) == (200, "decided")
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by, gate.actor) == ("approved", "user:alice", "alice")
    assert gate.decision_payload == {"comment": "looks right"}
    assert list(GateVote.objects.filter(gate_id=gate.id).values_list("voter", "channel")) == [("user:alice", "email")]
    entry = AuditEntry.objects.get(gate_id=gate.id)
    assert (entry.kind, entry.actor, entry.channel, str(entry.policy_version)) == (
        audit.DECISION,
        "alice",
        "email",
        "1",
    )
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1


def test_link_reject__rejects(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    answer = confirm(http, path_of(gate, people["bob"], "rejected"))
    assert (answer.status_code, code_of(answer)) == (200, "decided")
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("rejected", "user:bob")


def test_quorum_reached_by_two_links(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    first = confirm(http, path_of(gate, people["alice"]))
    assert (first.status_code, code_of(first)) == (200, "counted")
    assert "1 approved, 0 rejected; the policy needs 2" in first.text
    assert Gate.objects.get(id=gate.id).status == "pending"
    with httpx.Client(base_url=str(http.base_url), timeout=30) as bobs_browser:
        second = confirm(bobs_browser, path_of(gate, people["bob"]))
    assert (second.status_code, code_of(second)) == (200, "decided")
    gate.refresh_from_db()
    assert (gate.status, gate.actor) == ("approved", "alice, bob")
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1
    assert UsedNonce.objects.count() == 2


# --- refused links change nothing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-3] + ("aaa" if not t.endswith("aaa") else "bbb"), id="signature"),
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: "x" + t, id="payload"),
        pytest.param(lambda t: "not-a-link", id="garbage"),
    ],
)
def test_forged_link__is_refused_400(http: httpx.Client, people: dict[str, User], mangle: Any) -> None:
    make_policy()
    gate = make_gate()
    token = links.link_token(gate_id=gate.id, user_id=people["alice"].pk, decision="approved")
    path = "/dashboard/decide/" + mangle(token) + "/"
    before = state(gate)
    page = open_link(http, path)
    assert (page.status_code, code_of(page)) == (400, "link_invalid")
    csrf = CSRF.search(http.get("/dashboard/login/").text)
    assert csrf is not None
    posted = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1)})
    assert (posted.status_code, code_of(posted)) == (400, "link_invalid")
    assert state(gate) == before


def test_link_signed_for_another_decision__cannot_be_rewritten(http: httpx.Client, people: dict[str, User]) -> None:
    """The decision is inside the signature: a reject link re-signed with another key is forged."""
    make_policy()
    gate = make_gate()
    body = {"g": gate.id, "u": people["alice"].pk, "d": "approved", "n": "n1"}
    forged = signing.dumps(body, key="not-our-secret", salt=links.SALT, compress=True)
    page = open_link(http, f"/dashboard/decide/{forged}/")
    assert (page.status_code, code_of(page)) == (400, "link_invalid")


def test_expired_link__is_refused_410(
    http: httpx.Client, people: dict[str, User], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    make_policy()
    gate = make_gate()
    signed_at = int(time.time()) - settings.TIDEBASE_APPROVAL_LINK_TTL_S - 60  # signed a TTL ago
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(signed_at))
    path = path_of(gate, people["alice"])
    monkeypatch.undo()
    before = state(gate)
    page = open_link(http, path)
    assert (page.status_code, code_of(page)) == (410, "link_expired")
    assert state(gate) == before


def test_link_used_twice__is_refused_409(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    path = path_of(gate, people["alice"])
    page = http.get(path)
    token = CSRF.search(page.text)
    assert token is not None
    first = http.post(path, data={"csrfmiddlewaretoken": token.group(1)})
    assert code_of(first) == "counted"
    before = state(gate)
    again = http.post(path, data={"csrfmiddlewaretoken": token.group(1)})
    assert (again.status_code, code_of(again)) == (409, "link_used")
    reopened = open_link(http, path)
    assert (reopened.status_code, code_of(reopened)) == (409, "link_used")
    assert state(gate) == before


def test_same_link_posted_twice_at_once__decides_once(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    page = http.get(path)
    token = CSRF.search(page.text)
    assert token is not None
    cookies = dict(http.cookies)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=str(http.base_url), timeout=30, cookies=cookies) as browser:
            return browser.post(path, data={"csrfmiddlewaretoken": token.group(1)})

    answers = in_threads(4, post)
    outcomes = sorted((a.status_code, code_of(a)) for a in answers)
    assert outcomes == [(200, "decided")] + [(409, "link_used")] * 3
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1
    assert GateVote.objects.filter(gate_id=gate.id).count() == 1
    assert AuditEntry.objects.filter(gate_id=gate.id).count() == 1


def test_link_opened_while_another_user_is_signed_in__is_refused_403(
    http: httpx.Client, people: dict[str, User]
) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    sign_in(http, people["bob"])  # bob may approve too, but this is alice's link
    page = open_link(http, path)
    assert (page.status_code, code_of(page)) == (403, "link_other_user")
    assert "sent to alice, but bob is signed in" in page.text
    before = state(gate)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    posted = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1)})
    assert (posted.status_code, code_of(posted)) == (403, "link_other_user")
    assert state(gate) == before
    with httpx.Client(base_url=str(http.base_url), timeout=30) as alices_browser:  # the link is still good
        assert code_of(confirm(alices_browser, path)) == "decided"


def test_link_of_the_recipient_signed_in__decides(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    sign_in(http, people["alice"])
    assert code_of(confirm(http, path_of(gate, people["alice"]))) == "decided"


@pytest.mark.parametrize(
    ("who", "code"),
    [("eve", "not_an_approver"), ("starter", "self_approval")],
)
def test_link_the_policy_refuses__is_refused_403(
    http: httpx.Client, people: dict[str, User], who: str, code: str
) -> None:
    make_policy()
    gate = make_gate()
    before = state(gate)
    path = path_of(gate, people[who])
    page = open_link(http, path)
    assert (page.status_code, code_of(page)) == (403, code)
    assert state(gate) == before


def test_starters_reject_link__is_allowed(http: httpx.Client, people: dict[str, User]) -> None:
    """Self-approval is refused; rejecting one's own run's gate is not."""
    make_policy()
    gate = make_gate()
    assert code_of(confirm(http, path_of(gate, people["starter"], "rejected"))) == "decided"


def test_link_of_a_policy_without_email_links__is_refused_403(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy(email_links=False)
    gate = make_gate()
    before = state(gate)
    page = open_link(http, path_of(gate, people["alice"]))
    assert (page.status_code, code_of(page)) == (403, "links_not_allowed")
    assert state(gate) == before


def test_link_after_the_policy_stops_allowing_links__is_refused_on_post(
    http: httpx.Client, people: dict[str, User]
) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    page = http.get(path)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    policies.policy_save(policy_id=gate.policy_id, body={"email_links": False}, actor="user:admin")
    before = state(gate)
    posted = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1)})
    assert (posted.status_code, code_of(posted)) == (403, "links_not_allowed")
    assert state(gate) == before


def test_link_of_a_deactivated_user__is_refused_403(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    User.objects.filter(pk=people["alice"].pk).update(is_active=False)
    before = state(gate)
    page = open_link(http, path)
    assert (page.status_code, code_of(page)) == (403, "user_inactive")
    assert state(gate) == before


def test_link_to_a_decided_gate__is_refused_409_and_stays_unspent(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    page = http.get(path)
    csrf = CSRF.search(page.text)
    assert csrf is not None
    voter = policies.voter_for_user(people["bob"], channel=audit.DASHBOARD)
    approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="rejected", voter=voter)
    before = state(gate)
    posted = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1)})
    assert (posted.status_code, code_of(posted)) == (409, "gate_already_resolved")
    assert "already rejected by bob" in posted.text
    assert state(gate) == before


def test_link_of_an_approver_who_already_voted__is_refused_409(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy(quorum=2)
    gate = make_gate()
    voter = policies.voter_for_user(people["alice"], channel=audit.DASHBOARD)
    approvals.gate_decide(run_id=gate.run_id, gate_id=gate.id, decision="approved", voter=voter)
    before = state(gate)
    page = open_link(http, path_of(gate, people["alice"]))
    assert (page.status_code, code_of(page)) == (409, "already_voted")
    assert state(gate) == before


def test_comment_required__asks_again_then_decides(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy(require_comment=True)
    gate = make_gate()
    path = path_of(gate, people["alice"])
    page = http.get(path)
    assert "(required by the policy)" in page.text
    csrf = CSRF.search(page.text)
    assert csrf is not None
    before = state(gate)
    refused = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1), "comment": "  "})
    assert (refused.status_code, code_of(refused)) == (422, "comment_required")
    assert 'name="comment"' in refused.text  # the form again
    assert state(gate) == before
    decided = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1), "comment": "checked the invoice"})
    assert code_of(decided) == "decided"
    assert Gate.objects.get(id=gate.id).decision_payload == {"comment": "checked the invoice"}


def test_comment_too_long__is_refused_400(http: httpx.Client, people: dict[str, User]) -> None:
    make_policy()
    gate = make_gate()
    path = path_of(gate, people["alice"])
    csrf = CSRF.search(http.get(path).text)
    assert csrf is not None
    before = state(gate)
    posted = http.post(path, data={"csrfmiddlewaretoken": csrf.group(1), "comment": "x" * 2001})
    assert (posted.status_code, code_of(posted)) == (400, "invalid_request")
    assert state(gate) == before


def test_post_without_the_csrf_token__is_refused(http: httpx.Client, people: dict[str, User]) -> None:
    """A page elsewhere cannot make a recipient's browser decide: the POST needs the page's token."""
    make_policy()
    gate = make_gate()
    before = state(gate)
    posted = http.post(path_of(gate, people["alice"]), data={})
    assert posted.status_code == 403
    assert state(gate) == before


def test_reconciler_forgets_spent_nonces_once_they_have_expired(db: None) -> None:
    """A spent link is remembered until its signature would refuse it anyway, then pruned."""
    from tidebase_core.services.reconcile import reconcile_tick
    from tidebase_core.services.time import db_now

    now = db_now()
    UsedNonce.objects.create(key="link:old", expires_at=now - dt.timedelta(seconds=1))
    UsedNonce.objects.create(key="link:live", expires_at=now + dt.timedelta(hours=1))
    assert reconcile_tick()["used_nonces"] == 1
    assert list(UsedNonce.objects.values_list("key", flat=True)) == ["link:live"]
