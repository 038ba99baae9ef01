"""The two kinds of outbox row the webhooks app delivers, and their tables."""

from __future__ import annotations

from typing import Literal

from tidebase_core.models import ChannelDelivery, RecoveryAttempt

Kind = Literal["channel", "recovery"]
KINDS: tuple[Kind, ...] = ("channel", "recovery")
TABLES: dict[Kind, str] = {"channel": "tb_channel_delivery", "recovery": "tb_recovery_attempt"}


def outbox_model(kind: Kind) -> type[ChannelDelivery] | type[RecoveryAttempt]:
    return ChannelDelivery if kind == "channel" else RecoveryAttempt
