"""Export or verify the audit trail (docs/decisions.md, "Audit trail").

manage.py tidebase_audit export --format csv|jsonl [--since 2025-01-31] [--until 2025-02-01T12:00]
manage.py tidebase_audit verify        # exit 1 naming the first broken entry

``export`` streams the entries in seq order to stdout (bounded memory: read in chunks);
``--since`` is inclusive, ``--until`` exclusive, dates or ISO datetimes (UTC unless they say).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tidebase_core.services.audit import audit_entries, audit_verify, export_lines


def moment(text: str) -> dt.datetime:
    """A date (its UTC midnight) or an ISO datetime (UTC when naive)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a date or ISO datetime: {text!r}") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class Command(BaseCommand):
    help = "Export (csv|jsonl) or verify the tamper-evident audit trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["export", "verify"])
        parser.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
        parser.add_argument("--since", type=moment, default=None, help="from this UTC date/time (inclusive)")
        parser.add_argument("--until", type=moment, default=None, help="to this UTC date/time (exclusive)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "export":
            entries = audit_entries(since=options["since"], until=options["until"])
            for line in export_lines(options["format"], entries):
                self.stdout.write(line, ending="")
            return
        verdict = audit_verify()
        if not verdict.ok:
            raise CommandError(verdict.message, returncode=1)
        self.stdout.write(verdict.message)
