"""The SSRF guard: blocked destinations are refused at connect time, recorded, dead-lettered."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import override_settings

from tidebase_core.models import ChannelDelivery, Event, RecoveryAttempt
from webhooks.models import DeliveryAttempt
from webhooks.services import delivery_attempt
from webhooks.ssrf import AddressPolicy, BlockedAddress, address_blocked

from .conftest import Receiver
from .helpers import channel_deliveries, recovery_row


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1",
        "ff02::1", "::",
    ],
)  # fmt: skip
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert address_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert not address_blocked(ipaddress.ip_address(address))


def test_allow_list_by_host_and_cidr() -> None:
    policy = AddressPolicy.from_entries(["localhost", "10.0.0.0/8", "169.254.169.254"])
    assert policy.permits("localhost", ipaddress.ip_address("127.0.0.1"))
    assert policy.permits("x", ipaddress.ip_address("10.9.9.9"))
    assert not policy.permits("x", ipaddress.ip_address("192.168.0.1"))
    assert policy.permits("x", ipaddress.ip_address("169.254.169.254"))  # exact entry only
    assert not AddressPolicy.from_entries(["169.254.0.0/16"]).permits("x", ipaddress.ip_address("169.254.169.254"))
    with pytest.raises(BlockedAddress):
        AddressPolicy().resolve("localhost", 80)  # resolution happens, then every answer is refused


@pytest.mark.django_db(transaction=True)
@override_settings(TIDEBASE_WEBHOOK_ALLOW_HOSTS=[], TIDEBASE_WEBHOOK_SECRET=None)
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/x"]
)
def test_blocked_destination_is_recorded_and_dead_lettered_at_once(url: str, broker_env: dict[str, str]) -> None:
    [delivery_id] = channel_deliveries(url, publish=False)
    assert delivery_attempt(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="test") is None
    row = ChannelDelivery.objects.get(id=delivery_id)
    assert (row.status, row.attempts, row.error_text, row.http_status) == ("failed", 1, "blocked_address", None)
    attempt = DeliveryAttempt.objects.get(delivery_id=delivery_id)
    assert (attempt.number, attempt.error) == (1, "blocked_address")


@pytest.mark.django_db(transaction=True)
@override_settings(TIDEBASE_WEBHOOK_ALLOW_HOSTS=[], TIDEBASE_WEBHOOK_SECRET=None)
def test_blocked_recovery_webhook_emits_recovery_failed(broker_env: dict[str, str]) -> None:
    attempt = recovery_row("http://localhost:9/resume")
    delivery_attempt(kind="recovery", delivery_id=attempt.id, expected_attempts=0, trigger="test")
    assert RecoveryAttempt.objects.get(id=attempt.id).status == "failed"
    assert Event.objects.get(run_id=attempt.run_id, type="recovery.failed").payload == {
        "recoveryAttemptId": attempt.id,
        "error": "blocked_address",
    }


@pytest.mark.django_db(transaction=True)
@override_settings(TIDEBASE_WEBHOOK_ALLOW_HOSTS=["127.0.0.1"], TIDEBASE_WEBHOOK_RETRY_SCHEDULE=[60])
def test_redirects_are_not_followed(broker_env: dict[str, str], receiver: Receiver) -> None:
    receiver.behaviour = lambda r: (302, {"location": "http://169.254.169.254/"}, b"")
    [delivery_id] = channel_deliveries(receiver.url, publish=False)
    delay = delivery_attempt(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="test")
    assert delay is not None  # a 3xx is a failed attempt, retried on schedule
    assert len(receiver.receipts) == 1
    assert ChannelDelivery.objects.get(id=delivery_id).http_status == 302


@pytest.mark.django_db(transaction=True)
@override_settings(TIDEBASE_WEBHOOK_ALLOW_HOSTS=["127.0.0.1"])
def test_a_claim_is_taken_once(broker_env: dict[str, str], receiver: Receiver) -> None:
    """Two messages for the same attempt (after-commit + sweep): only one sends."""
    [delivery_id] = channel_deliveries(receiver.url, publish=False)
    delivery_attempt(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="a")
    delivery_attempt(kind="channel", delivery_id=delivery_id, expected_attempts=0, trigger="b")
    assert len(receiver.receipts) == 1
    assert DeliveryAttempt.objects.filter(delivery_id=delivery_id).count() == 1
