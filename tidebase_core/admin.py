"""Admin registrations. Protocol state (runs, steps, gates, events, usage and its rollups) is read-only here:
editing it by hand would break leases, fencing and exactly-once decisions. API keys are
created with ``manage.py tidebase_key create`` (the secret is shown once) and can be revoked,
never deleted. Resolve tokens and channel secrets are never shown."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from tidebase_core import wire
from tidebase_core.models import (
    ApiKey,
    Channel,
    ChannelDelivery,
    Event,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    SlackUser,
    StateStream,
    StateVersion,
    Step,
    UsageDaily,
    UsageRecord,
    UsageRunTotal,
)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "workflow_name", "status", "attempt", "queue", "created_at")
    list_filter = ("status",)
    search_fields = ("id", "workflow_name")
    show_full_result_count = False


@admin.register(Step)
class StepAdmin(ReadOnlyAdmin):
    list_display = ("id", "run", "name", "status", "attempt", "updated_at")
    list_filter = ("status",)
    search_fields = ("run__id", "name")
    raw_id_fields = ("run",)


@admin.register(Gate)
class GateAdmin(ReadOnlyAdmin):
    list_display = ("id", "run", "name", "status", "actor", "decided_by", "resolved_at")
    list_filter = ("status",)
    exclude = ("resolve_token", "channels")  # a capability and inline channel secrets
    readonly_fields = ("channels_redacted",)
    raw_id_fields = ("run",)

    @admin.display(description="channels")
    def channels_redacted(self, obj: Gate) -> str:
        return json.dumps([wire.redact_channel(c) for c in obj.channels or []])


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("run", "seq", "type", "created_at")
    search_fields = ("run__id", "type")
    raw_id_fields = ("run",)


@admin.register(UsageRecord)
class UsageAdmin(ReadOnlyAdmin):
    list_display = ("run", "kind", "provider", "model", "total_tokens", "cost_usd", "created_at")
    list_filter = ("kind", "provider")
    raw_id_fields = ("run", "step")


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ("day", "workflow", "provider", "model", "records", "runs", "total_tokens", "cost_usd")
    list_filter = ("provider",)
    search_fields = ("workflow", "model")
    date_hierarchy = "day"
    show_full_result_count = False


@admin.register(UsageRunTotal)
class UsageRunTotalAdmin(ReadOnlyAdmin):
    list_display = ("run", "workflow", "records", "total_tokens", "cost_usd", "first_at", "last_at")
    search_fields = ("run__id", "workflow")
    raw_id_fields = ("run",)
    ordering = ("-cost_usd",)
    show_full_result_count = False


@admin.register(Channel)
class ChannelAdmin(ReadOnlyAdmin):
    list_display = ("id", "run", "url", "created_at")
    exclude = ("secret",)
    raw_id_fields = ("run",)


for model in (RunEdge, RunState, StateStream, StateVersion, RecoveryAttempt):
    admin.site.register(model, ReadOnlyAdmin)


@admin.register(ChannelDelivery)
class ChannelDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "run", "event_type", "status", "attempts", "http_status", "created_at")
    list_filter = ("status",)
    exclude = ("secret", "payload", "response_body", "error_text")  # may hold a gate's resolve token
    readonly_fields = ("delivery_redacted",)
    raw_id_fields = ("run",)

    @admin.display(description="payload and answer")
    def delivery_redacted(self, obj: ChannelDelivery) -> str:
        out = wire.delivery_out(obj, show_token=False)
        return json.dumps({k: out[k] for k in ("payload", "responseBody", "errorText")})


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "prefix", "scope", "created_at", "revoked_at")
    readonly_fields = ("name", "prefix", "scope", "created_at")
    exclude = ("key_hash",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Keys are revoked, never deleted: with TIDEBASE_AUTH=auto, an API that ever had a key
        # stays closed, and deleting every key row would silently reopen it.
        return False


@admin.register(SlackUser)
class SlackUserAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Which Django user a Slack user's button clicks decide as (also ``manage.py
    tidebase_slack_link``)."""

    list_display = ("slack_user_id", "user")
    search_fields = ("slack_user_id", "user__username")
    raw_id_fields = ("user",)
