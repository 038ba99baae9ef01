"""Mutations: POST only, CSRF always, the right permission (403 otherwise), and the decision
records the real user through the same service the API uses."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from dashboard import services
from tests.dashboard.conftest import client_for, make_run, make_user
from tidebase_core.models import ApiKey, Event, Gate, RecoveryAttempt, Run


def _mutations(run: Run, gate: Gate, key: ApiKey) -> list[tuple[str, str, dict[str, str]]]:
    """(url, permission codename, form data) for every mutation in the dashboard."""
    return [
        (reverse("dashboard:gate-decide", args=[gate.id]), "resolve_gate", {"decision": "approved"}),
        (reverse("dashboard:run-cancel", args=[run.id]), "cancel_run", {"reason": "x"}),
        (reverse("dashboard:run-recover", args=[run.id]), "recover_run", {}),
        (reverse("dashboard:webhook-redeliver", args=["channel", "dl_x"]), "redeliver_webhook", {}),
        (reverse("dashboard:key-create"), "manage_api_keys", {"name": "k2", "scope": "agent"}),
        (reverse("dashboard:key-revoke", args=[key.id]), "manage_api_keys", {}),
    ]


@pytest.fixture
def targets(users: object) -> tuple[Run, Gate, ApiKey]:
    run = make_run()
    gate = Gate.objects.get(run=run)
    key = services.api_key_create(name="k1", scope="agent").key
    return run, gate, key


def test_mutations__403_without_the_permission(clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]) -> None:
    run, gate, key = targets
    granted = {
        "viewer": set(),
        "approver": {"resolve_gate"},
        "nobody": set(),
    }
    for role, allowed in granted.items():
        for url, perm, data in _mutations(run, gate, key):
            if perm in allowed:
                continue
            response = clients[role].post(url, data)
            assert response.status_code == 403, (role, url)
            htmx = clients[role].post(url, data, headers={"HX-Request": "true"})
            assert htmx.status_code == 403, (role, url)
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == "pending"
    assert run.status == "running"
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
    assert not RecoveryAttempt.objects.filter(run=run, reason__startswith="manual:").exists()


def test_mutations__anonymous_is_sent_to_login(targets: tuple[Run, Gate, ApiKey]) -> None:
    for url, _, data in _mutations(*targets):
        response = Client().post(url, data)
        assert response.status_code == 302
        assert response["Location"].startswith("/dashboard/login/")


def test_mutations__refused_without_csrf(users: dict[str, object], targets: tuple[Run, Gate, ApiKey]) -> None:
    strict = client_for(users["admin"], csrf=True)  # type: ignore[arg-type]
    for url, _, data in _mutations(*targets):
        assert strict.post(url, data).status_code == 403, url
        assert strict.post(url, data, headers={"HX-Request": "true"}).status_code == 403, url
    assert Gate.objects.get(id=targets[1].id).status == "pending"


def test_mutations__accepted_with_the_csrf_header_htmx_sends(
    users: dict[str, object], targets: tuple[Run, Gate, ApiKey]
) -> None:
    strict = client_for(users["admin"], csrf=True)  # type: ignore[arg-type]
    page = strict.get(reverse("dashboard:inbox"))
    token = page.context["csrf_token"]
    assert f'"X-CSRFToken": "{token}"'.encode() in page.content  # hx-headers on <body>
    gate = targets[1]
    response = strict.post(
        reverse("dashboard:gate-decide", args=[gate.id]),
        {"decision": "approved"},
        headers={"HX-Request": "true", "X-CSRFToken": str(token)},
    )
    assert response.status_code == 200


def test_mutations__get_is_not_allowed(clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]) -> None:
    for url, _, _ in _mutations(*targets):
        assert clients["admin"].get(url).status_code == 405, url


def test_gate_decide__records_the_user_and_returns_the_updated_card(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]
) -> None:
    _, gate, _ = targets
    response = clients["approver"].post(
        reverse("dashboard:gate-decide", args=[gate.id]),
        {"decision": "rejected", "comment": "too risky", "payload": '{"retry": false}'},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert f'id="gate-{gate.id}"'.encode() in response.content
    assert b"<html" not in response.content
    assert b"by <strong>approver</strong>" in response.content
    assert "gate-decided" in response["HX-Trigger"]
    gate.refresh_from_db()
    assert (gate.status, gate.actor, gate.decided_by) == ("rejected", "approver", "user:approver")
    assert gate.decision_payload == {"retry": False, "comment": "too risky"}
    assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").exists()


def test_gate_decide__bad_payload_is_422_and_changes_nothing(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]
) -> None:
    _, gate, _ = targets
    url = reverse("dashboard:gate-decide", args=[gate.id])
    response = clients["approver"].post(
        url, {"decision": "approved", "payload": "{nope"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 422
    assert b"Not valid JSON" in response.content
    not_object = clients["approver"].post(
        url, {"decision": "approved", "payload": "[1]"}, headers={"HX-Request": "true"}
    )
    assert b"must be a JSON object" in not_object.content
    assert Gate.objects.get(id=gate.id).status == "pending"


@pytest.mark.parametrize("payload", ['{"note": "a\\u0000b"}', '{"\\u0000": 1}', '{"budget": 1e400}', '{"n": [NaN]}'])
def test_gate_decide__a_payload_postgres_cannot_store_is_422_not_a_500(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey], payload: str
) -> None:
    """Issue #12, item 8: a NUL character or a number beyond a double used to reach Postgres."""
    _, gate, _ = targets
    url = reverse("dashboard:gate-decide", args=[gate.id])

    response = clients["approver"].post(
        url, {"decision": "approved", "payload": payload}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 422
    assert b"The payload cannot be stored" in response.content
    assert Gate.objects.get(id=gate.id).status == "pending"


def test_gate_decide__second_decision_sees_already_decided_by(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]
) -> None:
    _, gate, _ = targets
    url = reverse("dashboard:gate-decide", args=[gate.id])
    assert clients["approver"].post(url, {"decision": "approved"}, headers={"HX-Request": "true"}).status_code == 200
    late = clients["admin"].post(url, {"decision": "rejected"}, headers={"HX-Request": "true"})
    assert late.status_code == 409
    assert b"Already decided by approver (approved)" in late.content
    plain = clients["admin"].post(url, {"decision": "rejected"}, follow=True)
    assert b"Already decided by approver" in plain.content
    assert Gate.objects.get(id=gate.id).status == "approved"


