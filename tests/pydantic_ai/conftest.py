"""Live tests of ``tidebase.pydantic_ai`` (durable Pydantic AI agents) against a real server.

* ``short_lease``: a server with ``TIDEBASE_LEASE_MS=1500``, so a SIGKILLed worker's run lease
  lapses quickly and a resume can take the run over (before that: 409 ``run_leased``).
* ``data_dir``: where the agents log each model call (what a provider would bill) and each
  external write (one JSON line each), so tests count what really happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tidebase import RunLeased

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_env(no_client_env: None) -> None:
    """Every test here runs without TIDEBASE_* from the environment."""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def detail(url: str, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/runs/{run_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def step_names(url: str, run_id: str, status: str | None = "completed") -> list[str]:
    steps = detail(url, run_id)["steps"]
    return [s["name"] for s in steps if status is None or s["status"] == status]


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.05) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def pending_gate(url: str, run_id: str) -> dict[str, Any] | None:
    return next((g for g in detail(url, run_id)["gates"] if g["status"] == "pending"), None)


def resolve_gate(url: str, run_id: str, gate: dict[str, Any], decision: str = "approved") -> None:
    """Resolve a gate as the dashboard / an approval link does: with the resolve token that
    ``GET /runs/:id`` shows an operator, no SDK involved."""
    response = httpx.post(
        f"{url}/runs/{run_id}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": decision, "actor": "test:operator"},
        timeout=30,
    )
    response.raise_for_status()


async def until_unleased(call: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """Retry while the server answers 409 ``run_leased`` (``tidebase.RunLeased``): a dead
    worker's run lease has not lapsed yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except RunLeased:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
