"""The dashboard's pages stay on index scans with a realistic amount of data and real planner
statistics: 50k runs / 200k usage records seeded with ``tidebase_seed`` (then VACUUM ANALYZE), the
SQL of each page captured from a real request, and every statement EXPLAINed. The full-size check
(1M runs / 5M usage records, with render times) is scripts/dashboard_scale.py, run by ``make bench``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from dashboard.selectors.runs import encode_cursor
from scripts.dashboard_scale import explainable, label, scans

LARGE = {"tb_run", "tb_usage", "tb_gate", "tb_event", "tb_step", "tb_usage_run"}

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _plans(client: Client, url: str) -> list[tuple[str, list[dict[str, str]]]]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
        if response.streaming:  # the CSV export queries as it streams
            b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert response.status_code == 200, url
    out = []
    with connection.cursor() as cursor:
        for query in ctx.captured_queries:
            sql = explainable(query["sql"])
            if sql is None:
                continue
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
            doc: Any = cursor.fetchone()[0]  # type: ignore[index]
            found: list[dict[str, str]] = []
            scans((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"], found)
            out.append((sql, found))
    return out


def test_scale__pages_use_index_scans_on_the_large_tables(clients: dict[str, Client]) -> None:
    call_command(
        "tidebase_seed",
        runs=50_000,
        usage=200_000,
        gates=500,
        sample_runs=500,
        steps_per_run=4,
        force=True,
        verbosity=0,
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT created_at, id FROM tb_run ORDER BY created_at DESC, id DESC OFFSET 25000 LIMIT 1")
        middle = cursor.fetchone()
        cursor.execute("SELECT run_id FROM tb_event ORDER BY id DESC LIMIT 1")
        heavy = cursor.fetchone()
    assert middle
    assert heavy
    runs = reverse("dashboard:runs")
    pages = {
        "runs": runs,
        "runs by status": runs + "?status=failed",
        "runs deep keyset": runs + "?cursor=" + encode_cursor(*middle),
        "runs by status, deep": runs + "?status=completed&cursor=" + encode_cursor(*middle),
        "run page": reverse("dashboard:run", args=[heavy[0]]),
        "inbox": reverse("dashboard:inbox"),
        "usage (7 days)": reverse("dashboard:usage") + "?days=7",
        "usage (30 days)": reverse("dashboard:usage"),
        "usage (90 days)": reverse("dashboard:usage") + "?days=90",
        "usage CSV (90 days)": reverse("dashboard:usage") + "?days=90&format=csv",
    }
    client = clients["admin"]
    seen: dict[str, list[str]] = {}
    bad = []
    for name, url in pages.items():
        for sql, found in _plans(client, url):
            seen.setdefault(name, []).extend(label(s) for s in found)
            bad += [(name, label(s), sql[:300]) for s in found if s["node"] == "Seq Scan" and s["relation"] in LARGE]
    assert not bad, bad
    # and the indexes meant for each page are the ones used
    assert "Index Scan on tb_run using tb_run_created_idx" in seen["runs"]
    assert any("tb_run_status_idx" in s for s in seen["runs by status"])
    assert "Index Scan on tb_gate using tb_gate_decided_idx" in seen["inbox"]
    assert any("Index Scan on tb_gate using tb_gate_pending_idx" in s for s in seen["inbox"])
    for name in ("usage (7 days)", "usage (30 days)", "usage (90 days)", "usage CSV (90 days)"):
        # the usage page reads only the rollups, never the usage records themselves
        assert not any(" on tb_usage " in f"{s} " for s in seen[name]), (name, seen[name])
        assert any("tb_usage_daily" in s for s in seen[name]), (name, seen[name])
    for name in ("usage (7 days)", "usage (30 days)", "usage (90 days)"):
        # top runs: a walk of the cost index, not a sort of every run with usage
        assert any("on tb_usage_run using tb_usage_run_cost_idx" in s for s in seen[name]), (name, seen[name])


def test_scale__status_counts_are_capped_not_full_counts(clients: dict[str, Client]) -> None:
    call_command("tidebase_seed", runs=30_000, usage=1000, gates=10, sample_runs=10, force=True, verbosity=0)
    from dashboard.selectors.runs import RunFilters, status_counts

    counts, capped = status_counts(filters=RunFilters(), cap=1000)
    assert counts["completed"] == 1000
    assert "completed" in capped
    assert counts["pending"] < 1000
    assert "pending" not in capped
    page = clients["viewer"].get(reverse("dashboard:runs"))
    assert b"10,000+" in page.content or b"10000+" in page.content
