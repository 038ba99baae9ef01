"""Helpers for tests that drive a live server over HTTP (shared by the SDK and Pydantic AI suites)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from tidebase import RunLeased

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


def until_unleased(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Retry ``call`` while the server answers 409 ``run_leased`` (``tidebase.RunLeased``): a
    dead worker's run lease has not lapsed yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except RunLeased:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def until_unleased_async(call: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """``until_unleased`` for coroutines."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except RunLeased:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def encoded(segment: str) -> str:
    """The same path segment with its first ``_`` percent-encoded: the request then takes the
    framework path instead of the WSGI hot path (§19.9), for comparing the two."""
    return segment.replace("_", "%5F", 1)


def shape(value: Any) -> Any:
    """Keys and value types, recursively (ids and times differ between two answers)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__
