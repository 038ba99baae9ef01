"""Outbound request guard: refuse private, loopback, link-local, multicast, reserved and
cloud-metadata addresses, with the check made at connect time.

The host name is resolved once per connection, every resolved address is checked, and the
socket is connected to the checked address itself, so a DNS answer that changes between the
check and the connect (DNS rebinding) cannot reach an internal address. The request keeps the
original host name, so the ``Host`` header and TLS SNI/certificate checks are unchanged
(httpcore passes the origin host to ``start_tls``). Redirects are never followed.

``GuardedBackend`` also enforces one deadline over the whole attempt: every connect, read and
write is bounded by the time left, so a receiver that trickles bytes cannot hold a worker
longer than the total timeout.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpcore
from httpcore._backends.sync import SyncBackend  # the public alias is not typed as a class

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
"""Cloud metadata endpoints (AWS/GCP/Azure, ECS, Alibaba). Refused even when a CIDR allows them;
only an exact allow-list entry for the address lets them through."""


class BlockedAddress(Exception):
    """The destination resolves to an address outbound webhooks may not reach."""

    code = "blocked_address"


NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052 well-known NAT64 prefix: the IPv4 destination is the last 32 bits."""
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
"""RFC 8215 local-use NAT64 block: a site picks a prefix of length 48, 56, 64 or 96 inside it, so
where the IPv4 sits is the site's choice (RFC 6052 §2.2): every possible reading is checked."""
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""Deprecated IPv4-compatible addresses (``::a.b.c.d``), still tunnelled by some stacks (sit)."""


def _bits(value: int, start: int, length: int) -> int:
    """``length`` bits of a 128-bit address, starting at bit ``start`` (0 = most significant)."""
    return (value >> (128 - start - length)) & ((1 << length) - 1)


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped (``::ffff:0:0/96``),
    IPv4-compatible (``::/96``), 6to4 (``2002::/16``, bits 16-48), NAT64 (``64:ff9b::/96`` and
    every RFC 6052 reading of ``64:ff9b:1::/48``) and Teredo (``2001::/32``: its server and its
    de-obfuscated client). Empty for an IPv4 address or an IPv6 address that embeds none."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ()
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    value = int(ip)
    if ip in NAT64_WELL_KNOWN or ip in IPV4_COMPATIBLE:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in NAT64_LOCAL_USE:
        # RFC 6052 §2.2: bits 64-71 (the "u" octet) are never part of the IPv4 address.
        readings = (
            (_bits(value, 48, 16) << 16) | _bits(value, 72, 16),  # /48 prefix
            (_bits(value, 56, 8) << 24) | _bits(value, 72, 24),  # /56 prefix
            _bits(value, 72, 32),  # /64 prefix
            _bits(value, 96, 32),  # /96 prefix
        )
        return tuple(ipaddress.IPv4Address(v) for v in readings)
    return ()


def address_blocked(ip: IPAddress) -> bool:
    """True for anything that is not a public unicast address.

    An IPv6 address that embeds an IPv4 address (:func:`embedded_ipv4`) is blocked when any IPv4
    it leads to is (``2002:a9fe:a9fe::`` reaches the metadata service over 6to4). IPv4-mapped
    and well-known-prefix NAT64 addresses are judged by their IPv4 alone: the first *is* that
    address on a dual-stack socket, the second exists only to reach public IPv4 hosts from
    IPv6-only networks (Python counts ``64:ff9b::/96`` as reserved, being inside ``::/8``).
    The other embedding ranges must also pass on their own.
    """
    embedded = embedded_ipv4(ip)
    if any(address_blocked(v4) for v4 in embedded):
        return True
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in NAT64_WELL_KNOWN):
        return False  # its IPv4 passed just above
    return (
        ip in METADATA_ADDRESSES
        or not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class AddressPolicy:
    """Which destinations are allowed. ``allow`` entries are host names (exact, case-insensitive),
    IP addresses or CIDRs (``TIDEBASE_WEBHOOK_ALLOW_HOSTS``)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, ip: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.allow_hosts:
            return True
        if any(ip in net for net in self.allow_networks):
            exact = any(net.num_addresses == 1 for net in self.allow_networks if ip in net)
            return exact or not ({ip, *embedded_ipv4(ip)} & METADATA_ADDRESSES)
        return not address_blocked(ip)

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once and return the permitted addresses (in resolver order).
        Raises BlockedAddress when none is permitted."""
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        permitted: list[str] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if self.permits(host, ip) and str(ip) not in permitted:
                permitted.append(str(ip))
        if not permitted:
            raise BlockedAddress(f"{host} resolves only to blocked addresses")
        return permitted


@dataclass
class Deadline:
    at: float = field(default_factory=lambda: float("inf"))

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def bound(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise exc("webhook attempt deadline exceeded")
        return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation is bounded by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.bound(timeout, httpcore.ConnectTimeout)
        )
        return DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(SyncBackend):
    """httpcore network backend: resolve, check, connect to the checked address, bound by a deadline."""

    def __init__(self, policy: AddressPolicy, deadline: Deadline) -> None:
        self.policy = policy
        self.deadline = deadline
        self.connected_ip: str | None = None

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses: Sequence[str] = self.policy.resolve(host, port)
        last: Exception | None = None
        for ip in addresses:
            try:
                stream = super().connect_tcp(
                    ip,
                    port,
                    timeout=self.deadline.bound(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connected_ip = ip
            return DeadlineStream(stream, self.deadline)
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.NetworkStream:
        raise BlockedAddress("unix sockets are not allowed")
