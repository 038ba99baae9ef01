"""``manage.py tidebase_redeliver ID [ID ...]``: send dead-lettered webhooks again.

The kind is inferred from the id prefix (``del_`` channel delivery, ``rec_`` recovery/invoke,
``ntf_`` approval email or Slack message); ``--all-failed`` redelivers every dead-lettered row."""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tidebase_core.models import ChannelDelivery, DeliveryStatus, Notification, RecoveryAttempt
from webhooks import dispatch
from webhooks.services.kinds import Kind
from webhooks.services.redelivery import DeliveryNotFound, delivery_redeliver


def kind_of(delivery_id: str) -> Kind:
    if delivery_id.startswith("del_"):
        return "channel"
    if delivery_id.startswith("rec_"):
        return "recovery"
    if delivery_id.startswith("ntf_"):
        return "notification"
    raise CommandError(f"{delivery_id}: not a delivery (del_…), recovery attempt (rec_…) or notification (ntf_…) id")


class Command(BaseCommand):
    help = "Redeliver webhooks (channel deliveries del_…, recovery/invoke attempts rec_…, notifications ntf_…)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*")
        parser.add_argument("--all-failed", action="store_true", help="every dead-lettered delivery")
        parser.add_argument("--actor", default=None, help="recorded as who asked (default: the OS user)")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = options["actor"] or f"cli:{getpass.getuser()}"
        targets: list[tuple[Kind, str]] = [(kind_of(i), i) for i in options["ids"]]
        if options["all_failed"]:
            targets += [
                ("channel", i)
                for i in ChannelDelivery.objects.filter(status=DeliveryStatus.FAILED).values_list("id", flat=True)
            ]
            targets += [
                ("recovery", i)
                for i in RecoveryAttempt.objects.filter(status=DeliveryStatus.FAILED).values_list("id", flat=True)
            ]
            targets += [
                ("notification", i)
                for i in Notification.objects.filter(status=DeliveryStatus.FAILED).values_list("id", flat=True)
            ]
        if not targets:
            raise CommandError("nothing to redeliver: pass ids or --all-failed")
        for kind, delivery_id in targets:
            try:
                row = delivery_redeliver(kind, delivery_id, actor)
            except DeliveryNotFound as exc:
                raise CommandError(f"{delivery_id}: not found") from exc
            self.stdout.write(f"{delivery_id}: queued (attempt {row.attempts + 1})")
        if not dispatch.flush(10):
            self.stderr.write("broker unreachable: the sweep will send them once a worker runs")
