from __future__ import annotations

import datetime as dt

import pytest

from tidebase_core.exceptions import InvalidRequest
from tidebase_core.services.schedules import cron_next

REF = dt.datetime(2026, 6, 12, 10, 30, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * *", "2026-06-12T10:31"),
        ("*/15 * * * *", "2026-06-12T10:45"),
        ("0 9 * * *", "2026-06-13T09:00"),
        ("30 8 * * 1", "2026-06-15T08:30"),
        ("0 0 * * 7", "2026-06-14T00:00"),
    ],
)
def test_cron_next__matches_the_protocol_examples(expr: str, expected: str) -> None:
    assert cron_next(expr, REF).strftime("%Y-%m-%dT%H:%M") == expected


def test_cron_next__is_strictly_after_a_whole_minute() -> None:
    at = dt.datetime(2026, 6, 12, 10, 31, tzinfo=dt.UTC)
    assert cron_next("* * * * *", at) == dt.datetime(2026, 6, 12, 10, 32, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [("61 * * * *", "minute"), ("* * * *", "5 fields"), ("*/0 * * * *", "cron"), ("5-1 * * * *", "cron")],
)
def test_cron_next__invalid_expressions_say_why(expr: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        cron_next(expr, REF)
    assert reason.lower() in str(info.value).lower()
