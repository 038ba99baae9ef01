"""The number of SQL queries per page is fixed: more rows never mean more queries (no N+1).
Also: keyset pagination, filters, and the usage aggregations and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from dashboard.services import api_key_create
from tests.dashboard.conftest import make_run
from tidebase_core.models import Run, UsageRecord
from tidebase_core.services.usage import usage_rollups_rebuild

MAX_QUERIES = {
    # session + user + 2 permission lookups (cached for the request) + the page's own queries
    "inbox": 8,  # ... the pending gates' votes (prefetched) and the user's groups (may they decide?)
    "runs": 6,
    "run": 19,  # ... and two for the run's cost figures (tidebase_core.selectors.cost_figures)
    "usage": 10,  # two queries on the usage rollups, up to four for the cost figures
    "webhooks": 9,
    "keys": 5,
}


def _count(client: Client, url: str, **headers: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, headers=headers or None)
    assert response.status_code == 200, url
    return len(ctx.captured_queries)


def _pages(run: Run) -> dict[str, str]:
    return {
        "inbox": reverse("dashboard:inbox"),
        "runs": reverse("dashboard:runs"),
        "run": reverse("dashboard:run", args=[run.id]),
        "usage": reverse("dashboard:usage"),
        "webhooks": reverse("dashboard:webhooks"),
        "keys": reverse("dashboard:keys"),
    }


def test_queries__fixed_per_page_whatever_the_number_of_rows(clients: dict[str, Client]) -> None:
    client = clients["approver"]
    admin = clients["admin"]
    first = make_run(steps=2, usage=2)
    api_key_create(name="a", scope="agent")
    small = {name: _count(admin if name == "keys" else client, url) for name, url in _pages(first).items()}
    # Ten times more of everything: runs, gates, steps, usage, deliveries, keys.
    for _ in range(9):
        make_run(steps=6, usage=6)
    for i in range(5):
        api_key_create(name=f"k{i}", scope="agent")
    big_run = make_run(steps=20, usage=20)
    big = {name: _count(admin if name == "keys" else client, url) for name, url in _pages(big_run).items()}
    assert big == small
    for name, n in big.items():
        assert n <= MAX_QUERIES[name], (name, n)


@pytest.mark.parametrize(
    ("url_name", "target"),
    [
        ("dashboard:inbox", "inbox-rows"),
        ("dashboard:inbox", "history-rows"),
        ("dashboard:runs", "runs-results"),
        ("dashboard:webhooks", "webhook-rows"),
    ],
)
def test_queries__fragments_are_fixed_too(
    clients: dict[str, Client], url_name: str, target: str, django_assert_max_num_queries: Callable[..., object]
) -> None:
    make_run()
    small = _count(clients["viewer"], reverse(url_name), HX_Request="true", HX_Target=target)
    for _ in range(8):
        make_run(gate="approved")
        make_run()
    assert _count(clients["viewer"], reverse(url_name), HX_Request="true", HX_Target=target) == small
    most = 8 if target == "webhook-rows" else 7  # one query per outbox table (three), one for the attempts
    with django_assert_max_num_queries(most):  # type: ignore[operator]
        clients["viewer"].get(reverse(url_name), headers={"HX-Request": "true", "HX-Target": target})


def test_run_live_poll__unchanged_run_costs_one_query_after_auth(clients: dict[str, Client]) -> None:
    run = make_run()
    url = reverse("dashboard:run", args=[run.id]) + f"?seq={run.event_seq}&status=running"
    n = _count_raw(clients["viewer"], url)
    assert n <= 5  # session, user, 2 x permissions, the run row


def _count_raw(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, headers={"HX-Request": "true", "HX-Target": "run-live"})
    assert response.status_code == 204
    return len(ctx.captured_queries)


def test_runs__keyset_pages_cover_every_run_once(clients: dict[str, Client]) -> None:
    base = timezone.now()
    made = [
        make_run(gate=None, extras=False, usage=0, steps=0, created_at=base - dt.timedelta(minutes=i // 3))
        for i in range(120)
    ]
    seen: list[str] = []
    url = reverse("dashboard:runs")
    params: dict[str, str] = {}
    for _ in range(10):
        response = clients["viewer"].get(url, params)
        page = response.context["page"]
        seen += [r.id for r in page.runs]
        if not page.next_cursor:
            break
        params = {"cursor": page.next_cursor}
    assert len(seen) == len(set(seen)) == 120
    assert set(seen) == {r.id for r in made}
    created = list(Run.objects.filter(id__in=seen).values_list("created_at", "id"))
    order = {rid: (c, rid) for c, rid in created}
    assert [order[s] for s in seen] == sorted(order.values(), reverse=True)


def test_runs__filters_and_counts(clients: dict[str, Client]) -> None:
    a = make_run(workflow="alpha", status="running", queue="q1", extras=False)
    make_run(workflow="alpha", status="failed", extras=False)
    make_run(workflow="beta", status="completed", extras=False)
    old = make_run(
        workflow="alpha", status="completed", extras=False, created_at=timezone.now() - dt.timedelta(days=40)
    )
    url = reverse("dashboard:runs")
    ctx = clients["viewer"].get(url, {"workflow": "alpha"}).context
    assert {r.workflow_name for r in ctx["page"].runs} == {"alpha"}
    assert ctx["page"].counts["running"] == 1
    assert ctx["page"].counts["failed"] == 1
    assert [
        r.id for r in clients["viewer"].get(url, {"status": "running", "workflow": "alpha"}).context["page"].runs
    ] == [a.id]
    assert [r.id for r in clients["viewer"].get(url, {"queue": "q1"}).context["page"].runs] == [a.id]
    assert next(r.id for r in clients["viewer"].get(url, {"q": a.id[:12]}).context["page"].runs) == a.id
    since = (timezone.now() - dt.timedelta(days=1)).date().isoformat()
    recent = clients["viewer"].get(url, {"since": since}).context["page"].runs
    assert old.id not in {r.id for r in recent}
    until = (timezone.now() - dt.timedelta(days=39)).date().isoformat()
    assert [r.id for r in clients["viewer"].get(url, {"until": until}).context["page"].runs] == [old.id]


def test_usage__aggregates_and_csv_match(clients: dict[str, Client]) -> None:
    run_a = make_run(workflow="alpha", usage=0, extras=False)
    run_b = make_run(workflow="beta", usage=0, extras=False)
    yesterday = timezone.now() - dt.timedelta(days=1)
    for run, model, tokens, cost, when in [
        (run_a, "gpt-4o", 1000, "0.50", None),
        (run_a, "gpt-4o-mini", 500, "0.01", None),
        (run_b, "claude", 2000, "1.25", yesterday),
    ]:
        rec = UsageRecord.objects.create(
            run=run, provider="p", model=model, input_tokens=tokens, output_tokens=0, cost_usd=Decimal(cost)
        )
        if when:
            UsageRecord.objects.filter(id=rec.id).update(created_at=when)
    usage_rollups_rebuild()  # the records were written (and backdated) around usage_record
    response = clients["viewer"].get(reverse("dashboard:usage"), {"days": "7"})
    report = response.context["report"]
    assert report.total_cost == Decimal("1.76")
    assert report.total_tokens == 3500
    assert len(report.days) == 7
    assert {w["workflow"]: w["cost"] for w in report.by_workflow} == {"alpha": Decimal("0.51"), "beta": Decimal("1.25")}
    assert report.top_runs[0]["run_id"] == run_b.id
    series = response.context["series"]
    assert sum(series["cost"]) == pytest.approx(1.76)
    assert sum(sum(d["data"]) for d in series["tokensByModel"]) == 3500
    assert b'id="usage-series"' in response.content
    exported = clients["viewer"].get(reverse("dashboard:usage"), {"days": "7", "format": "csv"})
    assert exported["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))  # type: ignore[attr-defined]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("1.76")
    assert sum(int(r["total_tokens"]) for r in rows) == 3500
    assert {r["workflow"] for r in rows} == {"alpha", "beta"}
    custom = clients["viewer"].get(
        reverse("dashboard:usage"), {"since": yesterday.date().isoformat(), "until": yesterday.date().isoformat()}
    )
    assert custom.context["report"].total_cost == Decimal("1.25")


def test_usage__top_runs_rank_runs_with_usage_in_the_range_by_their_whole_cost(clients: dict[str, Client]) -> None:
    """Top runs: the runs with a usage record in the range, ranked by their total cost (all of
    their usage). By workflow: the cost in the range, and the runs whose first usage is in it."""
    old = make_run(workflow="alpha", usage=0, extras=False)
    spanning = make_run(workflow="beta", usage=0, extras=False)
    new = make_run(workflow="gamma", usage=0, extras=False)
    ten_days_ago = timezone.now() - dt.timedelta(days=10)
    for run, cost, when in [
        (old, "100", ten_days_ago),
        (spanning, "5", ten_days_ago),
        (spanning, "1", None),
        (new, "2", None),
    ]:
        rec = UsageRecord.objects.create(run=run, provider="p", model="m", cost_usd=Decimal(cost))
        if when:
            UsageRecord.objects.filter(id=rec.id).update(created_at=when)
    usage_rollups_rebuild()
    report = clients["viewer"].get(reverse("dashboard:usage"), {"days": "7"}).context["report"]
    assert [(r["run_id"], r["cost"]) for r in report.top_runs] == [(spanning.id, Decimal(6)), (new.id, Decimal(2))]
    assert {w["workflow"]: (w["cost"], w["runs"]) for w in report.by_workflow} == {
        "beta": (Decimal(1), 0),
        "gamma": (Decimal(2), 1),
    }
    assert report.total_cost == Decimal(3)
    month = clients["viewer"].get(reverse("dashboard:usage"), {"days": "30"}).context["report"]
    assert [r["run_id"] for r in month.top_runs] == [old.id, spanning.id, new.id]
    assert sum(w["runs"] for w in month.by_workflow) == 3
