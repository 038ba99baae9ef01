from __future__ import annotations

from django.apps import AppConfig


class TidebaseCoreConfig(AppConfig):
    name = "tidebase_core"
    verbose_name = "Tidebase"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tidebase_core import checks  # noqa: F401  (registers the production system checks)
