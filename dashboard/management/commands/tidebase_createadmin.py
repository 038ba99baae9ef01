"""Create (or promote) the first dashboard administrator on a fresh install.

manage.py tidebase_createadmin alice --email alice@example.com      # prompts for a password
TIDEBASE_ADMIN_PASSWORD=... manage.py tidebase_createadmin alice     # non-interactive
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from dashboard.roles import ensure_roles


class Command(BaseCommand):
    help = "Create or promote a dashboard administrator (superuser, member of the 'admin' group)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-env",
            default="TIDEBASE_ADMIN_PASSWORD",
            help="Environment variable holding the password (default TIDEBASE_ADMIN_PASSWORD); prompts when unset.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        password = os.environ.get(options["password_env"]) or self._prompt()
        User = get_user_model()
        user = User.objects.filter(username=username).first() or User(username=username)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        created = user.pk is None
        with transaction.atomic():
            user.email = options["email"] or user.email
            user.is_staff = True
            user.is_superuser = True
            user.set_password(password)
            user.save()
            user.groups.add(ensure_roles()["admin"])
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} administrator {username!r}; log in at /dashboard/login/")

    def _prompt(self) -> str:
        if not self.stdin_isatty():
            raise CommandError("no password: set TIDEBASE_ADMIN_PASSWORD or run in a terminal")
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("passwords do not match")
        return first

    @staticmethod
    def stdin_isatty() -> bool:
        import sys

        return sys.stdin.isatty()
