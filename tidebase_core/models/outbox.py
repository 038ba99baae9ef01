"""Outbox rows written in the same transaction as the change that causes them.
The ``webhooks`` app delivers them; the core only writes them."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from tidebase_core import ids
from tidebase_core.models.runs import Channel, Run


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class OutboxRow(models.Model):
    """Delivery state every outbox row carries; the dispatcher owns its transitions."""

    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    http_status = models.IntegerField(null=True, blank=True)
    response_body = models.TextField(null=True, blank=True)
    error_text = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class RecoveryAttempt(OutboxRow):
    id = models.CharField(primary_key=True, max_length=40, default=ids.recovery_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="recovery_attempts")
    reason = models.TextField(default="manual")
    webhook_url = models.TextField()
    type = models.TextField(default="run.resume")

    class Meta:
        db_table = "tb_recovery_attempt"
        indexes = [
            models.Index(fields=["next_attempt_at"], name="tb_recovery_due_idx", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.run_id} ({self.status})"


class ChannelDelivery(OutboxRow):
    id = models.CharField(primary_key=True, max_length=40, default=ids.delivery_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="channel_deliveries")
    channel = models.ForeignKey(Channel, on_delete=models.SET_NULL, null=True, blank=True)
    gate_id = models.TextField(null=True, blank=True)
    url = models.TextField()
    secret = models.TextField(null=True, blank=True)
    event_type = models.TextField()
    payload = models.JSONField(default=dict)

    class Meta:
        db_table = "tb_channel_delivery"
        indexes = [
            models.Index(fields=["next_attempt_at"], name="tb_delivery_due_idx", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.url} ({self.status})"
