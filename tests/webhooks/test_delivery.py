"""End to end through a real broker and a real worker process: signed delivery, retries on
schedule, a receiver that is down then back, a hung receiver, dead-lettering, redelivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time

import pytest
from django.core.management import call_command

from tidebase.webhooks import verify, verify_webhook_signature
from tidebase_core.models import ChannelDelivery, Event, RecoveryAttempt
from webhooks.models import DeliveryAttempt

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
    # Gaps follow the schedule (±10 % jitter, plus scheduling slack).
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    for gap, planned in zip(gaps[:2], [0.3, 0.6], strict=False):
        assert planned * 0.9 <= gap <= planned + 2.0


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
    hung.behaviour = lambda r: (time.sleep(30), (200, {}, b""))[1]
    hung.start()
    try:
        start_worker(
            TIDEBASE_WEBHOOK_TIMEOUT_S="1.5", TIDEBASE_WEBHOOK_RETRY_SCHEDULE="60", TIDEBASE_WEBHOOK_INFLIGHT_S="30"
        )
        [slow_id] = channel_deliveries(hung.url)
        wait_for(lambda: hung.receipts, 15, what="hung receiver reached")
        started = time.monotonic()
        fast_ids = channel_deliveries(receiver.url, 20)
        wait_for(
            lambda: ChannelDelivery.objects.filter(id__in=fast_ids, status="delivered").count() == 20,
            10,
            what="fast deliveries",
        )
        assert time.monotonic() - started < 5
        wait_for(
            lambda: DeliveryAttempt.objects.filter(delivery_id=slow_id, finished_at__isnull=False).exists(),
            10,
            what="hung attempt to time out",
        )
        attempt = DeliveryAttempt.objects.get(delivery_id=slow_id, number=1)
        assert (attempt.error or "").startswith("timeout")
        assert 1400 <= (attempt.latency_ms or 0) <= 3000
        assert status_of(ChannelDelivery, slow_id) == "pending"  # retried later, per schedule
    finally:
        hung.stop()
