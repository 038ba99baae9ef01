"""Serve the project (``tidebase_core.server``: uvicorn in front of the gateway, which runs
Django on a thread pool; open connections wait on the event loop). Applies migrations first
unless TIDEBASE_AUTO_MIGRATE=0, in which case it refuses to start with migrations pending
(PROTOCOL.md §16).

With debug off it refuses the built-in development ``SECRET_KEY`` unless it listens on loopback
only: anyone can read that key, so anyone could forge dashboard sessions and CSRF tokens."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tidebase_core.checks import is_loopback, uses_development_secret_key
from tidebase_core.server import server_argv


class Command(BaseCommand):
    help = "Run the Tidebase web server on $PORT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--host", default=os.environ.get("TIDEBASE_HOST", "127.0.0.1"))
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))
        parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "16")))

    def handle(self, *args: Any, **options: Any) -> None:
        self._refuse_development_key(options["host"])
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if pending:
            if not settings.TIDEBASE_AUTO_MIGRATE:
                raise CommandError(f"{len(pending)} migrations are pending and TIDEBASE_AUTO_MIGRATE=0")
            call_command("migrate", interactive=False, verbosity=1)
        connection.close()
        bind = f"{options['host']}:{options['port']}"
        self.stdout.write(banner(options["host"], options["port"]))
        self.stdout.flush()  # before execv replaces this process
        argv = server_argv(bind=bind, workers=options["workers"], threads=options["threads"])
        if settings.DEBUG:
            argv.append("--access-log")
        os.execv(sys.executable, argv)  # noqa: S606

    def _refuse_development_key(self, host: str) -> None:
        """On loopback the key is only warned about (system check ``tidebase.W001``, printed above)."""
        if not settings.DEBUG and uses_development_secret_key() and not is_loopback(host):
            raise CommandError(
                f"refusing to listen on {host!r} with the development SECRET_KEY and debug off: anyone can "
                "read that key and forge sessions. Set DJANGO_SECRET_KEY (50+ random characters), or listen "
                'on 127.0.0.1 (README, "Production settings").'
            )


def banner(host: str, port: int) -> str:
    """The one start-up message: printed here, before the web processes start, so once."""
    shown = "localhost" if host in ("0.0.0.0", "::", "[::]", "") else host  # noqa: S104
    base = f"http://{shown if ':' not in shown or shown.startswith('[') else f'[{shown}]'}:{port}"
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    # Installed from the wheel there is no manage.py: its console script stands in (docs/deploy.md).
    manage = f"{python} manage.py" if (settings.BASE_DIR / "manage.py").is_file() else "tidebase-server"
    return "\n".join(
        [
            f"Tidebase is serving on {base}  (Ctrl-C to stop)",
            f"  API        {base}/",
            f"  Dashboard  {base}/dashboard/",
            f"  Admin      {base}/admin/",
            f"  API docs   {base}/api/docs",
            f"  First admin: {manage} tidebase_createadmin <username>",
        ]
    )
