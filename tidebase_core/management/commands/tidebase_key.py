"""Create, list and revoke app API keys. The secret is printed once; only its SHA-256 is kept."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tidebase_core.auth import generate_key, hash_key, key_cache
from tidebase_core.models import ApiKey, KeyScope


class Command(BaseCommand):
    help = "Manage API keys: create NAME --scope agent|operator|admin, list, revoke NAME."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("name")
        create.add_argument("--scope", choices=[s.value for s in KeyScope], default="agent")
        sub.add_parser("list")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            if ApiKey.objects.filter(name=options["name"]).exists():
                raise CommandError(f"a key named {options['name']!r} already exists")
            raw = generate_key()
            ApiKey.objects.create(name=options["name"], prefix=raw[:10], key_hash=hash_key(raw), scope=options["scope"])
            self.stdout.write(raw)
            self.stderr.write(f"created {options['scope']} key {options['name']!r}; the secret above is not stored")
        elif action == "list":
            for key in ApiKey.objects.order_by("created_at"):
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                self.stdout.write(f"{key.name}\t{key.scope}\t{key.prefix}…\t{state}")
        else:
            updated = ApiKey.objects.filter(name=options["name"], revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            if not updated:
                raise CommandError(f"no active key named {options['name']!r}")
            key_cache.clear()
            self.stdout.write(f"revoked {options['name']!r}")
