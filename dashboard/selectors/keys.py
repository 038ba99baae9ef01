"""API keys."""

from __future__ import annotations

from django.db.models import F

from tidebase_core.models import ApiKey


def api_keys() -> list[ApiKey]:
    return list(ApiKey.objects.order_by(F("revoked_at").desc(nulls_first=True), "-created_at"))
