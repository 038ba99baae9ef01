"""Fixtures for the SDK unit tests: no Django, no database, no network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.fake_server import FakeServer
from tidebase import RetryPolicy, Tidebase
from tidebase.aio import AsyncTidebase

NO_WAIT = RetryPolicy(max_retries=3, backoff_base_s=0.0, backoff_max_s=0.0)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIDEBASE_URL", "TIDEBASE_API_KEY", "TIDEBASE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def tide(fake: FakeServer) -> Iterator[Tidebase]:
    with Tidebase("http://tidebase.test", transport=fake.transport(), retry=NO_WAIT) as client:
        yield client


def make_async(fake: FakeServer, **kwargs: object) -> AsyncTidebase:
    return AsyncTidebase("http://tidebase.test", transport=fake.transport(), retry=NO_WAIT, **kwargs)  # type: ignore[arg-type]
