"""Link a Slack user to a Django user, so their clicks on a gate message's buttons decide as that
user (their groups, their name in the audit trail): ``tidebase_slack_link alice U0123ABC``.
``--remove`` unlinks one Slack id, or every id of the user when none is given. The Slack id is
in the user's Slack profile (⋮ → Copy member ID)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tidebase_core.models import SlackUser

SLACK_ID = re.compile(r"^[A-Z0-9]{2,64}$")
"""Slack member ids: ``U…`` (or ``W…`` on Enterprise Grid), upper-case letters and digits."""


class Command(BaseCommand):
    help = "Link a Slack user id to a Tidebase (Django) user: USERNAME SLACK_USER_ID [--remove]."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("slack_user_id", nargs="?")
        parser.add_argument("--remove", action="store_true", help="unlink instead of link")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        slack_id = options["slack_user_id"]
        if slack_id is not None and not SLACK_ID.match(slack_id):
            raise CommandError(f"{slack_id!r} is not a Slack member id (like U0123ABCD)")
        if options["remove"]:
            links = SlackUser.objects.filter(user=user)
            if slack_id is not None:
                links = links.filter(slack_user_id=slack_id)
            removed, _ = links.delete()
            if not removed:
                raise CommandError(
                    f"{user.get_username()} has no Slack link{'' if slack_id is None else ' ' + slack_id}"
                )
            self.stdout.write(f"unlinked {removed} Slack id(s) from {user.get_username()}")
            return
        if slack_id is None:
            raise CommandError("give the Slack member id to link (or --remove)")
        before = SlackUser.objects.filter(slack_user_id=slack_id).select_related("user").first()
        SlackUser.objects.update_or_create(slack_user_id=slack_id, defaults={"user": user})  # one row per Slack id
        was = f" (was {before.user.get_username()})" if before is not None and before.user_id != user.pk else ""
        self.stdout.write(f"linked Slack {slack_id} → {user.get_username()}{was}")
