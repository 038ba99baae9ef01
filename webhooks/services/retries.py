"""When to try a failed attempt again: the jittered schedule and the receiver's ``Retry-After``."""

from __future__ import annotations

import random
from collections.abc import Sequence

RETRY_AFTER_MAX_S = 24 * 3600.0
"""A receiver's ``Retry-After`` is honoured up to a day."""
JITTER = 0.1
"""Each retry delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]."""


def retry_delay(
    number: int, schedule: Sequence[float], *, retry_after_s: float | None = None, rng: random.Random | None = None
) -> float | None:
    """Seconds before the attempt after attempt ``number`` (1-based), or None when the schedule
    is exhausted. Jittered by ±``JITTER``; a ``Retry-After`` longer than the schedule wins."""
    if number > len(schedule):
        return None
    delay = schedule[number - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_MAX_S))
    return delay
