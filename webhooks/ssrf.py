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


def address_blocked(ip: IPAddress) -> bool:
    """True for anything that is not a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
            return exact or ip not in METADATA_ADDRESSES
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
