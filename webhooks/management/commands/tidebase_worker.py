"""``manage.py tidebase_worker``: the Celery worker that delivers webhooks, with beat embedded.

Threads pool by default: delivery is network-bound, and a hung receiver then costs one thread
for at most ``TIDEBASE_WEBHOOK_TIMEOUT_S``, never a process. Run any number of these; every beat
tick is safe to run twice (advisory lock, ``SKIP LOCKED``). ``--no-beat`` runs a worker only
(pair it with ``manage.py tidebase_beat``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from config.celery import broker_folder
from tidebase_core import metrics


def celery_argv(*, concurrency: int, beat: bool, loglevel: str, pool: str, schedule: Path | None = None) -> list[str]:
    """The worker's command line (also used by the test suite's workers). ``schedule`` is beat's
    state file, by default in the broker folder."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config.celery",
        "--quiet",  # no ASCII-art banner: tidebase_worker prints one line instead
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--queues",
        "tidebase",
        # Connects the heartbeat signals (GET /ready, dashboard "Processes"); a forked embedded
        # beat inherits them.
        "--include",
        "webhooks.heartbeat",
    ]
    if beat:
        argv += ["--beat", "--schedule", str(schedule or broker_folder() / "celerybeat-schedule")]
    return argv


class Command(BaseCommand):
    help = "Run the webhook worker (Celery) with the reconciler/sweep beat embedded."
    # The system checks are about the web server (its SECRET_KEY, hosts, cookies); tidebase_serve
    # prints them. Printed here too, `make run` showed each warning twice.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=settings.TIDEBASE_WEBHOOK_CONCURRENCY)
        parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
        parser.add_argument("--no-beat", action="store_true", help="worker only; run tidebase_beat elsewhere")
        parser.add_argument("--loglevel", default=os.environ.get("TIDEBASE_LOG_LEVEL", "INFO").lower())

    def handle(self, *args: Any, **options: Any) -> None:
        argv = celery_argv(
            concurrency=options["concurrency"],
            beat=not options["no_beat"],
            loglevel=options["loglevel"],
            pool=options["pool"],
        )
        # A node name of its own (this pid survives the exec): Celery's default, celery@<host>, is
        # shared by every worker on a machine, and RabbitMQ refuses the second one's control queue.
        argv += ["--hostname", f"tidebase-{os.getpid()}@%h"]
        broker = settings.CELERY_BROKER_URL or f"embedded ({broker_folder()})"
        self.stdout.write(f"Tidebase webhook worker: broker {broker}, {options['concurrency']} {options['pool']}")
        sys.stdout.flush()
        metrics.metrics_directory(owner=False)  # TIDEBASE_METRICS_DIR: the web server's /metrics adds ours in
        os.execv(sys.executable, argv)  # noqa: S606
