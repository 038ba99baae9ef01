"""Formatting for the dashboard: times (relative and absolute), durations, JSON, money."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


def _ago(delta: dt.timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds < 5:
        return "just now" if delta.total_seconds() >= 0 else "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            amount = seconds // size
            text = f"{amount} {unit}"
            if unit in ("d", "h") and size > 1 and seconds % size >= size // 60 and amount < 3:
                lower = {"d": ("h", 3600), "h": ("min", 60)}[unit]
                text += f" {(seconds % size) // lower[1]} {lower[0]}"
            break
    return f"{text} ago" if delta.total_seconds() >= 0 else f"in {text}"


@register.simple_tag
def when(value: dt.datetime | None, now: dt.datetime | None = None) -> SafeString | str:
    """``<time>`` with the relative time, and the absolute UTC time beside it (and as a title)."""
    if value is None:
        return "—"
    reference = now or timezone.now()
    absolute = value.astimezone(dt.UTC)
    full = absolute.strftime("%Y-%m-%d %H:%M:%S UTC")
    short = absolute.strftime("%b %d, %H:%M:%S") if absolute.year == reference.year else full
    return format_html(
        '<time datetime="{}" title="{}"><span class="rel">{}</span> <span class="abs">{}</span></time>',
        absolute.isoformat(),
        full,
        _ago(reference - value),
        short,
    )


@register.filter
def duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return human_ms((end - start).total_seconds() * 1000)


@register.filter
def human_ms(ms: float | int | None) -> str:
    if ms is None:
        return "—"
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@register.filter
def is_empty_json(value: Any) -> bool:
    return value in (None, {}, [], "")


@register.filter
def usd(value: Decimal | float | None) -> str:
    if value is None:
        return "—"
    amount = Decimal(value)
    if amount == 0:
        return "$0.00"
    if abs(amount) < Decimal("0.01"):
        return f"${amount:.6f}".rstrip("0")
    return f"${amount:,.2f}"


@register.filter
def intcomma0(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,}"


@register.filter
def short_id(value: str | None) -> str:
    if not value:
        return ""
    return value if len(value) <= 14 else f"{value[:10]}…{value[-4:]}"


@register.filter
def get_item(mapping: dict[str, Any], key: str) -> Any:
    return mapping.get(key)


@register.filter
def timedelta_human(value: dt.timedelta | None) -> str:
    """``timedelta(minutes=90)`` → ``1 hour 30 minutes``: the two largest whole units."""
    if value is None:
        return "—"
    seconds = max(0, int(value.total_seconds()))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    return " ".join(parts[:2]) or "0 seconds"


_PRINCIPALS = {
    "user": "{}",
    "key": "API key {}",
    "token": "resolve-token link",
}
_FIXED_PRINCIPALS = {
    "anonymous": "anonymous API caller (open API)",
    "api-key:env": "TIDEBASE_API_KEY",
    "reconciler": "timeout",
}


@register.filter
def principal(value: str | None) -> str:
    """A gate's ``decided_by`` (the authenticated identity, ``tidebase_core.auth.Principal.label``)
    as an operator reads it: ``user:alice`` → ``alice``, ``key:ci-bot`` → ``API key ci-bot``."""
    if not value:
        return "—"
    if value in _FIXED_PRINCIPALS:
        return _FIXED_PRINCIPALS[value]
    kind, sep, name = value.partition(":")
    if sep and kind in _PRINCIPALS:
        return _PRINCIPALS[kind].format(name)
    return value


@register.filter
def claimed_actor(gate: Any) -> str:
    """The gate's free-text ``actor`` when it says something ``decided_by`` does not: what the
    caller claimed, shown only as a labelled claim. Empty when it just repeats the principal."""
    actor = (getattr(gate, "actor", None) or "").strip()
    decided_by = getattr(gate, "decided_by", None) or ""
    if not actor or actor == decided_by or (decided_by and actor == principal(decided_by)):
        return ""
    return actor
