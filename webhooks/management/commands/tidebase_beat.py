"""``manage.py tidebase_beat``: Celery beat alone (ticks the reconciler and the delivery sweep)."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand

from config.celery import broker_folder


class Command(BaseCommand):
    help = "Run Celery beat for the reconciler and the delivery sweep."

    def handle(self, *args: Any, **options: Any) -> None:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "webhooks.heartbeat",  # config.celery's app, with the heartbeat signals connected
            "beat",
            "--schedule",
            str(broker_folder() / "celerybeat-schedule"),
            "--loglevel",
            os.environ.get("TIDEBASE_LOG_LEVEL", "INFO").lower(),
        ]
        os.execv(sys.executable, argv)  # noqa: S606
