"""The operator dashboard at scale: plans and render times at 1M runs / 5M usage records.

Prints ONE JSON object on stdout (``make bench`` embeds it as its ``dashboard`` section); a short
summary goes to stderr. Exit status 1 if any page's SQL has a Seq Scan on a large table.

1. Database ``tidebase_scale`` next to ``DATABASE_URL`` (or the embedded Postgres): created and
   migrated if missing, seeded with ``manage.py tidebase_seed`` unless it already holds exactly
   ``--runs`` runs and ``--usage`` usage records (so only the first run pays the ~2-3 min seed).
2. For each page (runs list: first page, by status, a deep keyset page, by status deep; a run
   page; the inbox; the usage page, 7, 30 and 90 days, and its 90-day CSV export) as a logged-in
   superuser through Django's test Client (full middleware stack, in-process, no HTTP, streamed
   bodies read): one warm-up render, then ``--renders`` timed renders (p50/min/max; at least 3,
   fewer than asked once a page took 15 s), the SQL captured with CaptureQueriesContext, and
   every captured SELECT (also a parenthesized UNION, or a server-side cursor's query) re-run as
   ``EXPLAIN (FORMAT JSON)`` (the statements are client-side bound, so the text is exactly what
   ran). Every scan node is
   reported; a ``Seq Scan`` on tb_run, tb_usage, tb_event, tb_step, tb_gate or tb_usage_run
   (per-run usage totals, one row per run with usage) is a violation. The usage page reads only
   the rollups; tb_usage_daily has one row per UTC day x workflow x provider x model (a few
   thousand for the seeded 90 days), where a Seq Scan over a range covering much of it is the
   right plan, so it is reported but not a violation.
3. The budgets page, and the cost-figure reads on their own (``cost_figures`` in the report: the
   usage page's figures for 7, 30 and 90 days, the budgets page's reads, the run page's figures),
   timed and EXPLAINed the same way. Budgets for the burn-downs are set once if there are none; a
   database seeded before migration 0012 gets its cost figures computed once (a rollup rebuild).

python scripts/dashboard_scale.py [--runs 1000000] [--usage 5000000] [--renders 10] [--reseed]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
SCALE_DB = "tidebase_scale"
LARGE_TABLES = frozenset({"tb_run", "tb_usage", "tb_event", "tb_step", "tb_gate", "tb_usage_run"})
# Pages measured and reported whose Seq Scans are not violations (name -> why). None since the
# usage page reads rollups (90 days used to read every seeded usage record).
INFORMATIONAL: dict[str, str] = {}
SCAN_NODES = frozenset(
    {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan", "Function Scan"}
)


def log(message: str) -> None:
    print(f"[dashboard-scale] {message}", file=sys.stderr, flush=True)


def base_database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    sys.path.insert(0, str(ROOT))
    from config.embedded import embedded_database_url

    return embedded_database_url()


def manage(args: list[str], database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env.update(DATABASE_URL=database_url, TIDEBASE_RECONCILER="0")
    # the command's output goes to stderr: stdout carries only the JSON report
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, stdout=sys.stderr)


def prepare_database(base_url: str, runs: int, usage: int, reseed: bool) -> tuple[str, dict[str, Any]]:
    """Create/migrate ``tidebase_scale`` and seed it unless it already has the right counts."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [SCALE_DB]).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {SCALE_DB}")
    url = urlunparse(urlparse(base_url)._replace(path=f"/{SCALE_DB}"))
    t0 = time.monotonic()
    manage(["migrate", "--noinput", "-v", "0"], url)
    log(f"{SCALE_DB} migrated in {time.monotonic() - t0:.1f}s")
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT (SELECT count(*) FROM tb_run), (SELECT count(*) FROM tb_usage)").fetchone()
    info: dict[str, Any] = {"reused": True, "seed_s": None}
    if reseed or have is None or (int(have[0]), int(have[1])) != (runs, usage):
        log(f"seeding {runs:,} runs and {usage:,} usage records (had {have}) ...")
        t0 = time.monotonic()
        manage(["tidebase_seed", "--runs", str(runs), "--usage", str(usage), "--force", "-v", "0"], url)
        info = {"reused": False, "seed_s": round(time.monotonic() - t0, 1)}
        log(f"seeded in {info['seed_s']}s")
    with psycopg.connect(url, autocommit=True) as conn:
        have_figures = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM tb_cost_daily), EXISTS (SELECT 1 FROM tb_usage)"
        ).fetchone()
    if have_figures is not None and not have_figures[0] and have_figures[1]:
        # a database seeded before the cost figures (migration 0012): compute them once from its rows
        log("computing the cost figures (tidebase_usage_rollups rebuild) ...")
        t0 = time.monotonic()
        manage(["tidebase_usage_rollups", "rebuild"], url)
        info["figures_rebuild_s"] = round(time.monotonic() - t0, 1)
    with psycopg.connect(url, autocommit=True) as conn:
        info["rows"] = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in sorted(LARGE_TABLES | {"tb_usage_daily", "tb_cost_daily"})
        }
    return url, info


