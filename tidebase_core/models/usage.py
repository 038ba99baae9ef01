from __future__ import annotations

from django.db import models

from tidebase_core import ids
from tidebase_core.models.runs import Run
from tidebase_core.models.steps import Step


class UsageRecord(models.Model):
    """One entry of the token/cost ledger. Money is a Decimal, never a float."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.usage_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="usage_records")
    step = models.ForeignKey(Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_records")
    kind = models.TextField(default="custom")
    provider = models.TextField(null=True, blank=True)
    model = models.TextField(null=True, blank=True)
    label = models.TextField(null=True, blank=True)
    quantity = models.DecimalField(max_digits=30, decimal_places=10, null=True, blank=True)
    unit = models.TextField(null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    total_tokens = models.BigIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_usage"
        indexes = [
            models.Index(fields=["created_at"], name="tb_usage_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model or ''} {self.total_tokens or ''}"
