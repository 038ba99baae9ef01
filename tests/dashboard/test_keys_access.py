"""The keys page says what the API asks of clients (``TIDEBASE_AUTH``), and warns before the first
key closes an open API (issue #12, item 2). Keys can be revoked, never deleted."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from dashboard.services import api_key_create
from tests.dashboard.conftest import client_for
from tidebase_core.models import ApiKey


@pytest.fixture(autouse=True)
def _auto(settings: Any) -> None:
    settings.TIDEBASE_API_KEY = None
    settings.TIDEBASE_AUTH = "auto"


def page(client: Client) -> str:
    response = client.get(reverse("dashboard:keys"))
    assert response.status_code == 200
    return response.content.decode()


def test_before_the_first_key__the_page_says_creating_it_closes_the_api(clients: dict[str, Client]) -> None:
    html = page(clients["admin"])

    assert "API access: open" in html
    assert 'id="first-key-warning"' in html
    assert "Creating the first key closes it" in html
    assert "stays closed even if you later revoke every key" in html
    assert 'data-confirm="This is the first API key' in html


def test_after_every_key_is_revoked__the_page_says_the_api_stays_closed(clients: dict[str, Client]) -> None:
    key = api_key_create(name="bot", scope="agent").key

    revoked = clients["admin"].post(reverse("dashboard:key-revoke", args=[key.id]), follow=True)
    html = revoked.content.decode()

    assert "No active key remains. The API stays closed" in html
    assert "API access: a key is required" in html
    assert "Revoking every key does not reopen the API" in html
    assert 'id="first-key-warning"' not in html
    assert 'data-confirm="This is the first API key' not in html


def test_with_the_env_key__the_first_app_key_changes_nothing(clients: dict[str, Client], settings: Any) -> None:
    settings.TIDEBASE_API_KEY = "secret"

    html = page(clients["admin"])

    assert "API access: a key is required" in html
    assert "<code>TIDEBASE_API_KEY</code> is set" in html
    assert 'id="first-key-warning"' not in html


@pytest.mark.parametrize(("mode", "text"), [("open", "TIDEBASE_AUTH=open</code> is set"), ("required", "required")])
def test_explicit_modes__are_shown(clients: dict[str, Client], settings: Any, mode: str, text: str) -> None:
    settings.TIDEBASE_AUTH = mode

    html = page(clients["admin"])

    assert text in html
    assert 'id="first-key-warning"' not in html


def test_the_django_admin_cannot_delete_a_key(db: None) -> None:
    """Deleting every key row would reopen an ``auto`` API: keys are revoked, never deleted."""
    key = api_key_create(name="bot", scope="agent").key
    admin = client_for(User.objects.create_superuser("root", "root@example.com", "pw-long-enough-1"))

    delete_page = admin.get(reverse("admin:tidebase_core_apikey_delete", args=[key.id]))
    deleted = admin.post(reverse("admin:tidebase_core_apikey_delete", args=[key.id]), {"post": "yes"})

    assert delete_page.status_code == deleted.status_code == 403
    assert ApiKey.objects.filter(id=key.id).exists()
