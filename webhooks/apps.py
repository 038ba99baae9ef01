from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tidebase_core.outbox import register_dispatcher
        from webhooks.dispatch import outbox_dispatch

        register_dispatcher(outbox_dispatch)

        from tidebase_core import tracing

        if tracing.ENABLED:  # outbox rows keep the writing request's trace context
            from tidebase_core.outbox import register_recorder

            register_recorder(tracing.record_outbox)
