"""Get-or-create-then-lock paths under real concurrency (issue #12, item 4): threads with their
own Postgres connections, released together on a barrier, racing to create the row they then
lock or update; and, over HTTP against live servers, the loser of a first-write race and a lock
wait that times out. Each probe fails if its path loses a write, raises, or double-creates.

The audit (docs/decisions.md, "Get-or-create under concurrency") lists every such path."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from dashboard.services import api_key_create
from tests.conftest import lock_waiters, start_live_server
from tests.core.test_probes import in_threads
from tests.live import wait_for
from tidebase_core.exceptions import Conflict
from tidebase_core.models import ApiKey, QueueConfig, Run, RunState, Schedule, StateStream, StateVersion, UsageRecord
from tidebase_core.models.usage import UsageDaily, UsageRunTotal
from tidebase_core.services import queues, runs, schedules, state, usage

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

THREADS = 16


def errors(results: list[Any]) -> list[Exception]:
    return [r for r in results if isinstance(r, Exception)]


# --- live state (tb_run_state) ------------------------------------------------------------------


def test_state_write__16_writers_x_5_patches_on_a_run_without_state_keep_all_80_keys() -> None:
    run = runs.run_create(workflow_name="probe")

    def writer(i: int) -> None:
        for k in range(5):
            state.state_write(run_id=run.id, value={f"w{i}-{k}": k}, merge=True)

    assert errors(in_threads(THREADS, writer)) == []

    live = RunState.objects.get(run_id=run.id)
    assert sorted(live.value) == sorted(f"w{i}-{k}" for i in range(THREADS) for k in range(5))
    assert live.version == THREADS * 5
    versions = list(StateVersion.objects.filter(run_id=run.id, stream__name="run").order_by("version"))
    assert [v.version for v in versions] == list(range(1, THREADS * 5 + 1))
    # each version is the one before it plus its patch: no writer replaced another's merge
    assert versions[0].value == versions[0].patch
    for before, after in itertools.pairwise(versions):
        assert after.value == {**before.value, **after.patch}
    assert versions[-1].value == live.value


def test_state_write__16_first_puts_race_to_one_row_and_16_versions() -> None:
    run = runs.run_create(workflow_name="probe")

    assert errors(in_threads(THREADS, lambda i: state.state_write(run_id=run.id, value={"i": i}, merge=False))) == []

    live = RunState.objects.get(run_id=run.id)
    versions = list(StateVersion.objects.filter(run_id=run.id).order_by("version"))
    assert [v.version for v in versions] == list(range(1, THREADS + 1))
    assert live.version == THREADS
    assert live.value == versions[-1].value  # the last writer's value, whole


def db_waiting_on_lock(table: str) -> bool:
    """Whether some session of the test database is waiting for a lock in a statement on ``table``."""
    return lock_waiters(table) > 0


def until_not_busy(send: Callable[[], httpx.Response], seen: list[httpx.Response] | None = None) -> httpx.Response:
    """Send, and send again after ``Retry-After`` while the server answers 503 (a liveness bound
    only: a loaded machine may trip a short timeout more than once)."""
    deadline = time.monotonic() + 300
    while True:
        response = send()
        if seen is not None:
            seen.append(response)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("retry-after", "1")))


def create_run(client: httpx.Client) -> str:
    response = client.post("/runs/probe", json={})
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run"]["id"]
    return run_id


def test_patch_state__the_loser_of_the_first_write_race_merges_into_the_winner(
    api: httpx.Client, live_server_url: str, test_database_url: str
) -> None:
    """The order driven explicitly: a first write is inserted but not committed; a PATCH arrives
    and waits on it; the first write commits; the PATCH must merge into it, not replace it."""
    run_id = create_run(api)
    with psycopg.connect(test_database_url) as first, ThreadPoolExecutor(1) as pool:
        first.execute(
            "INSERT INTO tb_run_state (run_id, value, version, updated_at) VALUES (%s, '{\"a\": 1}', 1, now())",
            [run_id],
        )
        patch = pool.submit(httpx.patch, f"{live_server_url}/runs/{run_id}/state", json={"value": {"b": 2}}, timeout=30)
        wait_for(lambda: patch.done() or db_waiting_on_lock("tb_run_state"))
        first.commit()
        response = patch.result()

    assert response.status_code == 200, response.text
    assert (response.json()["state"]["value"], response.json()["state"]["version"]) == ({"a": 1, "b": 2}, 2)
    [version] = api.get(f"/runs/{run_id}/state/versions").json()["stateVersions"]
    assert (version["value"], version["patch"]) == ({"a": 1, "b": 2}, {"b": 2})


@pytest.fixture(params=["lock_timeout", "statement_timeout"])
def short_wait_server(request: pytest.FixtureRequest, test_database_url: str) -> Iterator[tuple[str, str]]:
    """A live server whose lock timeout, or statement timeout, is 200 ms: a held lock trips it."""
    setting = {"lock_timeout": "TIDEBASE_LOCK_TIMEOUT_MS", "statement_timeout": "TIDEBASE_STATEMENT_TIMEOUT_MS"}
    server = start_live_server(test_database_url, **{setting[request.param]: "200"})
    yield server.url, request.param
    server.stop()


def test_patch_state__a_lock_wait_that_times_out_is_a_503_with_retry_guidance_then_the_retry_merges(
    short_wait_server: tuple[str, str], test_database_url: str
) -> None:
    url, code = short_wait_server
    run = runs.run_create(workflow_name="probe")
    state.state_write(run_id=run.id, value={"a": 1}, merge=False)
    with httpx.Client(base_url=url, timeout=30) as client:
        with psycopg.connect(test_database_url) as holder:  # a long writer holds the state row
            holder.execute("SELECT 1 FROM tb_run_state WHERE run_id = %s FOR UPDATE", [run.id])
            busy = client.patch(f"/runs/{run.id}/state", json={"value": {"b": 2}})
            holder.rollback()
        # retried as told (a loaded machine may trip the short timeout again)
        retried = until_not_busy(lambda: client.patch(f"/runs/{run.id}/state", json={"value": {"b": 2}}))

    assert busy.status_code == 503, busy.text
    assert busy.json()["code"] == code
    assert busy.json()["error"]
    assert busy.headers["retry-after"] == "1"
    assert retried.status_code == 200, retried.text
    assert (retried.json()["state"]["value"], retried.json()["state"]["version"]) == ({"a": 1, "b": 2}, 2)


def test_step_begin_on_the_hot_path__a_lock_wait_that_times_out_is_the_same_503(
    short_wait_server: tuple[str, str], test_database_url: str
) -> None:
    """Step begin and complete are answered by the WSGI hot path, not ninja: a lock timeout
    there must be the same 503 with ``Retry-After``, not a 500."""
    url, code = short_wait_server
    run = runs.run_create(workflow_name="probe")
    body = {"name": "s", "inputHash": "h", "leaseOwner": "w"}
    with httpx.Client(base_url=url, timeout=30) as client:
        with psycopg.connect(test_database_url) as holder:  # e.g. a long state write holds the run row
            holder.execute("SELECT 1 FROM tb_run WHERE id = %s FOR UPDATE", [run.id])
            busy = client.post(f"/runs/{run.id}/steps/begin", json=body)
            holder.rollback()
        retried = until_not_busy(lambda: client.post(f"/runs/{run.id}/steps/begin", json=body))

    assert busy.status_code == 503, busy.text
    assert busy.json()["code"] == code
    assert busy.headers["retry-after"] == "1"
    assert retried.status_code == 200, retried.text
    assert retried.json()["action"] == "execute"


BIG = 60 * 1024 * 1024


@pytest.mark.slow
def test_patch_state__four_concurrent_60_mb_patches_of_a_new_run_never_500_and_all_land_when_retried(
    live_server_url: str,
) -> None:
    """The issue's case: four 60 MB PATCHes on a run without state. Each writer holds the state
    row while it writes the value several times over (live state, version, event...), so one
    may wait longer than the lock timeout behind the others: it gets a 503 ``lock_timeout`` with
    ``Retry-After``, and retrying as told lands every write, merged. (All four write one large
    key, so the merged state stays 60 MB: four distinct 60 MB keys would exceed jsonb's 256 MB
    limit in the fourth write's event, a 400 ``unsupported_value``.)"""
    with httpx.Client(base_url=live_server_url, timeout=300) as client:
        run_id = create_run(client)
    writers = 4
    barrier = threading.Barrier(writers)
    seen: list[httpx.Response] = []

    def write(i: int) -> None:
        body = b'{"value": {"big": "%s", "w%d": %d}}' % (str(i).encode() * BIG, i, i)
        with httpx.Client(base_url=live_server_url, timeout=300) as client:
            barrier.wait()
            until_not_busy(lambda: client.patch(f"/runs/{run_id}/state", content=body), seen)

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))

    statuses = [(r.status_code, r.headers.get("retry-after")) for r in seen]
    assert sorted({s for s, _ in statuses}) in ([200], [200, 503]), statuses
    assert all(after == "1" for s, after in statuses if s == 503), statuses
    busy = [r.json()["code"] for r in seen if r.status_code == 503]
    assert set(busy) <= {"lock_timeout", "statement_timeout"}, busy
    live = RunState.objects.get(run_id=run_id)
    assert sorted(live.value) == ["big", "w0", "w1", "w2", "w3"]
    assert live.version == writers
    assert len(live.value["big"]) == BIG


