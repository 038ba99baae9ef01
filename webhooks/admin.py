from __future__ import annotations

from django.contrib import admin

from webhooks.models import DeliveryAttempt


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("delivery_id", "kind", "number", "trigger", "started_at", "latency_ms", "http_status", "error")
    list_filter = ("kind", "http_status")
    search_fields = ("delivery_id", "url")
    readonly_fields = [f.name for f in DeliveryAttempt._meta.fields]
    ordering = ("-started_at",)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
