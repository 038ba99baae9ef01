"""Retention settings from the environment (plain module: ``config.settings`` imports it).

Every field is a number of days (``state_versions``: a number of versions); unset, empty or ``0``
means "keep forever" (docs/decisions.md, "Retention"). Nothing is pruned until an operator sets a
value, here or in the dashboard."""

from __future__ import annotations

from collections.abc import Mapping

FIELDS: dict[str, str] = {
    "completed_days": "TIDEBASE_RETAIN_COMPLETED_DAYS",
    "failed_days": "TIDEBASE_RETAIN_FAILED_DAYS",
    "cancelled_days": "TIDEBASE_RETAIN_CANCELLED_DAYS",
    "usage_days": "TIDEBASE_RETAIN_USAGE_DAYS",
    "rollup_days": "TIDEBASE_RETAIN_ROLLUP_DAYS",
    "delivery_days": "TIDEBASE_RETAIN_DELIVERY_DAYS",
    "state_days": "TIDEBASE_RETAIN_STATE_DAYS",
    "state_versions": "TIDEBASE_RETAIN_STATE_VERSIONS",
}
"""Policy field -> environment variable of its global default."""

MAX_VALUE = 36_500
"""A hundred years: larger values are refused (they would overflow date arithmetic)."""


def parse_value(name: str, raw: str | None) -> int | None:
    """``None`` (keep forever) for unset, empty or ``0``; else a positive integer."""
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be a whole number of days (0: keep forever), got {raw!r}") from None
    if value < 0 or value > MAX_VALUE:
        raise ValueError(f"{name} must be between 0 (keep forever) and {MAX_VALUE}, got {value}")
    return value or None


def rollup_problem(usage_days: int | None, rollup_days: int | None) -> str | None:
    """Why a pair of raw-usage and rollup retentions is refused, or None. Rollups summarise raw
    rows, so they must outlive them: a rollup retention needs a shorter raw-usage retention."""
    if rollup_days is None:
        return None
    if usage_days is None:
        return "rollups can only be pruned when raw usage rows are pruned too (set the usage retention below it)"
    if rollup_days <= usage_days:
        return f"rollups must be kept longer than raw usage rows ({rollup_days} <= {usage_days} days)"
    return None


def env_policy(environ: Mapping[str, str]) -> dict[str, int | None]:
    """The global defaults from the environment. Raises ValueError on a bad value, so a typo
    stops the server at start-up instead of deleting the wrong data."""
    policy = {field: parse_value(var, environ.get(var)) for field, var in FIELDS.items()}
    problem = rollup_problem(policy["usage_days"], policy["rollup_days"])
    if problem:
        raise ValueError(f"TIDEBASE_RETAIN_ROLLUP_DAYS: {problem}")
    return policy
