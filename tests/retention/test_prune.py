"""The pruner against real Postgres: what it deletes and keeps, per-workflow overrides, the usage
rollups, bounded batches, two pruners at once, and API writes while a batch holds its locks."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from retention import conf, services
from retention.models import RetentionPolicy
from retention.policy import Policy
from retention.services import prune, usage_pruned_through, would_delete
from tests.conftest import database_url_for
from tests.core.test_probes import in_threads
from tests.retention.conftest import age, db_now, exists, make_run, rows_of
from tidebase_core.exceptions import RunNotFound
from tidebase_core.models import (
    ChannelDelivery,
    RecoveryAttempt,
    Run,
    StateVersion,
    UsageDaily,
    UsageRecord,
    UsageRunTotal,
)
from tidebase_core.services import runs, state, usage
from webhooks.models import DeliveryAttempt

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core", "retention", "webhooks"])


def sql(statement: str, params: list[Any] | None = None) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params)


def gone(ids: list[str]) -> set[str]:
    return {i for i in ids if not exists(i)}


def empty(counts: dict[str, int]) -> bool:
    return not any(counts.values())


# --- what goes and what stays -------------------------------------------------------------------


def test_prune__deletes_old_finished_runs_with_everything_they_own_and_nothing_else(retain: Any) -> None:
    retain(completed_days=3, failed_days=10)
    old_done = make_run(status="completed", days=5)
    new_done = make_run(status="completed", days=1)
    failed_recent = make_run(status="failed", days=5)  # failed runs are kept 10 days
    failed_old = make_run(status="failed", days=12)
    cancelled_old = make_run(status="cancelled", days=50)  # no retention for cancelled runs
    running_old = make_run(status="running", days=50)
    gated = make_run(status="completed", days=5, gate=True)  # its gate is still pending
    leased = make_run(status="completed", days=5)
    sql("UPDATE tb_run SET lease_owner = 'w', lease_expires_at = now() + interval '1 hour' WHERE id = %s", [leased])
    parent = make_run(status="running")
    child, _, _ = runs.child_create(parent_run_id=parent, name="sub", workflow_name="report")  # stays pending
    runs.run_complete(run_id=parent, result=None)
    age(parent, 5)
    everyone = [old_done, new_done, failed_recent, failed_old, cancelled_old, running_old, gated, leased, parent]
    before = {run_id: rows_of(run_id) for run_id in everyone}

    report = prune()

    assert gone([*everyone, child.id]) == {old_done, failed_old}
    assert empty(rows_of(old_done))
    assert empty(rows_of(failed_old))
    for kept in set(everyone) - {old_done, failed_old}:
        assert rows_of(kept) == before[kept], kept
    assert report.deleted["tb_run"] == 2
    assert report.deleted["tb_step"] == 4
    assert not report.incomplete


def test_prune__a_run_with_a_finished_child_goes_and_takes_its_edge(retain: Any) -> None:
    retain(completed_days=3)
    parent = make_run(status="running")
    child, _, _ = runs.child_create(parent_run_id=parent, name="sub", workflow_name="report")
    runs.run_begin(run_id=child.id, owner="w2")
    runs.run_complete(run_id=child.id, result=1)
    runs.run_complete(run_id=parent, result=2)
    age(parent, 5)

    prune()

    assert gone([parent, child.id]) == {parent}  # the child finished recently: kept, without its edge
    assert not Run.objects.get(id=child.id).parent_edges.exists()


@pytest.mark.parametrize("parent_status", ["running", "failed"])
def test_prune__a_finished_child_of_a_parent_that_may_still_run_stays_with_its_edge(
    retain: Any, parent_status: str
) -> None:
    retain(completed_days=3)  # failed runs are kept forever: a failed parent is resumable
    parent = make_run(status="running")
    child, _, _ = runs.child_create(parent_run_id=parent, name="sub", workflow_name="report")
    runs.run_begin(run_id=child.id, owner="w2")
    runs.run_complete(run_id=child.id, result=1)
    age(child.id, 5)
    if parent_status == "failed":
        runs.run_fail(run_id=parent, error={"message": "boom"})
    before = rows_of(child.id)

    prune()

    assert gone([parent, child.id]) == set()
    assert rows_of(child.id) == before
    # The parent's replay finds the child it made, instead of starting a second one.
    again, _, created = runs.child_create(parent_run_id=parent, name="sub", workflow_name="report")
    assert (again.id, created) == (child.id, False)

    runs.run_begin(run_id=parent, owner="worker-1")  # resumed (failed) or still its own lease (running)
    runs.run_complete(run_id=parent, result=2)  # finished for good: the child may go now
    prune()
    assert gone([parent, child.id]) == {child.id}


def test_prune__a_pass_past_its_deadline_leaves_the_rest_for_the_next(retain: Any) -> None:
    retain(completed_days=1, usage_days=1, rollup_days=400)
    doomed = make_run(days=5)

    report = prune(deadline=time.monotonic())

    assert exists(doomed)
    assert report.incomplete == ["completed", "usage", "rollups"]
    assert prune().incomplete == []
    assert not exists(doomed)


def test_prune__nothing_is_deleted_until_a_retention_is_set(retain: Any) -> None:
    retain()
    ids = [make_run(status=s, days=400) for s in ("completed", "failed", "cancelled")]

    report = prune()

    assert gone(ids) == set()
    assert report.batches == 0
    assert all(c.rows is None for c in would_delete().values())


def test_prune__the_most_specific_workflow_override_wins(retain: Any) -> None:
    retain(completed_days=30)
    RetentionPolicy.objects.create(workflow="report-*", completed_days=2)
    RetentionPolicy.objects.create(workflow="report-keep", completed_days=0)  # 0: keep forever
    RetentionPolicy.objects.create(workflow="*", failed_days=5)
    pattern_hit = make_run("report-a", days=3)
    exact_keep = make_run("report-keep", days=40)
    env_young = make_run("digest", days=3)
    env_old = make_run("digest", days=40)
    star_failed = make_run("digest", status="failed", days=6)
    pattern_failed = make_run("report-a", status="failed", days=6)  # "report-*" sets no failed days: "*" applies

    prune()

    assert gone([pattern_hit, exact_keep, env_young, env_old, star_failed, pattern_failed]) == {
        pattern_hit,
        env_old,
        star_failed,
        pattern_failed,
    }
    effective = Policy.load().effective("report-keep")
    assert (effective.values["completed_days"], effective.sources["completed_days"]) == (None, "policy report-keep")
    assert Policy.load().effective("report-b").sources["failed_days"] == "policy *"


def test_prune__like_wildcards_in_a_workflow_name_are_literal(retain: Any) -> None:
    retain()
    RetentionPolicy.objects.create(workflow="a_b%*", completed_days=1)
    literal = make_run("a_b%x", days=3)
    lookalike = make_run("aXbYx", days=3)  # would match if _ and % were wildcards

    prune()

    assert gone([literal, lookalike]) == {literal}


# --- usage and its rollups ----------------------------------------------------------------------


def usage_page_figures(now: dt.datetime) -> Any:
    from dashboard.selectors.usage import usage_report

    return repr(usage_report(since=now - dt.timedelta(days=90), until=now + dt.timedelta(days=1)))


def rollups() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    daily = list(UsageDaily.objects.order_by("day", "workflow", "model").values())
    for row in daily:
        row.pop("id")
    totals = list(UsageRunTotal.objects.order_by("run_id").values())
    return daily, totals


def test_prune_usage__raw_records_go_and_the_rollups_and_the_usage_page_stay_the_same(retain: Any) -> None:
    retain(usage_days=10, rollup_days=400)
    old = make_run("report", days=20, usage_n=3)
    live = make_run("report", status="running", days=20, usage_n=2)  # not finished: its records stay
    recent = make_run("report", days=2, usage_n=2)
    now = db_now()
    before, page_before = rollups(), usage_page_figures(now)
    last_at = UsageRunTotal.objects.get(run_id=old).last_at

    report = prune()

    assert report.deleted["tb_usage"] == 3
    assert UsageRecord.objects.filter(run_id=old).count() == 0
    assert UsageRecord.objects.filter(run_id__in=[live, recent]).count() == 4
    assert exists(old)
    assert rollups() == before
    assert usage_page_figures(now) == page_before
    assert usage_pruned_through() == last_at

    # The rollups are now the only copy of that usage: a rebuild over it is refused, a rebuild
    # of the days after it (recomputed from the records that remain) changes nothing.
    with pytest.raises(CommandError, match="pruned by retention"):
        call_command("tidebase_usage_rollups", "rebuild", stdout=io.StringIO())
    first_kept = last_at.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    with pytest.raises(CommandError):
        call_command("tidebase_usage_rollups", "rebuild", "--since", str(first_kept - dt.timedelta(days=1)))
    call_command("tidebase_usage_rollups", "rebuild", "--since", str(first_kept), stdout=io.StringIO())
    out = io.StringIO()
    call_command("tidebase_usage_rollups", "check", stdout=out)
    assert f"checking from {first_kept}" in out.getvalue()
    assert rollups() == before


def test_prune_runs__the_daily_ledger_keeps_the_usage_of_deleted_runs(retain: Any) -> None:
    retain(completed_days=3)
    old = make_run("report", days=5, usage_n=2)
    daily_before = rollups()[0]
    last_at = UsageRunTotal.objects.get(run_id=old).last_at

    prune()

    assert not exists(old)
    assert rollups()[0] == daily_before
    assert not UsageRunTotal.objects.filter(run_id=old).exists()  # the per-run total goes with its run
    assert usage_pruned_through() == last_at  # its records went with it: a rebuild must not drop them
    with pytest.raises(CommandError, match="pruned by retention"):
        call_command("tidebase_usage_rollups", "rebuild", stdout=io.StringIO())


def test_prune_rollups__old_days_go_the_current_month_and_workflows_keeping_raw_rows_longer_stay(
    retain: Any,
) -> None:
    retain(usage_days=10, rollup_days=40)
    RetentionPolicy.objects.create(workflow="audit", usage_days=200)  # rollups 40 <= raw 200: kept
    make_run("report", days=100)
    make_run("audit", days=100)
    make_run("report", status="running")  # usage today
    days = {(r.workflow, r.day) for r in UsageDaily.objects.all()}
    today = db_now().astimezone(dt.UTC).date()
    old_day = today - dt.timedelta(days=100)

    prune(categories=("rollups",))

    left = {(r.workflow, r.day) for r in UsageDaily.objects.all()}
    assert days - left == {("report", old_day)}
    assert ("audit", old_day) in left
    assert ("report", today) in left


def test_prune_rollups__never_touch_the_current_month(retain: Any) -> None:
    retain(usage_days=1, rollup_days=2)
    today = dt.date(2026, 3, 6)  # the rollups' clock; the rows below are on fixed past days
    run_id = make_run("report", status="running", usage_n=0)
    for day in (dt.date(2026, 3, 1), dt.date(2026, 2, 27)):
        usage.usage_record(
            run_id=run_id,
            model="m",
            input_tokens=1,
            cost_usd=Decimal(1),
            at=dt.datetime.combine(day, dt.time(12), dt.UTC),
        )

    prune(categories=("rollups",), today=today)

    assert sorted(UsageDaily.objects.values_list("day", flat=True)) == [dt.date(2026, 3, 1)]


def test_env_policy__rollups_must_outlive_raw_usage() -> None:
    with pytest.raises(ValueError, match="longer than raw usage"):
        conf.env_policy({"TIDEBASE_RETAIN_USAGE_DAYS": "30", "TIDEBASE_RETAIN_ROLLUP_DAYS": "30"})
    with pytest.raises(ValueError, match="raw usage rows are pruned too"):
        conf.env_policy({"TIDEBASE_RETAIN_ROLLUP_DAYS": "30"})
    with pytest.raises(ValueError, match="whole number"):
        conf.env_policy({"TIDEBASE_RETAIN_COMPLETED_DAYS": "3.5"})
    assert conf.env_policy({"TIDEBASE_RETAIN_COMPLETED_DAYS": "0"})["completed_days"] is None


# --- state versions and deliveries -------------------------------------------------------------


def test_prune_state__keeps_the_newest_versions_the_current_one_and_labelled_ones(retain: Any) -> None:
    retain(state_versions=3)
    run_id = make_run(status="running", state_n=5)
    state.state_save(run_id=run_id, label="milestone")  # version 6, labelled
    for i in range(5):
        state.state_write(run_id=run_id, value={"later": i}, merge=False)  # versions 7..11

    prune(categories=("state",))

    left = sorted(StateVersion.objects.filter(run_id=run_id).values_list("version", flat=True))
    assert left == [6, 9, 10, 11]


def test_prune_state__with_days_too_a_version_goes_only_when_old_and_beyond_the_newest(retain: Any) -> None:
    retain(state_versions=2, state_days=30)
    young = make_run("young", status="running", state_n=6)
    old = make_run("old", status="running", state_n=6)
    sql("UPDATE tb_state_version SET created_at = now() - interval '40 days' WHERE run_id = %s", [old])

    prune(categories=("state",))

    assert StateVersion.objects.filter(run_id=young).count() == 6
    assert sorted(StateVersion.objects.filter(run_id=old).values_list("version", flat=True)) == [5, 6]


def test_prune_state__with_days_alone_the_current_version_stays(retain: Any) -> None:
    retain(state_days=30)
    run_id = make_run(status="completed", state_n=4, days=40)  # every version is 40 days old

    prune(categories=("state",))

    assert list(StateVersion.objects.filter(run_id=run_id).values_list("version", flat=True)) == [4]


def test_prune_deliveries__finished_old_deliveries_go_with_their_attempts(retain: Any) -> None:
    retain(delivery_days=30)
    run = runs.run_create(
        workflow_name="report",
        channels=[{"url": "https://hooks.example/x"}],
        recovery_webhook="https://hooks.example/r",
    )
    runs.run_begin(run_id=run.id, owner="w")
    runs.run_complete(run_id=run.id, result=1)  # a run.completed delivery to the channel
    runs.run_recover(run_id=run.id)
    old = ChannelDelivery.objects.get(run_id=run.id)
    ChannelDelivery.objects.filter(id=old.id).update(status="delivered", completed_at=db_now() - dt.timedelta(days=40))
    recent = ChannelDelivery.objects.create(
        run_id=run.id, url="https://hooks.example/x", event_type="e", status="delivered", completed_at=db_now()
    )
    pending = ChannelDelivery.objects.create(run_id=run.id, url="https://hooks.example/x", event_type="e")
    recovery = RecoveryAttempt.objects.get(run_id=run.id)
    RecoveryAttempt.objects.filter(id=recovery.id).update(
        status="failed", completed_at=db_now() - dt.timedelta(days=31)
    )
    for kind, delivery_id in (("channel", old.id), ("channel", recent.id), ("recovery", recovery.id)):
        DeliveryAttempt.objects.create(
            kind=kind, delivery_id=delivery_id, number=1, url="https://hooks.example/x", started_at=db_now()
        )

    report = prune()

    assert set(ChannelDelivery.objects.values_list("id", flat=True)) == {recent.id, pending.id}
    assert not RecoveryAttempt.objects.exists()
    assert list(DeliveryAttempt.objects.values_list("delivery_id", flat=True)) == [recent.id]
    assert report.deleted["tb_delivery_attempt"] == 2
    assert exists(run.id)


# --- bounded batches ----------------------------------------------------------------------------


TABLES = (
    "tb_run",
    "tb_step",
    "tb_event",
    "tb_usage",
    "tb_usage_run",
    "tb_run_state",
    "tb_state_stream",
    "tb_state_version",
)


def table_counts() -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(" UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES))
        return {name: int(n) for name, n in cur.fetchall()}


def watch_transactions(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """From now on, the rows each pruning transaction deletes per table, read by the database
    just before it commits: the change of each table's count since the previous transaction
    committed (nothing else writes meanwhile)."""
    seen: list[dict[str, int]] = []
    last = table_counts()

    def record(category: str) -> None:
        nonlocal last
        now = table_counts()
        seen.append({t: last[t] - now[t] for t in TABLES if last[t] != now[t]})
        last = now

    monkeypatch.setattr(services, "before_commit", record)
    return seen


def test_prune__every_transaction_deletes_at_most_a_batch_of_rows_per_table(
    retain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    retain(completed_days=1)
    small = [make_run(days=5, steps_n=0, usage_n=0, state_n=0) for _ in range(9)]  # 3 events each
    big = make_run(days=5, steps_n=12, usage_n=3, state_n=4)  # about 36 events, 12 steps
    per_transaction = watch_transactions(monkeypatch)

    report = prune(batch_size=10)

    assert gone([*small, big]) == {*small, big}
    busy = [t for t in per_transaction if t]
    assert len(busy) >= 9 // 2 + 4
    assert max(n for t in busy for n in t.values()) <= 10
    assert any(t.get("tb_run", 0) >= 2 for t in busy)  # small runs share a transaction
    assert report.deleted["tb_event"] == sum(t.get("tb_event", 0) for t in busy)


def test_prune__a_failed_run_heavier_than_a_batch_goes_whole_so_a_begin_never_resumes_it_half_emptied(
    retain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    retain(failed_days=1)
    big = make_run(status="failed", days=5, steps_n=12, usage_n=3, state_n=4)
    before = rows_of(big)
    armed: list[bool] = []
    begins: list[Any] = []

    def begin() -> None:  # a resume that reaches the run right after the transaction commits
        try:
            begins.append(runs.run_begin(run_id=big, owner="resumer")[0].status)
        except RunNotFound as exc:
            begins.append(exc)

    def between_transactions(category: str) -> None:
        if not armed and rows_of(big) != before:  # the first transaction that deletes rows of the run
            armed.append(True)
            transaction.on_commit(begin)

    monkeypatch.setattr(services, "before_commit", between_transactions)

    report = prune(batch_size=10)

    assert len(begins) == 1
    assert isinstance(begins[0], RunNotFound)  # the first transaction that deleted any of it deleted it all
    assert not exists(big)
    assert empty(rows_of(big))
    assert report.deleted["tb_run"] == 1
    assert not report.incomplete


# --- concurrency ---------------------------------------------------------------------------------


def test_prune__two_pruners_at_once_delete_each_row_once(retain: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    retain(completed_days=1, usage_days=1, rollup_days=400)
    ids = [make_run(days=5, steps_n=1, usage_n=1, state_n=1) for _ in range(24)]
    assert UsageRecord.objects.count() == 24
    # Each pruner's first batch waits for the other's, holding its locks: both are inside a
    # batch at the same time, over the same candidates.
    barrier = threading.Barrier(2, timeout=60)
    met: set[int] = set()

    def meet(category: str) -> None:
        me = threading.get_ident()
        if me not in met:
            met.add(me)
            barrier.wait()

    monkeypatch.setattr(services, "before_commit", meet)

    results = in_threads(2, lambda i: prune(batch_size=8))

    assert [r for r in results if isinstance(r, Exception)] == []
    assert [r.incomplete for r in results] == [[], []]  # neither waited on the other's locks until it gave up
    assert sum(r.deleted["tb_run"] for r in results) == 24
    assert sum(r.deleted["tb_step"] for r in results) == 24
    assert gone(ids) == set(ids)
    assert not UsageRecord.objects.exists()


def test_prune__api_writes_to_a_live_run_do_not_wait_for_a_batch(
    retain: Any, live_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    retain(completed_days=1, usage_days=1, rollup_days=400, state_versions=1, delivery_days=1)
    old = [make_run("report", days=5) for _ in range(3)]
    holding, release = threading.Event(), threading.Event()

    def park(category: str) -> None:
        if not holding.is_set():
            holding.set()
            assert release.wait(120)

    monkeypatch.setattr(services, "before_commit", park)
    outcome: list[Any] = []

    def pruner() -> None:
        try:
            outcome.append(prune())
        except Exception as exc:  # reported below
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=pruner)
    thread.start()
    try:
        assert holding.wait(60)  # a batch has locked old runs and deleted their rows, uncommitted
        with httpx.Client(base_url=live_server_url, timeout=60) as api:
            run_id = api.post("/runs/report", json={"input": {"live": True}}).json()["run"]["id"]
            owner = api.post(f"/runs/{run_id}/begin").json()["leaseOwner"]
            step = api.post(f"/runs/{run_id}/steps/begin", json={"name": "s", "inputHash": "h", "leaseOwner": owner})
            done = api.post(
                f"/runs/{run_id}/steps/{step.json()['step']['id']}/complete", json={"leaseOwner": owner, "output": 1}
            )
            put = api.put(f"/runs/{run_id}/state", json={"value": {"k": 1}})
            spent = api.post(f"/runs/{run_id}/usage", json={"model": "m", "inputTokens": 10, "costUsd": 0.01})
            detail = api.get(f"/runs/{run_id}")
        # every write was answered while the batch still held its locks: none waited for it
        assert [r.status_code for r in (step, done, put, spent, detail)] == [200] * 5
        assert not release.is_set()
        assert thread.is_alive()
    finally:
        release.set()
        thread.join(120)
    assert not thread.is_alive()
    assert not isinstance(outcome[0], Exception), outcome
    assert gone(old) == set(old)
    assert detail.json()["run"]["status"] == "running"


# --- the command and the beat task ---------------------------------------------------------------


def test_tidebase_prune__dry_run_counts_and_deletes_nothing(retain: Any) -> None:
    retain(completed_days=1)
    doomed = [make_run(days=5), make_run(days=5)]
    young = make_run(days=0)
    out = io.StringIO()

    call_command("tidebase_prune", "--dry-run", stdout=out)

    assert "completed: would delete 2 (with " in out.getvalue()
    assert "nothing deleted" in out.getvalue()
    assert gone([*doomed, young]) == set()

    call_command("tidebase_prune", "--batch-size", "1", stdout=io.StringIO())

    assert gone([*doomed, young]) == set(doomed)
    with pytest.raises(CommandError, match="positive"):
        call_command("tidebase_prune", "--batch-size", "0")


def test_tidebase_prune__says_when_retention_is_off(retain: Any) -> None:
    retain()
    out = io.StringIO()
    call_command("tidebase_prune", stdout=out)
    assert "retention is off" in out.getvalue()


def test_beat__schedules_the_pass_and_one_pass_runs_at_a_time(retain: Any, settings: Any) -> None:
    from config.celery import celery_settings
    from retention.tasks import retention

    assert celery_settings()["beat_schedule"]["tidebase-retention"]["task"] == "tidebase.retention"
    settings.TIDEBASE_RETENTION_INTERVAL_S = 0
    assert "tidebase-retention" not in celery_settings()["beat_schedule"]

    retain(completed_days=1)
    doomed = make_run(days=5)
    with psycopg.connect(database_url_for(connection.settings_dict), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [services.RETENTION_LOCK])
        assert retention() == {"retention": "busy"}
        assert exists(doomed)
        # Released here, not by closing: a closed session's locks go when its backend exits, later.
        other.execute("SELECT pg_advisory_unlock(%s)", [services.RETENTION_LOCK])
    result = retention()
    assert result["deleted"]["tb_run"] == 1
    assert not exists(doomed)
