"""The SSRF guard: blocked destinations are refused at connect time, recorded, dead-lettered."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import override_settings

from tidebase_core.models import ChannelDelivery, Event, RecoveryAttempt
from webhooks.models import DeliveryAttempt
from webhooks.services.attempts import delivery_attempt
from webhooks.ssrf import AddressPolicy, BlockedAddress, address_blocked, embedded_ipv4

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


# IPv6 addresses that lead to an IPv4 address, with the IPv4 each one embeds.
EMBEDDING_PRIVATE = {
    "2002:7f00:1::": "127.0.0.1",  # 6to4: bits 16-48
    "2002:a01:203:4::5": "10.1.2.3",
    "2002:a9fe:a9fe::1": "169.254.169.254",
    "2002:c0a8:101::": "192.168.1.1",
    "64:ff9b::7f00:1": "127.0.0.1",  # NAT64 well-known prefix: the last 32 bits
    "64:ff9b::a9fe:a9fe": "169.254.169.254",
    "64:ff9b::ac10:1": "172.16.0.1",
    "64:ff9b:1::a00:1": "10.0.0.1",  # NAT64 local use, a /96 translator prefix
    "64:ff9b:1:0:ac:1005:700:0": "172.16.5.7",  # ... and a /64 one (bits 72-104)
    "::ffff:10.1.2.3": "10.1.2.3",  # IPv4-mapped
    "::ffff:169.254.169.254": "169.254.169.254",
    "::7f00:1": "127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe": "169.254.169.254",
    "2001:0:5db8:d822:0:0:f5fe:fefe": "10.1.1.1",  # Teredo: public server, client ~0xf5fefefe
}


@pytest.mark.parametrize(("address", "ipv4"), EMBEDDING_PRIVATE.items())
def test_ipv6_embedding_a_blocked_ipv4_is_blocked(address: str, ipv4: str) -> None:
    ip = ipaddress.ip_address(address)
    assert ipaddress.ip_address(ipv4) in embedded_ipv4(ip)
    assert address_blocked(ip)


@pytest.mark.parametrize(
    "address",
    [
        "2002:5db8:d822::1",  # 6to4 of 93.184.216.34: a relay carries it to that public host
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34: how IPv6-only hosts reach IPv4 receivers
        "64:ff9b::1.1.1.1",
        "::ffff:1.1.1.1",
    ],
)
def test_ipv6_embedding_a_public_ipv4_passes(address: str) -> None:
    assert not address_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "::5db8:d822",  # IPv4-compatible: deprecated, inside ::/8, refused whatever it embeds
        "64:ff9b:1::5db8:d822",  # NAT64 local use: one reading is public, the /48 one is 0.0.0.0
        "2001:0:5db8:d822:0:0:a247:27dd",  # Teredo with a public client: 2001::/23 is not global
    ],
)
def test_ipv6_embedding_ranges_that_are_not_global_stay_blocked(address: str) -> None:
    assert address_blocked(ipaddress.ip_address(address))


def test_nat64_local_use_is_read_at_every_prefix_length() -> None:
    """RFC 6052: the site chooses a /48, /56, /64 or /96 prefix inside 64:ff9b:1::/48, so the
    IPv4 may sit at any of those places (bits 64-71 are never part of it)."""
    ip = ipaddress.ip_address("64:ff9b:1:0:ac:1005:700:0")
    assert ipaddress.ip_address("172.16.5.7") in embedded_ipv4(ip)  # a /64 prefix
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b:1:a01:2:300::")) == tuple(
        ipaddress.ip_address(a) for a in ("10.1.2.3", "1.2.3.0", "2.3.0.0", "0.0.0.0")
    )


def test_embedded_metadata_address_needs_an_exact_allow_entry() -> None:
    """A CIDR allowing a 6to4 or NAT64 range does not let its metadata-service address through."""
    for cidr, address in (("2002::/16", "2002:a9fe:a9fe::"), ("64:ff9b::/96", "64:ff9b::a9fe:a9fe")):
        policy = AddressPolicy.from_entries([cidr])
        assert not policy.permits("x", ipaddress.ip_address(address))
        assert policy.permits("x", ipaddress.ip_address(address.replace("a9fe:a9fe", "a01:203")))
        assert AddressPolicy.from_entries([address]).permits("x", ipaddress.ip_address(address))


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
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[2002:a9fe:a9fe::]/latest/meta-data",  # 6to4 of the metadata service
        "http://[64:ff9b::7f00:1]:9/hook",  # NAT64 of loopback
    ],
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
