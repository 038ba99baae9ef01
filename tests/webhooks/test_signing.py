"""The server's signer and the SDK's verifier share these vectors."""

from __future__ import annotations

import base64
import hmac
import random

import pytest

from tidebase.webhooks import WebhookVerificationError, sign_standard_webhook, verify, verify_webhook_signature
from webhooks import signing
from webhooks.services.retries import retry_delay

BODY = b'{"type":"run.resume","runId":"run_1","workflowName":"wf","reason":"manual","attempt":1}'
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

VECTORS = [
    # (secret, msg_id, timestamp, expected v1 signature)
    ("s3cret", "rec_1", 1_700_000_000, "v1,cWsRK+NgzRWHceuft3rAI8OW1u1+fezQo09XDbmvLGU="),
    (WHSEC, "del_abc", 1_700_000_001, None),
]


@pytest.mark.parametrize(("secret", "msg_id", "timestamp", "expected"), VECTORS)
def test_server_and_sdk_agree(secret: str, msg_id: str, timestamp: int, expected: str | None) -> None:
    server = signing.standard_signature(msg_id, timestamp, BODY, secret)
    assert server == sign_standard_webhook(msg_id, timestamp, BODY, secret)
    if expected:
        assert server == expected
    headers = signing.sign_headers(msg_id=msg_id, timestamp=timestamp, body=BODY, secret=secret)
    assert verify(BODY, headers, secret, now=timestamp + 10) == msg_id
    assert verify_webhook_signature(BODY, headers["x-tidebase-signature"], secret)


def test_standard_webhooks_reference_vector() -> None:
    """The example from the Standard Webhooks specification / svix libraries."""
    body = b'{"test": 2432232314}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing.standard_signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, secret) == expected
    assert sign_standard_webhook("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, secret) == expected


def test_x_tidebase_signature_is_upstreams_hex_hmac() -> None:
    assert signing.tidebase_signature(BODY, "s3cret") == "sha256=" + hmac.new(b"s3cret", BODY, "sha256").hexdigest()


def test_rotation_signs_with_current_and_previous() -> None:
    headers = signing.sign_headers(msg_id="m", timestamp=100, body=BODY, secret="new", previous=["old"])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(BODY, headers, "old", now=100) == "m"
    assert verify(BODY, headers, ["new"], now=100) == "m"
    with pytest.raises(WebhookVerificationError) as exc:
        verify(BODY, headers, "other", now=100)
    assert exc.value.reason == "invalid_signature"


def test_no_secret_sends_ids_but_no_signature() -> None:
    assert signing.sign_headers(msg_id="m", timestamp=1, body=BODY, secret=None) == {
        "webhook-id": "m",
        "webhook-timestamp": "1",
    }


def test_retry_delays_follow_the_schedule_with_jitter() -> None:
    rng = random.Random(7)
    schedule = [5, 300, 1800]
    delays = [retry_delay(n, schedule, rng=rng) for n in (1, 2, 3, 4)]
    assert delays[3] is None  # exhausted: dead-letter
    for delay, base in zip(delays[:3], schedule, strict=True):
        assert delay is not None
        assert base * 0.9 <= delay <= base * 1.1
    assert retry_delay(1, schedule, retry_after_s=120, rng=rng) == 120  # Retry-After beats 5 s
    assert retry_delay(1, schedule, retry_after_s=10**9, rng=rng) == 24 * 3600  # capped
