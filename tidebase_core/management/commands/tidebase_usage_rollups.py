"""Check or rebuild the usage rollups (tb_usage_daily, tb_usage_run) from tb_usage.

manage.py tidebase_usage_rollups check [--since 2025-01-31]     # exit 1 if a rollup row differs
manage.py tidebase_usage_rollups rebuild [--since 2025-01-31]   # recompute from that UTC day on

``usage_record`` keeps the rollups current in the transaction of each record, so neither is needed
in normal operation. Rebuild after a rolling deploy of migration 0006 (records written by older
code are not in the rollups) or after writing tb_usage by hand. A rebuild blocks usage writes
while it runs (a SHARE lock on tb_usage) and drops the usage of deleted runs from the rebuilt days.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tidebase_core.services.usage import usage_rollups_check, usage_rollups_rebuild


class Command(BaseCommand):
    help = "Check or rebuild the usage rollups from tb_usage: check|rebuild [--since YYYY-MM-DD]."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["check", "rebuild"])
        parser.add_argument(
            "--since", type=dt.date.fromisoformat, default=None, help="first UTC day (default: everything)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since: dt.date | None = options["since"]
        started = time.monotonic()
        if options["action"] == "rebuild":
            written = usage_rollups_rebuild(since=since)
            self.stdout.write(f"rebuilt {written} in {time.monotonic() - started:.1f}s")
            return
        differing = usage_rollups_check(since=since)
        self.stdout.write(f"differing rows {differing} ({time.monotonic() - started:.1f}s)")
        if any(differing.values()):
            raise CommandError("the rollups differ from tb_usage: run `tidebase_usage_rollups rebuild`")