# ---- measurement (Django configured for the scale database) ------------------------------------


def scans(plan: dict[str, Any], out: list[dict[str, str]]) -> None:
    node = plan.get("Node Type", "")
    if node in SCAN_NODES:
        out.append(
            {
                "node": node,
                "relation": plan.get("Relation Name") or plan.get("Function Name") or "",
                "index": plan.get("Index Name", ""),
            }
        )
    for child in plan.get("Plans", []):
        scans(child, out)


def explain(sql: str) -> list[dict[str, str]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
        doc = cursor.fetchone()[0]
    plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    found: list[dict[str, str]] = []
    scans(plan, found)
    return found


# QuerySet.iterator() (the CSV export) runs its SELECT through a server-side cursor
_DECLARE = re.compile(r"^\s*DECLARE\s+\S+\s+.*?CURSOR\s+(?:WITH(?:OUT)?\s+HOLD\s+)?FOR\s+", re.IGNORECASE | re.DOTALL)


def explainable(sql: str) -> str | None:
    """The query to EXPLAIN for a captured statement: a SELECT (also a parenthesized UNION) or the
    query of a ``DECLARE ... CURSOR FOR``; None for anything else (SET, SAVEPOINT, writes)."""
    declared = _DECLARE.match(sql)
    if declared:
        sql = sql[declared.end() :]
    return sql if sql.lstrip().upper().startswith(("SELECT", "WITH", "(")) else None


def label(scan: dict[str, str]) -> str:
    text = f"{scan['node']} on {scan['relation']}" if scan["relation"] else scan["node"]
    return f"{text} using {scan['index']}" if scan["index"] else text


def fetch(client: Any, url: str) -> Any:
    """GET the page, reading a streamed body (the CSV export queries while it streams)."""
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    if response.streaming:
        b"".join(response.streaming_content)
    return response


def measure_page(client: Any, url: str, renders: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    fetch(client, url)  # warm-up: caches, connection, plans
    times: list[float] = []
    # up to `renders` renders, fewer (at least 3) once a slow page has taken 15 s
    while len(times) < renders and (len(times) < 3 or sum(times) < 15_000):
        t = time.perf_counter()
        fetch(client, url)
        times.append((time.perf_counter() - t) * 1000)
    with CaptureQueriesContext(connection) as ctx:
        fetch(client, url)
    statements = []
    violations = []
    found: dict[str, None] = {}
    for query in ctx.captured_queries:
        sql = explainable(query["sql"])
        if sql is None:
            continue
        plan_scans = explain(sql)
        for s in plan_scans:
            found[label(s)] = None
            if s["node"] == "Seq Scan" and s["relation"] in LARGE_TABLES:
                violations.append({"scan": label(s), "sql": sql[:400]})
        statements.append({"sql_ms": float(query["time"]) * 1000, "scans": [label(s) for s in plan_scans]})
    return {
        "url": url,
        "render_ms": {
            "p50": round(statistics.median(times), 1),
            "min": round(min(times), 1),
            "max": round(max(times), 1),
            "n": len(times),
        },
        "queries": len(ctx.captured_queries),
        "slowest_sql_ms": round(max((s["sql_ms"] for s in statements), default=0.0), 1),
        "scans": list(found),
        "seq_scans_on_large_tables": violations,
    }


def ensure_budgets() -> None:
    """Budgets for the burn-down figures and the budgets page (a day and a month budget of the
    busiest workflow, a global day budget), set once, as an admin sets them."""
    from decimal import Decimal

    from tidebase_core.models import BudgetLimit
    from tidebase_core.services.budgets import budget_set

    if BudgetLimit.objects.exists():
        return
    for scope, workflow, limit in (
        ("workflow_day", "triage", "150"),
        ("workflow_month", "triage", "4000"),
        ("global_day", None, "400"),
    ):
        budget_set(scope=scope, workflow=workflow, limit_usd=Decimal(limit), by="user:scale-admin", note="scale")


def measure(renders: int, only: set[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from dashboard.selectors.runs import encode_cursor

    user_model = get_user_model()
    admin, _ = user_model.objects.get_or_create(
        username="scale-admin", defaults={"is_superuser": True, "is_staff": True, "email": ""}
    )
    client = Client()
    client.force_login(admin)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM tb_run")
        total = int(cur.fetchone()[0])
        cur.execute(
            "SELECT created_at, id FROM tb_run ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1", [total // 2]
        )
        middle = cur.fetchone()
        cur.execute(
            "SELECT created_at, id FROM tb_run WHERE status = 'completed' ORDER BY created_at DESC, id DESC "
            "OFFSET %s LIMIT 1",
            [total // 3],
        )
        middle_completed = cur.fetchone()
        # the heaviest run page: the newest run with an event log (steps, events, usage, a gate)
        cur.execute("SELECT run_id FROM tb_event ORDER BY id DESC LIMIT 1")
        heavy = cur.fetchone()
    runs = reverse("dashboard:runs")
    pages = {
        "runs_first_page": runs,
        "runs_status_failed": runs + "?status=failed",
        "runs_deep_keyset": runs + ("?cursor=" + encode_cursor(*middle) if middle else ""),
        "runs_status_completed_deep_keyset": runs
        + ("?status=completed&cursor=" + encode_cursor(*middle_completed) if middle_completed else "?status=completed"),
        "run_page": reverse("dashboard:run", args=[heavy[0]]) if heavy else "",
        "inbox": reverse("dashboard:inbox"),
        "usage_7_days": reverse("dashboard:usage") + "?days=7",
        "usage_30_days": reverse("dashboard:usage"),
        "usage_90_days": reverse("dashboard:usage") + "?days=90",
        "usage_csv_90_days": reverse("dashboard:usage") + "?days=90&format=csv",
        "budgets": reverse("dashboard:budgets"),
    }
    ensure_budgets()
    results: dict[str, Any] = {}
    for name, url in pages.items():
        if not url or (only and name not in only):
            continue
        t = time.monotonic()
        results[name] = r = measure_page(client, url, renders)
        if name in INFORMATIONAL:
            r["informational"] = INFORMATIONAL[name]
        log(
            f"{name}: p50 {r['render_ms']['p50']} ms, {r['queries']} queries, "
            f"{len(r['seq_scans_on_large_tables'])} seq scans on large tables ({time.monotonic() - t:.1f}s)"
        )
    return results


def measure_cost_figures(renders: int) -> dict[str, Any]:
    """The cost-figure and budget reads on their own (tidebase_core.selectors.cost_figures and
    .budgets): p50 over ``renders`` calls after a warm-up, their SQL EXPLAINed like a page's. The
    run is the run page's (the newest with an event log)."""
    import datetime as dt

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from tidebase_core.selectors import budgets, cost_figures

    today = timezone.now().astimezone(dt.UTC).date()
    with connection.cursor() as cur:
        cur.execute("SELECT run_id FROM tb_event ORDER BY id DESC LIMIT 1")
        heavy = cur.fetchone()
    run_id = heavy[0] if heavy else None
    calls: dict[str, Any] = {
        f"usage_figures_{n}_days": (
            lambda n=n: cost_figures.usage_figures(
                first=today - dt.timedelta(days=n - 1), end=today + dt.timedelta(days=1), today=today
            )
        )
        for n in (7, 30, 90)
    }
    calls["budgets_page_reads"] = lambda: (budgets.current_budgets(), budgets.budget_history(), budgets.parked_runs())
    if run_id:
        calls["run_figures"] = lambda: cost_figures.run_figures(run_id=run_id)
    out: dict[str, Any] = {}
    for name, call in calls.items():
        call()
        times = []
        for _ in range(max(3, renders)):
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1000)
        with CaptureQueriesContext(connection) as ctx:
            call()
        found: dict[str, None] = {}
        violations = []
        for query in ctx.captured_queries:
            sql = explainable(query["sql"])
            for s in explain(sql) if sql else []:
                found[label(s)] = None
                if s["node"] == "Seq Scan" and s["relation"] in LARGE_TABLES:
                    violations.append({"scan": label(s), "sql": (sql or "")[:400]})
        out[name] = {
            "ms": {"p50": round(statistics.median(times), 1), "max": round(max(times), 1), "n": len(times)},
            "queries": len(ctx.captured_queries),
            "scans": list(found),
            "seq_scans_on_large_tables": violations,
        }
        log(f"cost figures {name}: p50 {out[name]['ms']['p50']} ms, {len(violations)} seq scans on large tables")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("TIDEBASE_SCALE_RUNS", 1_000_000)))
    parser.add_argument("--usage", type=int, default=int(os.environ.get("TIDEBASE_SCALE_USAGE", 5_000_000)))
    parser.add_argument("--renders", type=int, default=10)
    parser.add_argument("--reseed", action="store_true", help="seed again even if the counts match")
    parser.add_argument("--page", action="append", help="measure only these pages (repeatable)")
    args = parser.parse_args()
    started = time.monotonic()
    url, info = prepare_database(base_database_url(), args.runs, args.usage, args.reseed)
    os.environ["DATABASE_URL"] = url
    os.environ["TIDEBASE_RECONCILER"] = "0"
    pages = measure(args.renders, set(args.page) if args.page else None)
    figures = measure_cost_figures(args.renders)
    ok = all(not p["seq_scans_on_large_tables"] for p in pages.values() if "informational" not in p)
    ok = ok and all(not q["seq_scans_on_large_tables"] for q in figures.values())
    report = {
        "database": SCALE_DB,
        "seed": info,
        "method": (
            "django.test.Client GET as a superuser (full middleware, in-process); render_ms over "
            f"{args.renders} renders after one warm-up; every captured SELECT re-run as EXPLAIN (FORMAT JSON)"
        ),
        "index_scans_only": ok,
        "pages": pages,
        "cost_figures": figures,
        "duration_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    log(f"index scans only: {ok} (total {report['duration_s']}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
