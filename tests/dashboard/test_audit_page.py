"""The Audit page: admins only; a decision from the inbox and a budget change from the Budgets page
are recorded with the user and the dashboard channel; Verify (POST, CSRF) says whether the chain
holds and names the first broken entry; the export links stream CSV and JSONL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from tests.dashboard.conftest import client_for, make_run
from tidebase_core.models import AuditEntry, Gate
from tidebase_core.services import audit

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/dashboard/audit/"


def _decide_and_set_a_budget(clients: dict[str, Client]) -> Gate:
    run = make_run(extras=False)
    gate = Gate.objects.get(run=run)
    response = clients["approver"].post(reverse("dashboard:gate-decide", args=[gate.id]), {"decision": "approved"})
    assert response.status_code == 302
    form = {"scope": "workflow_day", "workflow": "triage", "limit_usd": "12.5", "note": "launch"}
    assert clients["admin"].post(reverse("dashboard:budget-set"), form).status_code == 302
    return gate


def test_the_page_is_for_admins_only(clients: dict[str, Client]) -> None:
    urls = [PAGE, reverse("dashboard:audit-export", args=["csv"]), reverse("dashboard:audit-export", args=["jsonl"])]
    for name in ("viewer", "approver", "nobody"):
        for url in urls:
            assert clients[name].get(url).status_code == 403, (name, url)
        assert clients[name].post(reverse("dashboard:audit-verify")).status_code == 403, name
    assert 'href="/dashboard/audit/"' not in clients["viewer"].get("/dashboard/").content.decode()
    assert clients["admin"].get(PAGE).status_code == 200
    assert 'href="/dashboard/audit/"' in clients["admin"].get("/dashboard/").content.decode()
    assert Client().get(PAGE).status_code == 302  # anonymous: the login page


def test_dashboard_decisions_and_changes_are_listed(clients: dict[str, Client]) -> None:
    gate = _decide_and_set_a_budget(clients)
    got = list(AuditEntry.objects.order_by("seq"))
    assert [(e.kind, e.actor, e.channel, e.gate_id) for e in got] == [
        ("decision", "approver", "dashboard", gate.id),
        ("policy_change", "user:admin", "dashboard", None),
    ]
    body = clients["admin"].get(PAGE).content.decode()
    assert f"{gate.name}: approved" in body
    assert "budget:workflow_day:triage:v1" in body
    assert got[1].hash[:12] in body


def test_verify_says_intact_then_names_the_first_broken_entry(users: dict[str, User]) -> None:
    admin = client_for(users["admin"], csrf=True)
    assert admin.post(reverse("dashboard:audit-verify")).status_code == 403  # no CSRF token
    _decide_and_set_a_budget({"approver": client_for(users["approver"]), "admin": client_for(users["admin"])})
    page = admin.get(PAGE)
    token = page.cookies["csrftoken"].value
    body = admin.post(reverse("dashboard:audit-verify"), {"csrfmiddlewaretoken": token}).content.decode()
    assert "audit chain intact: 2 entries" in body
    with connection.cursor() as cur:
        cur.execute("UPDATE tb_audit SET actor = 'someone-else' WHERE seq = 1")
    body = admin.post(reverse("dashboard:audit-verify"), {"csrfmiddlewaretoken": token}).content.decode()
    assert "audit chain broken at entry 1: hash mismatch" in body


def test_export_links_stream_csv_and_jsonl(clients: dict[str, Client]) -> None:
    _decide_and_set_a_budget(clients)
    stored = [audit.export_record(e) for e in AuditEntry.objects.order_by("seq")]
    response = clients["admin"].get(reverse("dashboard:audit-export", args=["jsonl"]))
    assert response.streaming
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = b"".join(response.streaming_content).decode().splitlines()  # type: ignore[arg-type]
    assert [json.loads(line) for line in lines] == stored
    response = clients["admin"].get(reverse("dashboard:audit-export", args=["csv"]))
    assert response["Content-Disposition"].startswith('attachment; filename="tidebase-audit-')
    text = b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    assert [audit.record_from_csv(r) for r in csv.DictReader(io.StringIO(text))] == stored
    assert clients["admin"].get(reverse("dashboard:audit-export", args=["xml"])).status_code == 404
