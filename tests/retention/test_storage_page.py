"""The dashboard's Storage page: admins only, what each workflow takes, what the policy would
delete, and editing the policy rows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboard.roles import ensure_roles
from retention.models import RetentionPolicy
from tests.dashboard.conftest import client_for, make_user
from tests.retention.conftest import make_run
from tidebase_core.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/dashboard/storage/"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people() -> dict[str, User]:
    ensure_roles()  # a flush removed the migration's groups
    return {role: make_user(role, role) for role in ("viewer", "approver", "admin")}


@pytest.fixture
def admin(people: dict[str, User]) -> Client:
    return client_for(people["admin"])


def test_storage__admins_see_rows_per_workflow_and_what_the_policy_would_delete(admin: Client, retain: Any) -> None:
    retain(completed_days=3)
    make_run("report", days=5, steps_n=3)
    make_run("report", days=5, steps_n=3)
    make_run("digest", days=1, steps_n=1)
    make_run("digest", status="running", days=10)

    response = admin.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert 'href="/dashboard/storage/"' in page  # the nav link
    table = page[page.index('id="storage-by-workflow"') :]
    report_row = re.search(r'<td class="mono">report</td>(.*?)</tr>', table, re.S)
    assert report_row is not None
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", report_row.group(1), re.S)]
    events = Event.objects.filter(run__workflow_name="report").count()
    assert cells[:5] == ["2", "6", str(events), "2", "2"]  # runs, steps, events, usage, state versions
    assert cells[-1] == "2"  # both report runs are old enough
    counts = re.findall(r'data-testid="delete-count">\s*(.*?)\s*</td>', page, re.S)
    assert re.sub(r"<[^>]+>", "", counts[0]).split()[0] == "2"  # completed runs
    assert "off" in counts[1]  # failed: no retention


def test_storage__refused_to_everyone_but_admins(people: dict[str, User]) -> None:
    for role in ("viewer", "approver"):
        client = client_for(people[role])
        assert client.get(URL).status_code == 403
        assert client.post("/dashboard/storage/policies", {"workflow": "*", "completed_days": "1"}).status_code == 403
        assert 'href="/dashboard/storage/"' not in client.get("/dashboard/runs/").content.decode()
    anonymous = Client().get(URL)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/dashboard/login/")
    assert not RetentionPolicy.objects.exists()


def test_storage__admins_set_change_and_remove_a_policy(admin: Client, retain: Any) -> None:
    retain()
    doomed = make_run("report-a", days=5)

    saved = admin.post("/dashboard/storage/policies", {"workflow": " report-* ", "completed_days": "3"})

    assert saved.status_code == 302
    row = RetentionPolicy.objects.get()
    assert (row.workflow, row.completed_days, row.failed_days, row.updated_by) == ("report-*", 3, None, "user:admin")
    page = admin.get(URL).content.decode()
    assert 'id="policy-rows"' in page
    assert "report-*" in page[page.index('id="storage-by-workflow"') :]  # the rule that applies to report-a
    edit = admin.get(f"{URL}?edit={row.id}").content.decode()
    assert 'value="report-*"' in edit

    admin.post("/dashboard/storage/policies", {"workflow": "report-*", "completed_days": "0"})
    assert RetentionPolicy.objects.get().completed_days == 0

    removed = admin.post(f"/dashboard/storage/policies/{row.id}/delete")
    assert removed.status_code == 302
    assert not RetentionPolicy.objects.exists()
    assert admin.post(f"/dashboard/storage/policies/{row.id}/delete").status_code == 404
    assert doomed  # nothing was pruned by saving: the next pass does it


def test_storage__a_rollup_retention_not_above_the_raw_usage_one_is_refused(admin: Client, retain: Any) -> None:
    retain(usage_days=30)

    response = admin.post("/dashboard/storage/policies", {"workflow": "*", "rollup_days": "30"})

    assert response.status_code == 422
    assert "rollups must be kept longer than raw usage rows" in response.content.decode()
    assert not RetentionPolicy.objects.exists()
    bad = admin.post("/dashboard/storage/policies", {"workflow": "x", "completed_days": "-1"})
    assert bad.status_code == 422
    assert not RetentionPolicy.objects.exists()


def test_storage__nothing_inline_for_the_content_security_policy(admin: Client, retain: Any) -> None:
    retain(completed_days=1)
    make_run("report", days=3)

    response = admin.get(URL)

    assert "script-src 'self'" in response["Content-Security-Policy"]
    page = response.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)
    assert " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)
