"""Create, list and revoke app API keys, and show what the API asks of clients. The secret is
printed once; only its SHA-256 is kept."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError
from django.utils import timezone

from tidebase_core.auth import Access, access, generate_key, hash_key, key_cache
from tidebase_core.models import ApiKey, KeyScope

FIRST_KEY_WARNING = (
    "note: this is the first API key, so the API is now closed: every client without a valid key "
    "(SDKs and workers without TIDEBASE_API_KEY, scripts, Studio) gets 401 unauthorized from now "
    "on, even after every key is revoked. Set TIDEBASE_AUTH=open to open it again deliberately."
)


def describe(state: Access) -> str:
    """One line saying whether clients need a key, and why."""
    if state.mode == "open":
        return "API open to everyone: TIDEBASE_AUTH=open (keys are not checked)"
    if state.mode == "required":
        return "API closed: every client needs a key (TIDEBASE_AUTH=required)"
    if state.required:
        why = "app keys exist (revoked ones count)" if state.keys_in_use else "TIDEBASE_API_KEY is set"
        return f"API closed: every client needs a key ({why}; TIDEBASE_AUTH=auto)"
    return (
        "API open to everyone: no key was ever created (TIDEBASE_AUTH=auto). "
        "Creating the first key closes it for clients without one."
    )


class Command(BaseCommand):
    help = "Manage API keys: create NAME --scope agent|operator|admin, list, revoke NAME, status."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("name")
        create.add_argument("--scope", choices=[s.value for s in KeyScope], default="agent")
        sub.add_parser("list")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("name")
        sub.add_parser("status", help="whether clients need a key, and why")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            if ApiKey.objects.filter(name=options["name"]).exists():
                raise CommandError(f"a key named {options['name']!r} already exists")
            closes = access().first_key_closes
            raw = generate_key()
            try:  # a concurrent create of the same name: the unique index decides
                ApiKey.objects.create(
                    name=options["name"], prefix=raw[:10], key_hash=hash_key(raw), scope=options["scope"]
                )
            except IntegrityError:
                raise CommandError(f"a key named {options['name']!r} already exists") from None
            key_cache.clear()
            self.stdout.write(raw)
            self.stderr.write(f"created {options['scope']} key {options['name']!r}; the secret above is not stored")
            if closes:
                self.stderr.write(FIRST_KEY_WARNING)
        elif action == "list":
            for key in ApiKey.objects.order_by("created_at"):
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                self.stdout.write(f"{key.name}\t{key.scope}\t{key.prefix}…\t{state}")
        elif action == "status":
            self.stdout.write(describe(access()))
        else:
            updated = ApiKey.objects.filter(name=options["name"], revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            if not updated:
                raise CommandError(f"no active key named {options['name']!r}")
            key_cache.clear()
            self.stdout.write(f"revoked {options['name']!r}")
            if not ApiKey.objects.filter(revoked_at__isnull=True).exists() and access().required:
                self.stderr.write("no active key remains: the API stays closed; create a key to let clients in")
