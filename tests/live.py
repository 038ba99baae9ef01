"""Helpers for tests that drive a live server over HTTP (shared by the SDK and Pydantic AI suites)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def detail(url: str, run_id: str) -> dict[str, Any]:
    """``GET /runs/:id``: the run with its steps, gates, events, usage..."""
    response = httpx.get(f"{url}/runs/{run_id}", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy (a liveness bound, not a timing assertion)."""
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