@pytest.mark.django_db(transaction=True)
def test_gate_decide__concurrent_approve_and_reject__exactly_one_wins() -> None:
    from dashboard.roles import ensure_roles

    ensure_roles()
    alice, bob = make_user("alice", "approver"), make_user("bob", "approver")
    for _ in range(5):
        gate = Gate.objects.get(run=make_run(extras=False))
        url = reverse("dashboard:gate-decide", args=[gate.id])
        barrier = threading.Barrier(2)
        results: dict[str, tuple[int, bytes]] = {}

        def decide(
            user: object, decision: str, url: str, barrier: threading.Barrier, results: dict[str, tuple[int, bytes]]
        ) -> None:
            client = client_for(user)  # type: ignore[arg-type]
            try:
                barrier.wait()
                r = client.post(url, {"decision": decision}, headers={"HX-Request": "true"})
                results[decision] = (r.status_code, r.content)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=decide, args=(alice, "approved", url, barrier, results)),
            threading.Thread(target=decide, args=(bob, "rejected", url, barrier, results)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = sorted(code for code, _ in results.values())
        assert codes == [200, 409], results
        gate.refresh_from_db()
        winner = "alice" if gate.status == "approved" else "bob"
        loser_body = results["rejected" if winner == "alice" else "approved"][1]
        assert f"Already decided by {winner}".encode() in loser_body
        assert gate.actor == winner
        assert gate.decided_by == f"user:{winner}"
        assert Event.objects.filter(run_id=gate.run_id, type="gate.resolved").count() == 1


def test_run_cancel__by_admin_records_the_user(clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]) -> None:
    run, _, _ = targets
    response = clients["admin"].post(
        reverse("dashboard:run-cancel", args=[run.id]), {"reason": "stuck"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert b"Run cancelled." in response.content
    run.refresh_from_db()
    assert (run.status, run.cancel_actor, run.cancel_reason) == ("cancelled", "user:admin", "stuck")
    # Cancelling twice is idempotent; recovering a completed run is refused clearly.
    assert clients["admin"].post(reverse("dashboard:run-cancel", args=[run.id])).status_code == 302


def test_run_cancel__completed_run_is_409_with_a_message(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]
) -> None:
    run, _, _ = targets
    Run.objects.filter(id=run.id).update(status="completed")
    response = clients["admin"].post(reverse("dashboard:run-cancel", args=[run.id]), headers={"HX-Request": "true"})
    assert response.status_code == 409
    assert b"Run already completed" in response.content


def test_run_recover__records_an_attempt(clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey]) -> None:
    run, _, _ = targets
    response = clients["admin"].post(reverse("dashboard:run-recover", args=[run.id]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert RecoveryAttempt.objects.filter(run=run, reason="manual: admin").count() == 1
    plain = make_run(extras=False)
    refused = clients["admin"].post(reverse("dashboard:run-recover", args=[plain.id]), headers={"HX-Request": "true"})
    assert refused.status_code == 422
    assert b"no recoveryWebhook" in refused.content


def test_api_keys__secret_shown_once_then_revoked(clients: dict[str, Client], users: object) -> None:
    from tidebase_core.auth import authenticate, hash_key, key_cache

    created = clients["admin"].post(reverse("dashboard:key-create"), {"name": "triage-bot", "scope": "operator"})
    assert created.status_code == 200
    secret = created.context["created"].secret
    assert secret.encode() in created.content
    key = ApiKey.objects.get(name="triage-bot")
    assert key.key_hash == hash_key(secret)
    assert key.scope == "operator"
    listing = clients["admin"].get(reverse("dashboard:keys"))
    assert secret.encode() not in listing.content
    principal = authenticate(secret)
    assert principal is not None
    assert principal.kind == "key"
    duplicate = clients["admin"].post(reverse("dashboard:key-create"), {"name": "triage-bot", "scope": "agent"})
    assert duplicate.status_code == 422
    assert b"already exists" in duplicate.content
    revoked = clients["admin"].post(reverse("dashboard:key-revoke", args=[key.id]))
    assert revoked.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert key_cache.lookup(secret) is None  # the cache was cleared: refused at once


def test_redeliver__hidden_and_501_while_the_webhooks_service_is_missing(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.views import webhooks as wh

    monkeypatch.setattr(wh, "redeliver_service", lambda: None)
    page = clients["admin"].get(reverse("dashboard:webhooks"))
    assert b"Redeliver</button>" not in page.content
    response = clients["admin"].post(reverse("dashboard:webhook-redeliver", args=["channel", "x"]))
    assert response.status_code == 501


def test_redeliver__calls_the_webhooks_service_with_the_user(
    clients: dict[str, Client], targets: tuple[Run, Gate, ApiKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.views import webhooks as wh
    from tidebase_core.models import ChannelDelivery

    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(wh, "redeliver_service", lambda: lambda kind, id, actor: calls.append((kind, id, actor)))
    dead = ChannelDelivery.objects.get(run=targets[0])
    page = clients["admin"].get(reverse("dashboard:webhooks") + "?status=failed")
    assert b"Redeliver</button>" in page.content
    response = clients["admin"].post(
        reverse("dashboard:webhook-redeliver", args=["channel", dead.id]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert calls == [("channel", dead.id, "user:admin")]
    assert b"Redelivery queued" in response.content
