"""``manage.py tidebase_run``: what ``make run`` runs. Supervises the web server
(``tidebase_serve``) and the webhook worker (``tidebase_worker``, beat embedded unless
``--beat separate`` or ``--beat none``), restarting whichever dies and stopping all of them,
with everything they forked, on Ctrl-C or SIGTERM (``tidebase_core.supervisor``)."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from tidebase_core import metrics
from tidebase_core.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run the web server and the webhook worker (with beat), restarting any that dies."
    # Its children run the checks that concern them (tidebase_serve prints the web's).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--host", default=os.environ.get("TIDEBASE_HOST", "127.0.0.1"))
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))
        parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "16")))
        parser.add_argument(
            "--beat",
            choices=["embedded", "separate", "none"],
            default="embedded",
            help="embedded in the worker (default, as before), a supervised tidebase_beat process, or none",
        )
        parser.add_argument("--no-worker", action="store_true", help="serve the web only")

    def handle(self, *args: Any, **options: Any) -> None:
        manage_py = settings.BASE_DIR / "manage.py"
        # Installed from a wheel there is no manage.py: the children run `python -m config.cli`.
        manage = [sys.executable, str(manage_py)] if manage_py.is_file() else [sys.executable, "-m", "config.cli"]
        children = {
            "web": [
                *manage,
                "tidebase_serve",
                "--host",
                options["host"],
                "--port",
                str(options["port"]),
                "--workers",
                str(options["workers"]),
                "--threads",
                str(options["threads"]),
            ]
        }
        if not options["no_worker"]:
            children["worker"] = [*manage, "tidebase_worker", *([] if options["beat"] == "embedded" else ["--no-beat"])]
            if options["beat"] == "separate":
                children["beat"] = [*manage, "tidebase_beat"]
        folder = metrics.metrics_directory(owner=True)  # one folder for the web processes and the worker
        if folder:
            metrics.clear_directory(folder)  # nothing writes to it before the children start
        supervisor = Supervisor(children, cwd=str(settings.BASE_DIR) if manage_py.is_file() else os.getcwd())
        supervisor.install_signal_handlers()
        raise SystemExit(supervisor.run())
