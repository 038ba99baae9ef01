"""What a user of a multi-machine deployment relies on, proven on the real process layout (two
web servers, two workers, two beats, one Postgres, one broker; see ``deployment``):

- an SSE client on one web server sees the events written through the other, gap-free;
- a gate long-poll parked on web A returns when the gate is resolved through web B's API or
  web B's dashboard;
- with two beats ticking, the reconciler fires each recovery exactly once;
- two workers lose no delivery and never send one attempt twice;
- a schedule fires once per fire time.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from tests.multiproc.deployment import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    GateWaiter,
    Layout,
    PrivatePostgres,
    Receiver,
    SseFollower,
    checked,
    client,
    unique,
    wait_for,
    web_has_read,
)

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]


def test_sse_client_on_one_web_server_sees_events_written_through_the_other(deployment: Layout) -> None:
    a, b = deployment.webs
    with client(b.url) as api_b, client(a.url) as api_a:
        run_id = checked(api_b.post("/runs/mp-sse", json={}))["run"]["id"]
        on_a, on_b = SseFollower([a.url], run_id), SseFollower([b.url], run_id)
        try:
            on_a.wait_seq(1)  # run.created: both streams are open
            on_b.wait_seq(1)
            for i in range(20):  # alternate: half written through each server
                checked((api_b if i % 2 == 0 else api_a).put(f"/runs/{run_id}/state", json={"value": {"i": i}}))
            on_a.wait_seq(21)
            on_b.wait_seq(21)
        finally:
            on_a.close()
            on_b.close()
    assert on_a.seqs == list(range(1, 22))  # every event, in order, once
    assert on_b.seqs == on_a.seqs


def _dashboard_login(url: str) -> httpx.Client:
    session = httpx.Client(base_url=url, timeout=30)
    session.get("/dashboard/login/")
    response = session.post(
        "/dashboard/login/",
        data={"username": ADMIN_USER, "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
    )
    assert response.status_code == 302, response.text[:500]
    return session


@pytest.mark.parametrize("through", ["api", "dashboard"])
def test_gate_long_poll_on_web_a_returns_when_resolved_through_web_b(
    deployment: Layout, pg: PrivatePostgres, through: str
) -> None:
    a, b = deployment.webs
    with client(b.url) as api_b:
        run_id = checked(api_b.post("/runs/mp-gate", json={}))["run"]["id"]
        gate = checked(api_b.post(f"/runs/{run_id}/gates/begin", json={"name": "deploy", "prompt": "ship it?"}))["gate"]
        waiter = GateWaiter([a.url], run_id, gate["id"], wait_ms=300_000)  # far beyond the bound below
        try:
            # Web A has checked the gate (found it pending) and parked the long-poll.
            wait_for(lambda: web_has_read(a, pg.port, deployment.db, gate["id"]), 30, "web A to read the gate")
            assert not waiter.done.is_set()
            if through == "api":
                checked(api_b.post(f"/runs/{run_id}/gates/{gate['id']}/resolve", json={"decision": "approved"}))
                decided_by = "anonymous"  # the open API (no key configured)
            else:
                session = _dashboard_login(b.url)
                try:
                    response = session.post(
                        f"/dashboard/gates/{gate['id']}/decide",
                        data={"decision": "approved", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                    )
                finally:
                    session.close()
                assert response.status_code == 302, response.text[:500]
                decided_by = f"user:{ADMIN_USER}"
            # Well within its 300 s wait: it was woken by the decision's notification.
            assert waiter.done.wait(60), "the long-poll on web A did not return"
        finally:
            waiter.close()
    assert waiter.answer is not None
    assert waiter.answer["gate"]["status"] == "approved"
    assert waiter.answer["gate"]["decidedBy"] == decided_by
    assert len(waiter.requests) == 1  # answered by the parked request itself, woken across processes


def test_reconciler_fires_each_recovery_exactly_once_with_two_beats(deployment: Layout) -> None:
    a, b = deployment.webs
    receiver = Receiver()
    n = 12
    queue = unique("mp-requeue")
    try:
        with client(a.url) as api_a, client(b.url) as api_b:
            apis = [api_a, api_b]
            runs = []
            for i in range(n):  # runs whose worker dies: begun, then never heard of again
                api = apis[i % 2]
                run_id = checked(api.post("/runs/mp-recover", json={"recoveryWebhook": receiver.url("resume")}))["run"][
                    "id"
                ]
                checked(api.post(f"/runs/{run_id}/begin", headers={"x-tidebase-worker": "dead-worker"}))
                runs.append(run_id)
            for i in range(n):  # queue runs claimed by a worker that dies
                checked(apis[i % 2].post(f"/queues/{queue}/enqueue", json={"workflowName": "mp", "maxAttempts": 3}))
            claimed = checked(api_a.post("/queues/claim", json={"queues": [queue], "limit": n}))["runs"]
            assert len(claimed) == n

        db = deployment.db

        def settled() -> bool:
            resumed = db.value(
                """SELECT count(DISTINCT run_id) FROM tb_recovery_attempt
                   WHERE run_id = ANY(%s) AND status = 'delivered'""",
                [runs],
            )
            requeued = db.value("SELECT count(*) FROM tb_run WHERE queue_name = %s AND status = 'queued'", [queue])
            return resumed == n and requeued == n

        wait_for(settled, 60, "every lapsed lease handled")
        # A fence: one more run whose lease lapses after all of the above were handled. Once its
        # recovery is out, further ticks of both beats have run over the first runs.
        with client(b.url) as api_b:
            fence = checked(api_b.post("/runs/mp-fence", json={"recoveryWebhook": receiver.url("fence")}))["run"]["id"]
            checked(api_b.post(f"/runs/{fence}/begin", headers={"x-tidebase-worker": "dead-worker"}))
        wait_for(lambda: any(r.body.get("runId") == fence for r in receiver.receipts), 60, "the fence's recovery")

        attempts = Counter(
            r[0]
            for r in db.rows(
                "SELECT run_id FROM tb_recovery_attempt WHERE run_id = ANY(%s) AND reason = 'lease_expired'", [runs]
            )
        )
        assert attempts == dict.fromkeys(runs, 1)  # one recovery per run, not one per beat
        sent = Counter(r.body["runId"] for r in receiver.receipts if r.body.get("runId") in runs)
        assert sent == dict.fromkeys(runs, 1)  # and it reached the receiver once
        requeues = Counter(
            r[0]
            for r in db.rows(
                """SELECT e.run_id FROM tb_event e JOIN tb_run r ON r.id = e.run_id
                   WHERE r.queue_name = %s AND e.type = 'run.requeued'""",
                [queue],
            )
        )
        assert sorted(requeues.values()) == [1] * n  # each lapsed queue lease requeued once
    finally:
        receiver.close()


def test_two_workers_lose_no_delivery_and_never_send_an_attempt_twice(deployment: Layout) -> None:
    a, b = deployment.webs
    receiver = Receiver()
    runs, writes, channels = 6, 10, 4
    try:
        run_ids = []
        with client(a.url) as api_a, client(b.url) as api_b:
            for i in range(runs):
                hooks = [{"type": "webhook", "url": receiver.url(f"c{c}"), "secret": "s"} for c in range(channels)]
                run_ids.append(
                    checked((api_a, api_b)[i % 2].post("/runs/mp-burst", json={"channels": hooks}))["run"]["id"]
                )

        def write(url: str, ids: list[str]) -> None:
            with client(url) as api:
                for w in range(writes):
                    for run_id in ids:
                        checked(api.put(f"/runs/{run_id}/state", json={"value": {"w": w}}))

        threads = [threading.Thread(target=write, args=(url, run_ids[i::2])) for i, url in enumerate((a.url, b.url))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        expected = runs * writes * channels
        db = deployment.db
        ids = [r[0] for r in db.rows("SELECT id FROM tb_channel_delivery WHERE run_id = ANY(%s)", [run_ids])]
        assert len(ids) == expected

        def delivered() -> bool:
            return (
                db.value(
                    "SELECT count(*) FROM tb_channel_delivery WHERE run_id = ANY(%s) AND status = 'delivered'",
                    [run_ids],
                )
                == expected
            )

        wait_for(delivered, 90, "every delivery delivered")
        by_id = receiver.by_id()
        assert set(by_id) == set(ids)  # none lost, none invented
        for delivery_id, receipts in by_id.items():
            numbers = [r.attempt for r in receipts]
            assert len(numbers) == len(set(numbers)), f"{delivery_id}: an attempt was sent twice: {numbers}"
        duplicates = {d: r for d, r in by_id.items() if len(r) > 1}
        interrupted = {
            (row[0], row[1])
            for row in db.rows(
                """SELECT delivery_id, number FROM tb_delivery_attempt
                   WHERE delivery_id = ANY(%s) AND interrupted_at IS NOT NULL""",
                [ids],
            )
        }
        for delivery_id, receipts in duplicates.items():  # the documented at-least-once case only
            assert {(delivery_id, r.attempt) for r in receipts[:-1]} <= interrupted
        workers = {
            row[0].split(":")[1]
            for row in db.rows("SELECT DISTINCT worker FROM tb_delivery_attempt WHERE delivery_id = ANY(%s)", [ids])
        }
        assert workers == {str(w.pid) for w in deployment.workers}  # both workers took part
    finally:
        receiver.close()


def test_schedules_fire_once_per_fire_time_with_two_beats(deployment: Layout) -> None:
    a, b = deployment.webs
    queue = unique("mp-sched")
    names = [f"{queue}-{i}" for i in range(8)]
    db = deployment.db
    with client(a.url) as api_a, client(b.url) as api_b:
        for i, name in enumerate(names):
            body = {"cron": "* * * * *", "workflowName": "mp-scheduled", "queue": queue}
            checked((api_a, api_b)[i % 2].put(f"/schedules/{name}", json=body))
        # The clock is the one thing we move: each round sets every schedule's next fire time to
        # a distinct past minute, as if it had just come round, and waits until both beats'
        # ticks have moved past it. The runs are then taken and completed, so a second enqueue
        # for the same fire time would make a new run instead of hitting the active one's dedupe.
        fire_times = []
        for minutes in (3, 2, 1):
            fire = db.value("SELECT date_trunc('minute', now()) - make_interval(mins => %s)", [minutes])
            fire_times.append(fire)
            db.rows("UPDATE tb_schedule SET next_run_at = %s WHERE name = ANY(%s)", [fire, names])
            wait_for(
                lambda f=fire: (
                    db.value("SELECT count(*) FROM tb_schedule WHERE name = ANY(%s) AND next_run_at > %s", [names, f])
                    == len(names)
                ),
                60,
                "every schedule to fire",
            )
            taken = checked(api_a.post("/queues/claim", json={"queues": [queue], "limit": 100}))["runs"]
            for run in taken:
                checked(api_b.post(f"/runs/{run['id']}/complete", json={"result": "ok"}))
        # A fence: one more schedule, due now; once it fired, later ticks of both beats have seen
        # the others' rows again.
        fence = f"{queue}-fence"
        checked(api_b.put(f"/schedules/{fence}", json={"cron": "* * * * *", "workflowName": "fence", "queue": queue}))
        db.rows("UPDATE tb_schedule SET next_run_at = now() - interval '1 second' WHERE name = %s", [fence])
        wait_for(lambda: db.value("SELECT count(*) FROM tb_run WHERE metadata->>'schedule' = %s", [fence]), 60, "fence")

    rows = db.rows(
        "SELECT metadata->>'schedule', metadata->>'fireTime' FROM tb_run WHERE metadata->>'schedule' = ANY(%s)",
        [names],
    )
    per_fire = Counter(rows)
    assert all(count == 1 for count in per_fire.values()), [k for k, c in per_fire.items() if c > 1]
    assert Counter(name for name, _ in rows) == dict.fromkeys(names, 3)  # one run per fire time, three fire times