# --- state streams (tb_state_stream): version numbering ------------------------------------------


def test_snapshot_create__16_concurrent_snapshots_of_a_new_target_number_versions_1_to_16() -> None:
    run = runs.run_create(workflow_name="probe")

    def snap(i: int) -> int:
        return state.snapshot_create(
            run_id=run.id, label=f"s{i}", state={"i": i}, target_type="report", target_id="r1"
        ).version

    results = in_threads(THREADS, snap)

    assert errors(results) == []
    assert sorted(results) == list(range(1, THREADS + 1))
    stream = StateStream.objects.get(run_id=run.id)
    assert (stream.name, stream.current_version) == ("report:r1", THREADS)


def test_state_write__16_writers_to_16_new_named_streams_and_one_shared_one() -> None:
    run = runs.run_create(workflow_name="probe")

    def writer(i: int) -> None:
        state.state_write(run_id=run.id, value={f"w{i}": 1}, merge=True, stream=f"own-{i}")
        state.state_write(run_id=run.id, value={f"v{i}": 1}, merge=True, stream="shared")

    assert errors(in_threads(THREADS, writer)) == []

    streams = {s.name: s.current_version for s in StateStream.objects.filter(run_id=run.id)}
    assert streams == {"shared": THREADS, **{f"own-{i}": 1 for i in range(THREADS)}}
    shared = StateVersion.objects.filter(run_id=run.id, stream__name="shared").order_by("version")
    assert [v.version for v in shared] == list(range(1, THREADS + 1))
    assert RunState.objects.get(run_id=run.id).version == 2 * THREADS


