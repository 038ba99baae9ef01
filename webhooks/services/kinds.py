"""The three kinds of outbox row the webhooks app delivers, and their tables: channel deliveries
and recovery attempts (HTTP webhooks), and notifications (approval emails and Slack messages)."""

from __future__ import annotations

from typing import Literal

from tidebase_core.models import ChannelDelivery, Notification, RecoveryAttempt

Kind = Literal["channel", "recovery", "notification"]
KINDS: tuple[Kind, ...] = ("channel", "recovery", "notification")
TABLES: dict[Kind, str] = {
    "channel": "tb_channel_delivery",
    "recovery": "tb_recovery_attempt",
    "notification": "tb_notification",
}

OutboxModel = type[ChannelDelivery] | type[RecoveryAttempt] | type[Notification]
OutboxRow = ChannelDelivery | RecoveryAttempt | Notification


def outbox_model(kind: Kind) -> OutboxModel:
    if kind == "notification":
        return Notification
    return ChannelDelivery if kind == "channel" else RecoveryAttempt
