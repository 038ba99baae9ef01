from __future__ import annotations

from django.db import models
from django.db.models import Q

from tidebase_core import ids
from tidebase_core.models.runs import Run


class GateStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELED = "canceled"  # one "l": the protocol's spelling for gates


class Gate(models.Model):
    """A durable approval. Resolution is a conditional UPDATE on ``status='pending'``,
    so exactly one decision wins however many race."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.gate_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="gates")
    name = models.TextField()
    prompt = models.TextField()
    data = models.JSONField(default=dict, null=True)
    status = models.CharField(max_length=16, choices=GateStatus.choices, default=GateStatus.PENDING)
    decision = models.CharField(max_length=16, null=True, blank=True)
    actor = models.TextField(null=True, blank=True)
    decided_by = models.TextField(null=True, blank=True, help_text="The authenticated identity that resolved the gate.")
    decision_payload = models.JSONField(null=True, blank=True)
    capability = models.JSONField(null=True, blank=True)
    channels = models.JSONField(default=list)
    resolve_token = models.CharField(max_length=64, default=ids.new_token)
    timeout_ms = models.BigIntegerField(null=True, blank=True)
    timeout_at = models.DateTimeField(null=True, blank=True)
    policy = models.ForeignKey(
        "tidebase_core.ApprovalPolicy", on_delete=models.SET_NULL, null=True, blank=True, related_name="gates"
    )
    policy_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="The policy version the gate opened under, then the one it was decided under."
    )
    remind_at = models.DateTimeField(null=True, blank=True)
    escalate_at = models.DateTimeField(null=True, blank=True)
    expire_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tb_gate"
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="tb_gate_run_name_uniq"),
        ]
        indexes = [
            models.Index(fields=["created_at"], name="tb_gate_pending_idx", condition=Q(status="pending")),
            models.Index(fields=["timeout_at"], name="tb_gate_timeout_idx", condition=Q(status="pending")),
            models.Index(
                fields=["created_at"],
                name="tb_gate_sla_idx",
                condition=Q(status="pending", policy__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
