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
