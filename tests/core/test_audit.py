"""The tamper-evident audit trail (services.audit), against real Postgres and a live server: every
decision path appends exactly one entry with its actor and channel, in the decision's
transaction; concurrent decisions (threads with their own connections) form one unbroken chain;
changing, removing or reordering an entry is detected and the first broken entry named; the
command exports CSV and JSONL whose hashes recompute offline."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from tests.api.test_auth import ENV, app_key, gated_run
from tests.conftest import start_live_server
from tests.core.test_budgets import begin, paid_step, resolve, started
from tests.core.test_probes import in_threads
from tidebase_core.models import AuditEntry, Gate
from tidebase_core.services import audit, budgets, gates, runs
from tidebase_core.services.time import db_now

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])


@pytest.fixture(scope="module")
def server(test_database_url: str) -> Iterator[str]:
    live = start_live_server(test_database_url, TIDEBASE_API_KEY="secret")
    yield live.url
    live.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def entries() -> list[AuditEntry]:
    return list(AuditEntry.objects.order_by("seq"))


def who(e: AuditEntry) -> tuple[Any, ...]:
    return (e.kind, e.actor, e.channel, e.run_id, e.gate_id)


def gated(name: str = "approve", workflow: str = "audit", **extra: Any) -> Gate:
    run = runs.run_create(workflow_name=workflow)
    runs.run_begin(run_id=run.id, owner="w1")
    gate, _ = gates.gate_begin(run_id=run.id, name=name, prompt="ok?", **extra)
    return gate


# ---- each decision path appends one entry -------------------------------------------------------


def test_api_key_and_token_decisions_are_recorded_with_their_channel(http: httpx.Client) -> None:
    by_env = gated_run(http)
    assert http.post(by_env.resolve, json={"decision": "approved"}, headers=ENV).status_code == 200
    ops = app_key("ops", "operator")
    by_key = gated_run(http)
    body = {"decision": "rejected", "actor": "carol", "payload": {"why": "no"}}
    assert http.post(by_key.resolve, json=body, headers=ops).status_code == 200
    by_token = gated_run(http)
    assert http.post(by_token.resolve, json={"decision": "approved", "token": by_token.token}).status_code == 200
    # a losing second decision changes nothing and records nothing
    assert http.post(by_token.resolve, json={"decision": "rejected"}, headers=ENV).status_code == 409

    got = entries()
    assert [who(e) for e in got] == [
        ("decision", "api-key:env", "api_key", by_env.run, by_env.gate),
        ("decision", "carol", "api_key", by_key.run, by_key.gate),
        ("decision", "token:resolve-token", "token", by_token.run, by_token.gate),
    ]
    assert got[1].data == {"gate": "approve", "decision": "rejected", "decidedBy": "key:ops", "payload": {"why": "no"}}
    assert audit.audit_verify().ok


def test_timeouts_are_recorded_as_expiries_by_the_reconciler() -> None:
    due = gated(timeout_ms=60_000)
    Gate.objects.filter(id=due.id).update(timeout_at=db_now() - dt.timedelta(seconds=1))
    not_due = gated(name="later", timeout_ms=3_600_000)
    assert gates.gate_expire_due() == 1
    polled = gated(name="polled", timeout_ms=60_000)
    Gate.objects.filter(id=polled.id).update(timeout_at=db_now() - dt.timedelta(seconds=1))
    polled.refresh_from_db()
    assert gates.gate_expire_if_due(gate=polled, now=db_now())
    assert [who(e) for e in entries()] == [
        ("expiry", "timeout", "system", due.run_id, due.id),
        ("expiry", "timeout", "system", polled.run_id, polled.id),
    ]
    assert not AuditEntry.objects.filter(gate_id=not_due.id).exists()


def test_budget_changes_are_policy_changes_and_lifting_a_budget_gate_is_a_decision() -> None:
    run = started(workflow="spendy")
    budgets.budget_set(scope="workflow_day", workflow="spendy", limit_usd=Decimal("0.50"), by="user:admin", note="x")
    paid_step(run.id, "a", "0.60")
    parked = begin(run.id, "b")
    assert parked.parked is not None
    gate = parked.parked.gate
    budgets.budget_set(scope="workflow_day", workflow="spendy", limit_usd=Decimal("5"), by="user:admin")
    gate.refresh_from_db()
    assert gate.status == "approved"
    budgets.run_budget_set(run_id=run.id, budget_usd=Decimal("2"), by="user:admin")

    got = entries()
    assert [(e.kind, e.actor, e.channel, e.policy_version) for e in got] == [
        ("policy_change", "user:admin", "dashboard", "budget:workflow_day:spendy:v1"),
        ("policy_change", "user:admin", "dashboard", "budget:workflow_day:spendy:v2"),
        ("decision", "user:admin", "dashboard", None),
        ("policy_change", "user:admin", "dashboard", None),
    ]
    assert got[0].data == {
        "policy": "budget",
        "scope": "workflow_day",
        "workflow": "spendy",
        "limitUsd": 0.5,
        "version": 1,
        "note": "x",
    }
    assert got[2].gate_id == gate.id
    assert got[3].run_id == run.id
    assert got[3].data == {"policy": "budget", "scope": "run", "fromUsd": None, "toUsd": 2}


def test_a_rejected_budget_gate_is_one_decision() -> None:
    run = started(budget="0.10")
    paid_step(run.id, "a", "0.20")
    parked = begin(run.id, "b")
    assert parked.parked is not None
    resolve(parked.parked.gate, "rejected")
    assert [who(e) for e in entries()] == [("decision", "alice", "dashboard", run.id, parked.parked.gate.id)]


# ---- the entry belongs to the decision's transaction --------------------------------------------


def _trigger(table: str, when: str) -> None:
    with connection.cursor() as cur:
        cur.execute(
            """CREATE OR REPLACE FUNCTION tb_test_audit_fail() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'refused by test'; END $$"""
        )
        cur.execute(
            f"CREATE {when} tb_test_audit_fail AFTER INSERT OR UPDATE ON {table} {_deferred(when)} "
            "FOR EACH ROW EXECUTE FUNCTION tb_test_audit_fail()"
        )


def _deferred(when: str) -> str:
    return "DEFERRABLE INITIALLY DEFERRED" if "CONSTRAINT" in when else ""


def _drop(table: str) -> None:
    with connection.cursor() as cur:
        cur.execute(f"DROP TRIGGER IF EXISTS tb_test_audit_fail ON {table}")


def test_a_decision_rolled_back_at_commit_leaves_no_entry() -> None:
    gate = gated()
    _trigger("tb_gate", "CONSTRAINT TRIGGER")  # fails at COMMIT: after the entry was appended
    try:
        with pytest.raises(Exception, match="refused by test"):
            resolve(gate, "approved")
    finally:
        _drop("tb_gate")
    gate.refresh_from_db()
    assert gate.status == "pending"
    assert entries() == []
    resolve(gate, "approved")  # the chain goes on from where it was
    assert [(e.seq, e.prev_hash) for e in entries()] == [(1, audit.GENESIS)]
    assert audit.audit_verify().ok


def test_a_decision_whose_entry_fails_does_not_commit() -> None:
    gate = gated()
    _trigger("tb_audit", "TRIGGER")
    try:
        with pytest.raises(Exception, match="refused by test"):
            resolve(gate, "approved")
    finally:
        _drop("tb_audit")
    gate.refresh_from_db()
    assert gate.status == "pending"


def test_appending_outside_a_transaction_is_refused() -> None:
    with pytest.raises(RuntimeError):
        audit.audit_append(kind="decision", actor="a", channel="system")


# ---- concurrency --------------------------------------------------------------------------------


def test_concurrent_decisions_form_one_unbroken_chain() -> None:
    n = 8
    for _ in range(3):
        opened = [gated(workflow=f"audit-{i}") for i in range(n)]  # no shared row serializes them
        results = in_threads(n, lambda i, opened=opened: resolve(opened[i], "approved" if i % 2 else "rejected"))
        assert not [r for r in results if isinstance(r, Exception)], results
    got = entries()
    assert [e.seq for e in got] == list(range(1, 3 * n + 1))
    assert len({e.prev_hash for e in got}) == len(got)  # no two entries chain to the same one
    verdict = audit.audit_verify()
    assert (verdict.ok, verdict.checked) == (True, 3 * n), verdict.message


# ---- tampering ----------------------------------------------------------------------------------


def _five() -> None:
    for i in range(1, 6):
        with transaction.atomic():
            audit.audit_append(kind="decision", actor=f"u{i}", channel="api_key", data={"n": i, "x": [1.5, "é"]})


def _sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params or [])


def _broken() -> tuple[int | None, str]:
    verdict = audit.audit_verify()
    assert not verdict.ok
    return verdict.broken_seq, verdict.reason


def test_an_intact_chain_verifies_and_the_command_says_so() -> None:
    _five()
    out = io.StringIO()
    call_command("tidebase_audit", "verify", stdout=out)
    assert "intact: 5 entries" in out.getvalue()


def test_a_changed_entry_is_named() -> None:
    _five()
    _sql("UPDATE tb_audit SET data = '{\"n\": 99}' WHERE seq = 3")
    assert _broken() == (3, "hash mismatch: the entry was changed")
    with pytest.raises(CommandError, match="broken at entry 3: hash mismatch") as exc:
        call_command("tidebase_audit", "verify")
    assert exc.value.returncode == 1


def test_a_changed_actor_with_its_hash_recomputed_breaks_the_next_link() -> None:
    _five()
    forged = {**audit.export_record(AuditEntry.objects.get(seq=2)), "actor": "mallory"}
    _sql("UPDATE tb_audit SET actor = 'mallory', hash = %s WHERE seq = 2", [audit.entry_hash(forged)])
    assert _broken() == (3, "prev mismatch: prev_hash is not the previous entry's hash")


def test_a_removed_entry_is_named() -> None:
    _five()
    _sql("DELETE FROM tb_audit WHERE seq = 2")
    seq, reason = _broken()
    assert seq == 2
    assert reason.startswith("entry missing")


def test_removing_the_newest_entries_is_detected_against_the_head() -> None:
    _five()
    _sql("DELETE FROM tb_audit WHERE seq >= 4")
    seq, reason = _broken()
    assert seq == 4
    assert "head is at entry 5" in reason


def test_reordered_entries_are_named() -> None:
    _five()
    _sql("UPDATE tb_audit SET seq = -seq WHERE seq IN (2, 3)")
    _sql("UPDATE tb_audit SET seq = CASE WHEN seq = -2 THEN 3 ELSE 2 END WHERE seq IN (-2, -3)")
    assert _broken() == (2, "prev mismatch: prev_hash is not the previous entry's hash")


# ---- export -------------------------------------------------------------------------------------


def _check_chain(records: list[dict[str, Any]]) -> None:
    prev = audit.GENESIS
    for r in records:
        assert r["prev_hash"] == prev
        assert audit.entry_hash(r) == r["hash"]
        prev = r["hash"]


def test_exports_round_trip_and_recompute_offline() -> None:
    _five()
    with transaction.atomic():
        audit.audit_append(kind="policy_change", actor="=cmd|' /C calc'!A0", channel="dashboard", policy_version=7)
    stored = [audit.export_record(e) for e in entries()]

    out = io.StringIO()
    call_command("tidebase_audit", "export", "--format", "jsonl", stdout=out)
    jsonl = [json.loads(line) for line in out.getvalue().splitlines()]
    assert jsonl == stored
    _check_chain(jsonl)

    out = io.StringIO()
    call_command("tidebase_audit", "export", "--format", "csv", stdout=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[5]["actor"].startswith("'=")  # a spreadsheet shows it as text
    parsed = [audit.record_from_csv(r) for r in rows]
    assert parsed == stored
    _check_chain(parsed)


def test_export_since_and_until_select_by_time() -> None:
    _five()
    at = {e.seq: e.at for e in entries()}
    out = io.StringIO()
    since, until = at[2].isoformat(), at[4].isoformat()
    call_command("tidebase_audit", "export", "--format", "jsonl", "--since", since, "--until", until, stdout=out)
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [2, 3]
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    out = io.StringIO()
    call_command("tidebase_audit", "export", "--format", "csv", "--since", tomorrow, stdout=out)
    assert out.getvalue().splitlines() == [",".join(audit.FIELDS)]
