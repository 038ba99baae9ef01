"""Live tests of ``tidebase.pydantic_ai`` (durable Pydantic AI agents) against a real server.

* ``short_lease``: a server with ``TIDEBASE_LEASE_MS=1500``, so a SIGKILLed worker's run lease
  lapses quickly and a resume can take the run over (before that: 409 ``run_leased``).
* ``data_dir``: where the agents log each model call (what a provider would bill) and each
  external write (one JSON line each), so tests count what really happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.live import detail as detail
from tests.live import pending_gate as pending_gate
from tests.live import wait_for as wait_for

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_env(no_client_env: None) -> None:
    """Every test here runs without TIDEBASE_* from the environment."""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def step_names(url: str, run_id: str, status: str | None = "completed") -> list[str]:
    steps = detail(url, run_id)["steps"]
    return [s["name"] for s in steps if status is None or s["status"] == status]


def resolve_gate(url: str, run_id: str, gate: dict[str, Any], decision: str = "approved") -> None:
    """Resolve a gate as the dashboard / an approval link does: with the resolve token that
    ``GET /runs/:id`` shows an operator, no SDK involved."""
    response = httpx.post(
        f"{url}/runs/{run_id}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": decision, "actor": "test:operator"},
        timeout=30,
    )
    response.raise_for_status()
