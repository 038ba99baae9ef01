"""Every page and fragment renders for each role; anonymous users are sent to the login page."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.dashboard.conftest import ROLES
from tidebase_core.models import Run

PAGES = ["dashboard:inbox", "dashboard:runs", "dashboard:usage", "dashboard:webhooks", "dashboard:queues"]


def _urls(run: Run) -> list[str]:
    return [*(reverse(p) for p in PAGES), reverse("dashboard:run", args=[run.id])]


@pytest.mark.parametrize("role", ROLES)
def test_pages__render_for_every_role(clients: dict[str, Client], seeded: list[Run], role: str) -> None:
    for url in _urls(seeded[0]):
        response = clients[role].get(url)
        assert response.status_code == 200, url
        assert b"Tidebase" in response.content


@pytest.mark.parametrize(
    ("url_name", "target", "marker"),
    [
        ("dashboard:inbox", "inbox-rows", b"Ship fix"),
        ("dashboard:inbox", "history-rows", b"<table"),
        ("dashboard:runs", "runs-results", b'id="runs-results"'),
        ("dashboard:webhooks", "webhook-rows", b"delivery-"),
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_fragments__render_without_the_page(
    clients: dict[str, Client], seeded: list[Run], role: str, url_name: str, target: str, marker: bytes
) -> None:
    if target == "history-rows":
        from tests.dashboard.conftest import make_run

        make_run(gate="approved")
    response = clients[role].get(reverse(url_name), headers={"HX-Request": "true", "HX-Target": target})
    assert response.status_code == 200
    assert marker in response.content
    assert b"<html" not in response.content


@pytest.mark.parametrize("role", ROLES)
def test_run_live_fragment__renders_then_204_when_unchanged(
    clients: dict[str, Client], seeded: list[Run], role: str
) -> None:
    run = seeded[0]
    url = reverse("dashboard:run", args=[run.id])
    hx = {"HX-Request": "true", "HX-Target": "run-live"}
    changed = clients[role].get(url, {"seq": "0", "status": "running"}, headers=hx)
    assert changed.status_code == 200
    assert b'id="run-live"' in changed.content
    assert b"<html" not in changed.content
    same = clients[role].get(url, {"seq": str(run.event_seq), "status": run.status}, headers=hx)
    assert same.status_code == 204


def test_run_live__terminal_run_stops_polling(clients: dict[str, Client], seeded: list[Run]) -> None:
    run = seeded[0]
    Run.objects.filter(id=run.id).update(status="completed")
    url = reverse("dashboard:run", args=[run.id])
    hx = {"HX-Request": "true", "HX-Target": "run-live"}
    final = clients["viewer"].get(url, {"seq": "0", "status": "running"}, headers=hx)
    assert final.status_code == 286
    assert b"every 2s" not in final.content  # the swapped-in region no longer polls
    again = clients["viewer"].get(url, {"seq": str(run.event_seq), "status": "completed"}, headers=hx)
    assert again.status_code == 286


def test_api_keys_page__admin_only(clients: dict[str, Client]) -> None:
    assert clients["admin"].get(reverse("dashboard:keys")).status_code == 200
    assert clients["approver"].get(reverse("dashboard:keys")).status_code == 403
    assert clients["viewer"].get(reverse("dashboard:keys")).status_code == 403


def test_user_without_view_permission__gets_403(clients: dict[str, Client], seeded: list[Run]) -> None:
    for url in _urls(seeded[0]):
        assert clients["nobody"].get(url).status_code == 403, url


def test_anonymous__redirected_to_login(seeded: list[Run]) -> None:
    client = Client()
    for url in _urls(seeded[0]):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/dashboard/login/?next=")
    hx = client.get(reverse("dashboard:inbox"), headers={"HX-Request": "true", "HX-Target": "inbox-rows"})
    assert hx["HX-Redirect"] == "/dashboard/login/"


def test_root__redirects_to_dashboard(db: None) -> None:
    assert Client().get("/")["Location"] == "/dashboard/"


def test_login_logout_and_password_change(users: dict[str, object]) -> None:
    from tests.dashboard.conftest import PASSWORD

    client = Client(enforce_csrf_checks=False)
    page = client.get(reverse("dashboard:login"))
    assert page.status_code == 200
    assert b'name="password"' in page.content
    bad = client.post(reverse("dashboard:login"), {"username": "viewer", "password": "nope"})
    assert bad.status_code == 200
    assert b"alert-error" in bad.content
    ok = client.post(reverse("dashboard:login"), {"username": "viewer", "password": PASSWORD})
    assert ok.status_code == 302
    assert ok["Location"] == "/dashboard/"
    assert client.get(reverse("dashboard:password")).status_code == 200
    changed = client.post(
        reverse("dashboard:password"),
        {"old_password": PASSWORD, "new_password1": "another-long-pass-42", "new_password2": "another-long-pass-42"},
    )
    assert changed.status_code == 302
    assert client.get(changed["Location"]).status_code == 200
    assert client.post(reverse("dashboard:logout")).status_code == 302
    assert client.get(reverse("dashboard:inbox")).status_code == 302


def test_empty_states__say_what_to_do(clients: dict[str, Client]) -> None:
    assert b"Nothing is waiting for you" in clients["viewer"].get(reverse("dashboard:inbox")).content
    assert b"No runs yet" in clients["viewer"].get(reverse("dashboard:runs")).content
    assert b"No usage in this range" in clients["viewer"].get(reverse("dashboard:usage")).content
    assert b"No deliveries" in clients["viewer"].get(reverse("dashboard:webhooks")).content
    assert b"No API keys" in clients["admin"].get(reverse("dashboard:keys")).content


def test_static_files__vendored_libraries_are_served(clients: dict[str, Client]) -> None:
    from django.contrib.staticfiles import finders

    assert finders.find("vendor/htmx/htmx.min.js")
    assert finders.find("vendor/chartjs/chart.umd.min.js")
    page = clients["viewer"].get(reverse("dashboard:usage")).content
    assert b"vendor/htmx/htmx.min.js" in page
    assert b"vendor/chartjs/chart.umd.min.js" in page
    # Nothing is loaded from another host (a bare "cdn" search would match random nonces and ids).
    assert re.findall(rb"""(?:src|href)=["']?(?:https?:)?//""", page) == []


def test_queues_page__shows_depth_caps_failures_and_schedules(
    clients: dict[str, Client], django_assert_max_num_queries: object
) -> None:
    from tidebase_core.services import queues, schedules

    queues.queue_configure(name="emails", concurrency=3, rate_per_minute=60)
    for _ in range(2):
        queues.enqueue(queue="emails", workflow_name="send")
    failed, _ = queues.enqueue(queue="emails", workflow_name="send")
    Run.objects.filter(id=failed.id).update(status="failed")
    schedules.schedule_set(name="nightly", cron="0 3 * * *", workflow_name="report", queue="emails")
    page = clients["viewer"].get(reverse("dashboard:queues"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "emails" in body
    assert "at most 3 running" in body
    assert "60 claims / minute" in body
    assert failed.id[:12] in body or "send" in body
    assert "nightly" in body
    assert "0 3 * * *" in body
    fragment = clients["viewer"].get(
        reverse("dashboard:queues"), headers={"HX-Request": "true", "HX-Target": "queue-rows"}
    )
    assert b"<html" not in fragment.content
    assert b"emails" in fragment.content


def test_queues_page__empty_states_say_what_to_do(clients: dict[str, Client]) -> None:
    body = clients["viewer"].get(reverse("dashboard:queues")).content
    assert b"No queues yet" in body
    assert b"No schedules" in body
