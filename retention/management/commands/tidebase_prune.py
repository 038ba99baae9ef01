"""Apply the retention policy now, or show what it would delete.

manage.py tidebase_prune --dry-run               # counts per category; deletes nothing
manage.py tidebase_prune [--batch-size 1000]     # one full pass, in bounded batches
manage.py tidebase_prune --max-seconds 60        # stop after a minute (the next pass continues)

The beat does the same every ``TIDEBASE_RETENTION_INTERVAL_S``; running both at once is safe
(batches lock with SKIP LOCKED, so each row is deleted once)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retention.policy import Policy
from retention.services import CATEGORIES, CATEGORY_FIELDS, batch_size_default, prune, would_delete


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise CommandError(f"expected a positive whole number, got {raw!r}") from None
    if value < 1:
        raise CommandError(f"expected a positive whole number, got {raw!r}")
    return value


class Command(BaseCommand):
    help = "Delete what the retention policy lets go, in bounded batches (--dry-run: only count)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
        parser.add_argument(
            "--batch-size", type=_positive, default=None, help="rows per transaction (default TIDEBASE_RETENTION_BATCH)"
        )
        parser.add_argument("--max-seconds", type=_positive, default=None, help="stop the pass after this long")
        parser.add_argument("--only", choices=CATEGORIES, action="append", help="prune only this category (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        policy = Policy.load()
        categories = tuple(options["only"] or CATEGORIES)
        if not any(
            policy.active(CATEGORY_FIELDS[c]) or (c == "state" and policy.active("state_versions")) for c in categories
        ):
            self.stdout.write("retention is off: no retention is set (TIDEBASE_RETAIN_* or the Storage page)")
            return
        started = time.monotonic()
        if options["dry_run"]:
            counts = would_delete(policy=policy)
            for category in categories:
                count = counts[category]
                if count.rows is None:
                    self.stdout.write(f"{category:>10}: off")
                    continue
                events = f" (with {count.events} events)" if count.events is not None else ""
                self.stdout.write(f"{category:>10}: would delete {count.rows}{events}")
            self.stdout.write(f"dry run: nothing deleted ({time.monotonic() - started:.1f}s)")
            return
        size = options["batch_size"] or batch_size_default()
        deadline = started + options["max_seconds"] if options["max_seconds"] else None
        report = prune(policy=policy, batch_size=size, deadline=deadline, categories=categories)
        for table, n in report.summary().items():
            self.stdout.write(f"{table:>32}: {n} deleted")
        self.stdout.write(
            f"{report.batches} batches of at most {size} rows in {time.monotonic() - started:.1f}s"
            + (f"; not finished: {', '.join(report.incomplete)}" if report.incomplete else "")
        )