# --- usage rollups (tb_usage_daily, tb_usage_run): upserts ----------------------------------------


def test_usage_record__16_new_runs_create_one_daily_row_together_and_each_counts_once() -> None:
    new_runs = [runs.run_create(workflow_name="rollup") for _ in range(THREADS)]

    def record(i: int) -> None:
        for _ in range(3):
            usage.usage_record(run_id=new_runs[i].id, provider="p", model="m", input_tokens=1, cost_usd=Decimal("1"))

    assert errors(in_threads(THREADS, record)) == []

    daily = UsageDaily.objects.get(workflow="rollup")
    assert (daily.records, daily.runs, daily.input_tokens, daily.cost_usd) == (48, 16, 48, Decimal(48))
    assert sorted(UsageRunTotal.objects.values_list("records", flat=True)) == [3] * THREADS
    assert usage.usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 0}


# --- queue config and schedules ---------------------------------------------------------------------


def test_queue_configure__concurrent_partial_configs_of_new_queues_all_apply() -> None:
    """Keep-existing semantics (§10.4): four writers race on each of 40 new queues, each setting
    one field; none may reset another's."""
    fields: list[dict[str, Any]] = [
        {"concurrency": 7},
        {"rate_per_minute": 30},
        {"invoke_url": "http://127.0.0.1:9/invoke"},
        {"paused": True},
    ]

    def configure(i: int) -> None:
        for r in range(10):
            queues.queue_configure(name=f"new-{i // 4}-{r}", **fields[i % 4])

    assert errors(in_threads(THREADS, configure)) == []

    configs = QueueConfig.objects.filter(name__startswith="new-")
    assert len(configs) == 40
    for c in configs:
        assert (c.concurrency, c.rate_per_minute, c.invoke_url, c.paused) == (7, 30, "http://127.0.0.1:9/invoke", True)


def test_schedule_set__16_concurrent_puts_of_a_new_schedule_leave_one_whole_row() -> None:
    def put(i: int) -> None:
        schedules.schedule_set(name="nightly", cron=f"{i} 3 * * *", workflow_name=f"wf-{i}", input={"i": i})

    assert errors(in_threads(THREADS, put)) == []

    [schedule] = Schedule.objects.all()
    i = schedule.input["i"]
    assert (schedule.cron, schedule.workflow_name) == (f"{i} 3 * * *", f"wf-{i}")  # one writer's, whole


# --- API keys and idempotency keys: the winner's row, never a 500 ------------------------------------


def test_api_key_create__16_concurrent_creates_of_one_name_make_one_key_and_15_conflicts() -> None:
    results = in_threads(THREADS, lambda i: api_key_create(name="ci", scope="agent"))

    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, Conflict) for r in errors(results)), errors(results)
    assert ApiKey.objects.filter(name="ci").count() == 1


def test_run_create__16_concurrent_creates_with_one_idempotency_key_make_one_run() -> None:
    results = in_threads(
        THREADS, lambda i: runs.run_create(workflow_name="idem", idempotency=("POST /runs/idem", "k1")).id
    )

    assert errors(results) == []
    assert len(set(results)) == 1
    assert Run.objects.filter(workflow_name="idem").count() == 1


def test_enqueue__16_concurrent_enqueues_with_one_idempotency_key_make_one_run() -> None:
    results = in_threads(
        THREADS,
        lambda i: queues.enqueue(queue="idem-q", workflow_name="wf", idempotency=("POST /queues/idem-q", "k1"))[0].id,
    )

    assert errors(results) == []
    assert len(set(results)) == 1
    assert Run.objects.filter(queue="idem-q").count() == 1


def test_usage_record__16_concurrent_records_with_one_idempotency_key_record_once() -> None:
    run = runs.run_create(workflow_name="idem-usage")
    results = in_threads(
        THREADS,
        lambda i: usage.usage_record(run_id=run.id, input_tokens=1, idempotency=(f"usage:{run.id}", "k1")).id,
    )

    assert errors(results) == []
    assert len(set(results)) == 1
    assert UsageRecord.objects.filter(run_id=run.id).count() == 1
    assert UsageRunTotal.objects.get(run_id=run.id).records == 1
