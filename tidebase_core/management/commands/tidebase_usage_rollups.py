"""Check or rebuild the usage rollups (tb_usage_daily, tb_usage_run) from tb_usage.

manage.py tidebase_usage_rollups check [--since 2025-01-31]     # exit 1 if a rollup row differs
manage.py tidebase_usage_rollups rebuild [--since 2025-01-31]   # recompute from that UTC day on

``usage_record`` keeps the rollups current in the transaction of each record, so neither is needed
in normal operation. Rebuild after a rolling deploy of migration 0006 (records written by older
code are not in the rollups) or after writing tb_usage by hand. A rebuild blocks usage writes
while it runs (a SHARE lock on tb_usage) and drops the usage of deleted runs from the rebuilt days.

Once the retention policy has pruned raw usage records, the rollups are the only copy of that
usage: ``rebuild`` refuses days up to the pruned ones (``--include-pruned`` drops them from the
rollups anyway) and ``check`` starts after them.
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
        parser.add_argument(
            "--include-pruned",
            action="store_true",
            help="rebuild days whose raw records retention pruned too (their usage leaves the rollups)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since: dt.date | None = options["since"]
        started = time.monotonic()
        first_kept = _first_unpruned_day()
        if first_kept is not None and (since is None or since < first_kept):
            if options["action"] == "rebuild" and not options["include_pruned"]:
                raise CommandError(
                    f"raw usage records up to {first_kept - dt.timedelta(days=1)} were pruned by retention: a rebuild "
                    f"from before {first_kept} would drop their usage from the rollups; use --since {first_kept}"
                )
            if options["action"] == "check":
                self.stdout.write(f"checking from {first_kept}: raw usage before it was pruned by retention")
                since = first_kept
        if options["action"] == "rebuild":
            written = usage_rollups_rebuild(since=since)
            self.stdout.write(f"rebuilt {written} in {time.monotonic() - started:.1f}s")
            return
        differing = usage_rollups_check(since=since)
        self.stdout.write(f"differing rows {differing} ({time.monotonic() - started:.1f}s)")
        if any(differing.values()):
            raise CommandError("the rollups differ from tb_usage: run `tidebase_usage_rollups rebuild`")


def _first_unpruned_day() -> dt.date | None:
    """The first UTC day whose rollups can be rebuilt from tb_usage, when the retention app has
    pruned raw usage records (None: nothing pruned)."""
    from django.apps import apps

    if not apps.is_installed("retention"):
        return None
    from retention.services import usage_pruned_through

    through = usage_pruned_through()
    return None if through is None else through.astimezone(dt.UTC).date() + dt.timedelta(days=1)
