"""End to end through a real broker and a real worker process: signed delivery, retries on
schedule, a receiver that is down then back, a hung receiver, dead-lettering, redelivery."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models.functions import Now

from tests.conftest import lock_waiters
from tidebase.webhooks import verify, verify_webhook_signature
from tidebase_core.models import ChannelDelivery, Event, RecoveryAttempt
from webhooks.models import DeliveryAttempt
from webhooks.services import attempts, redelivery, sending
from webhooks.ssrf import AddressPolicy

from .conftest import Receiver, wait_for
from .helpers import channel_deliveries, recovery_row

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(model: type[ChannelDelivery] | type[RecoveryAttempt], pk: str) -> str:
    return model.objects.get(id=pk).status


def test_channel_delivery_is_signed_with_the_channel_secret(start_worker, receiver: Receiver) -> None:
    start_worker()
    [delivery_id] = channel_deliveries(receiver.url, secret="chan-secret")

    wait_for(lambda: status_of(ChannelDelivery, delivery_id) == "delivered", 20, what="delivery")

    [receipt] = receiver.receipts
    row = ChannelDelivery.objects.get(id=delivery_id)
    assert json.loads(receipt.body) == {
        "type": "state.updated",
        "runId": row.run_id,
        "gateId": None,
        "deliveryId": delivery_id,
        "payload": row.payload,
    }
    assert b" " not in receipt.body  # compact JSON
    assert receipt.headers["user-agent"] == "tidebase-channel/0.3.0"
    assert receipt.headers["content-type"] == "application/json"
    assert receipt.webhook_id == delivery_id
    assert verify_webhook_signature(receipt.body, receipt.headers["x-tidebase-signature"], "chan-secret")
    assert verify(receipt.body, receipt.headers, "chan-secret") == delivery_id
    stamp = receipt.headers["webhook-timestamp"]
    expected = base64.b64encode(
        hmac.new(b"chan-secret", f"{delivery_id}.{stamp}.".encode() + receipt.body, hashlib.sha256).digest()
    ).decode()
    assert receipt.headers["webhook-signature"] == f"v1,{expected}"
    assert row.http_status == 200
    assert row.response_body == "ok"
    assert row.attempts == 1
    [attempt] = DeliveryAttempt.objects.filter(delivery_id=delivery_id)
    assert (attempt.number, attempt.http_status, attempt.error, attempt.response_excerpt) == (1, 200, None, "ok")
    assert attempt.latency_ms is not None
    assert attempt.finished_at is not None


def test_recovery_webhook_body_headers_and_events(start_worker, receiver: Receiver) -> None:
    start_worker(TIDEBASE_WEBHOOK_SECRET="server-secret", TIDEBASE_WEBHOOK_SECRET_PREVIOUS="old-secret")
    attempt = recovery_row(receiver.url, reason="manual")

    wait_for(lambda: status_of(RecoveryAttempt, attempt.id) == "delivered", 20, what="recovery delivery")

    [receipt] = receiver.receipts
    assert receipt.body == (
        b'{"type":"run.resume","runId":"%s","workflowName":"wf","reason":"manual","attempt":0}'
        % attempt.run_id.encode()
    )
    assert receipt.headers["user-agent"] == "tidebase-recovery/0.5.0"
    assert verify_webhook_signature(receipt.body, receipt.headers["x-tidebase-signature"], "server-secret")
    assert len(receipt.headers["webhook-signature"].split(" ")) == 2  # current + previous secret
    assert verify(receipt.body, receipt.headers, "server-secret") == attempt.id
    assert verify(receipt.body, receipt.headers, "old-secret") == attempt.id
    events = list(Event.objects.filter(run_id=attempt.run_id).order_by("seq").values_list("type", "payload"))
    assert events[-2:] == [
        ("recovery.started", {"recoveryAttemptId": attempt.id, "reason": "manual"}),
        ("recovery.delivered", {"recoveryAttemptId": attempt.id, "httpStatus": 200}),
    ]


def test_receiver_down_then_back_is_retried_on_schedule(start_worker) -> None:
    receiver = Receiver()  # port reserved, nothing listening yet
    start_worker(TIDEBASE_WEBHOOK_RETRY_SCHEDULE="0.3,0.6,1.2,2,2")
    [delivery_id] = channel_deliveries(receiver.url)

    wait_for(
        lambda: DeliveryAttempt.objects.filter(delivery_id=delivery_id, error__isnull=False).count() >= 3,
        20,
        what="3 failed attempts",
    )
    receiver.start()
    try:
        wait_for(lambda: status_of(ChannelDelivery, delivery_id) == "delivered", 20, what="delivery after recovery")
    finally:
        receiver.stop()

    attempts = list(DeliveryAttempt.objects.filter(delivery_id=delivery_id).order_by("number"))
    assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a.error and a.error.startswith("ConnectError") for a in attempts[:3]), [a.error for a in attempts]
    assert attempts[-1].http_status == 200
    assert len(receiver.receipts) == 1
    # No retry comes sooner than the schedule says (-10 % jitter). A loaded machine may make
    # them later, so there is no upper bound here.
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    for gap, planned in zip(gaps[:2], [0.3, 0.6], strict=False):
        assert planned * 0.9 <= gap


def test_retry_after_is_honoured_then_dead_lettered_and_redelivered(start_worker, receiver: Receiver) -> None:
    receiver.behaviour = lambda r: (503, {"retry-after": "1"}, b"busy")
    start_worker(TIDEBASE_WEBHOOK_RETRY_SCHEDULE="0.1,0.1")
    attempt = recovery_row(receiver.url)

    wait_for(lambda: status_of(RecoveryAttempt, attempt.id) == "failed", 30, what="dead letter")

    row = RecoveryAttempt.objects.get(id=attempt.id)
    assert (row.attempts, row.http_status, row.response_body) == (3, 503, "busy")
    times = [r.at for r in receiver.receipts]
    assert len(times) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))  # Retry-After: 1 beat 0.1 s
    assert {r.webhook_id for r in receiver.receipts} == {attempt.id}
    assert Event.objects.filter(run_id=attempt.run_id, type="recovery.failed").get().payload == {
        "recoveryAttemptId": attempt.id,
        "httpStatus": 503,
    }

    receiver.behaviour = None
    call_command("tidebase_redeliver", attempt.id, "--actor", "ops")
    wait_for(lambda: status_of(RecoveryAttempt, attempt.id) == "delivered", 20, what="redelivery")
    assert DeliveryAttempt.objects.get(delivery_id=attempt.id, number=4).trigger == "redeliver:ops"
    assert receiver.receipts[-1].webhook_id == attempt.id


def test_hung_receiver_is_bounded_and_does_not_delay_others(start_worker, receiver: Receiver) -> None:
    hung = Receiver()
    hung.behaviour = lambda r: (time.sleep(60), (200, {}, b""))[1]
    hung.start()
    try:
        start_worker(
            TIDEBASE_WEBHOOK_TIMEOUT_S="10", TIDEBASE_WEBHOOK_RETRY_SCHEDULE="60", TIDEBASE_WEBHOOK_INFLIGHT_S="90"
        )
        [slow_id] = channel_deliveries(hung.url)
        wait_for(lambda: hung.receipts, 30, what="hung receiver reached")
        fast_ids = channel_deliveries(receiver.url, 20)
        wait_for(
            lambda: ChannelDelivery.objects.filter(id__in=fast_ids, status="delivered").count() == 20,
            60,
            what="fast deliveries",
        )
        # Not delayed by the hung one: all 20 went through while it still held its attempt.
        assert not DeliveryAttempt.objects.filter(delivery_id=slow_id, finished_at__isnull=False).exists()
        wait_for(
            lambda: DeliveryAttempt.objects.filter(delivery_id=slow_id, finished_at__isnull=False).exists(),
            60,
            what="hung attempt to time out",
        )
        attempt = DeliveryAttempt.objects.get(delivery_id=slow_id, number=1)
        assert (attempt.error or "").startswith("timeout")
        # Bounded by the 10 s deadline, not by the receiver's 60 s sleep.
        assert 9_500 <= (attempt.latency_ms or 0) < 50_000
        assert status_of(ChannelDelivery, slow_id) == "pending"  # retried later, per schedule
    finally:
        hung.stop()


# --- an attempt the sweep gave up on finishes late (issue #12, item 6) ----------------------------
# The order is driven explicitly, with the services the worker runs and a real receiver: claim
# attempt 1 and send it (the receiver holds it); its in-flight horizon passes; the sweep re-
# dispatches and the claim of attempt 2 marks attempt 1 ``interrupted``; attempt 2 is delivered;
# then attempt 1 comes back, late.

LOOPBACK = AddressPolicy.from_entries(["127.0.0.1"])


def horizon_passes(delivery_id: str) -> None:
    """What ``TIDEBASE_WEBHOOK_INFLIGHT_S`` after the claim looks like to the sweep."""
    ChannelDelivery.objects.filter(id=delivery_id).update(next_attempt_at=Now() - dt.timedelta(minutes=1))


def test_delivery_record__a_late_outcome_of_an_interrupted_attempt_keeps_the_mark(receiver: Receiver) -> None:
    release = threading.Event()
    receiver.behaviour = lambda r: (release.wait(30), (200, {}, b"late"))[1] if r.attempt == 1 else (200, {}, b"ok")
    [delivery_id] = channel_deliveries(receiver.url, publish=False)

    first = attempts.delivery_claim(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="dispatch")
    assert first is not None
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(sending.delivery_send, first, policy=LOOPBACK)
        wait_for(lambda: receiver.receipts, 10, what="attempt 1 at the receiver")
        horizon_passes(delivery_id)
        assert ("channel", delivery_id, 1) in redelivery.delivery_sweep()
        second = attempts.delivery_claim(kind="channel", delivery_id=delivery_id, expected_attempts=1, trigger="sweep")
        assert second is not None
        assert attempts.delivery_record(second, sending.delivery_send(second, policy=LOOPBACK)) is None
        release.set()
        late = in_flight.result()
    assert attempts.delivery_record(first, late) is None

    one, two = DeliveryAttempt.objects.filter(delivery_id=delivery_id).order_by("number")
    assert (one.error, one.http_status, one.response_excerpt) == ("interrupted", 200, "late")
    assert one.interrupted_at is not None
    assert one.finished_at is not None
    assert one.finished_at >= one.interrupted_at  # when it really ended, after the mark
    assert (two.error, two.http_status, two.response_excerpt, two.interrupted_at) == (None, 200, "ok", None)
    row = ChannelDelivery.objects.get(id=delivery_id)
    assert (row.status, row.attempts) == ("delivered", 2)


def test_delivery_record__a_late_failure_of_an_interrupted_attempt_keeps_the_mark_and_schedules_nothing() -> None:
    [delivery_id] = channel_deliveries("http://127.0.0.1:9/hook", publish=False)
    first = attempts.delivery_claim(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="dispatch")
    assert first is not None
    horizon_passes(delivery_id)
    assert ("channel", delivery_id, 1) in redelivery.delivery_sweep()
    second = attempts.delivery_claim(kind="channel", delivery_id=delivery_id, expected_attempts=1, trigger="sweep")
    assert second is not None

    late = sending.Outcome(latency_ms=9000, error="timeout: ReadTimeout")
    assert attempts.delivery_record(first, late, schedule=[0.2, 0.5]) is None

    one = DeliveryAttempt.objects.get(delivery_id=delivery_id, number=1)
    assert (one.error, one.latency_ms) == ("interrupted", 9000)
    assert one.interrupted_at is not None
    assert ChannelDelivery.objects.get(id=delivery_id).attempts == 2  # attempt 2 is still the live one


def own_connection(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return fn()
        finally:
            connection.close()

    return run


def test_delivery_record__racing_the_claim_that_interrupts_its_attempt_never_deadlocks(test_database_url: str) -> None:
    """The record of attempt 1 and the claim of attempt 2 both lock the outbox row and attempt
    1's log row. A third connection holds the log row so that both line up on it; recording
    must take the outbox row first, as the claim does, or the two deadlock (one fails)."""
    [delivery_id] = channel_deliveries("http://127.0.0.1:9/hook", publish=False)
    first = attempts.delivery_claim(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="dispatch")
    assert first is not None
    horizon_passes(delivery_id)
    outcome = sending.Outcome(latency_ms=5, http_status=200, response="ok")

    with psycopg.connect(test_database_url) as holder, ThreadPoolExecutor(2) as pool:
        holder.execute("SELECT 1 FROM tb_delivery_attempt WHERE delivery_id = %s FOR UPDATE", [delivery_id])
        record = pool.submit(own_connection(lambda: attempts.delivery_record(first, outcome)))
        wait_for(lambda: lock_waiters("tb_delivery_attempt") == 1, 10, what="the record to wait")
        claim = pool.submit(
            own_connection(
                lambda: attempts.delivery_claim(
                    kind="channel", delivery_id=delivery_id, expected_attempts=1, trigger="sweep"
                )
            )
        )
        wait_for(lambda: claim.done() or lock_waiters("tb_delivery_attempt") == 2, 10, what="the claim to settle")
        holder.rollback()
        recorded, claimed = record.result(), claim.result()  # a deadlock raises in one of them

    assert recorded is None
    assert claimed is None  # the record held the row: this claim stands down, the sweep retries
    row = ChannelDelivery.objects.get(id=delivery_id)
    assert (row.status, row.attempts) == ("delivered", 1)
    one = DeliveryAttempt.objects.get(delivery_id=delivery_id, number=1)
    assert (one.http_status, one.error, one.interrupted_at) == (200, None, None)
