"""Fixtures for the SDK's live tests: our ``tidebase`` client (sync and async) against a real
server on the test database.

* ``live_server_url`` (tests/conftest.py): the shared open server, default 60 s leases.
* ``short_lease`` (tests/conftest.py): a second open server with ``TIDEBASE_LEASE_MS=1500`` for crash, takeover
  and cross-client tests, where a dead worker's run lease has to lapse before a resume.
* ``RequestLog``: a wrapping transport that records every request the SDK sends, so tests can
  count round trips (the resume checkpoint load, gate long-polls) without timing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from tests.live import detail as detail
from tests.live import pending_gate as pending_gate
from tests.live import until_unleased as until_unleased
from tests.live import until_unleased_async as until_unleased_async
from tests.live import wait_for as wait_for
from tidebase import RetryPolicy

FAST_RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.05, backoff_max_s=0.2)

T = TypeVar("T")


class Crash(BaseException):
    """Stands in for a dead process: the SDKs catch ``Exception`` only, so nothing reports the
    failure, and the run lease and the current step lease stay with the 'dead' worker."""


@pytest.fixture(autouse=True)
def _no_env(no_client_env: None) -> None:
    """Every test here runs without TIDEBASE_* from the environment."""


@dataclass
class RequestLog:
    """Every request an SDK client sent: ``(method, path, query)``."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def record(self, request: httpx.Request) -> None:
        self.entries.append((request.method, request.url.path, request.url.query.decode()))

    def clear(self) -> None:
        self.entries.clear()

    def count(self, method: str, path_suffix: str = "") -> int:
        return sum(1 for m, p, _ in self.entries if m == method and p.endswith(path_suffix))

    def matching(self, method: str, contains: str) -> list[tuple[str, str, str]]:
        return [e for e in self.entries if e[0] == method and contains in e[1]]


class LoggingTransport(httpx.HTTPTransport):
    def __init__(self, log: RequestLog) -> None:
        super().__init__()
        self.log = log

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.record(request)
        return super().handle_request(request)


class AsyncLoggingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, log: RequestLog) -> None:
        super().__init__()
        self.log = log

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.log.record(request)
        return await super().handle_async_request(request)


def resolve_gate(url: str, run_id: str, gate: dict[str, Any], decision: str = "approved") -> dict[str, Any]:
    """Resolve a gate the way an approval link does: with its resolve token, no API key."""
    response = httpx.post(
        f"{url}/runs/{run_id}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": decision, "actor": "test:operator"},
        timeout=30,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def cancel_run(url: str, run_id: str) -> None:
    httpx.post(f"{url}/runs/{run_id}/cancel", json={"reason": "test", "actor": "test"}, timeout=30).raise_for_status()
