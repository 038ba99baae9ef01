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
    # Where cost_usd came from: "caller" (sent with the record), "genai-prices <version>" (computed
    # by the server from tokens, provider and model), or NULL (no cost, or recorded before 0010).
    cost_source = models.TextField(null=True, blank=True)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_usage"
        indexes = [
            models.Index(fields=["created_at"], name="tb_usage_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model or ''} {self.total_tokens or ''}"


# Rollups of tb_usage for the dashboard's usage page (docs/decisions.md, "Usage rollups"). Both are
# maintained by ``services.usage.usage_record`` in the transaction that inserts the record, and
# rebuilt from tb_usage by ``manage.py tidebase_usage_rollups rebuild``. Token sums follow the
# dashboard's rule: a record's tokens are ``total_tokens``, else input + output. Sums of missing
# values count as 0. Money is a Decimal with 10 decimal places, never a float.


class UsageDaily(models.Model):
    """Usage per UTC day, workflow, provider and model: the usage page's charts, tables and CSV.

    A ledger of what was spent: deleting a run does not subtract its usage here. ``provider`` and
    ``model`` stay NULL when the record had none; the unique key treats NULLs as equal
    (``NULLS NOT DISTINCT``), so there is one row per key. ``runs`` counts the runs whose first
    usage record went into this row, so a sum over any rows counts each run once."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    workflow = models.TextField()
    provider = models.TextField(null=True, blank=True)
    model = models.TextField(null=True, blank=True)
    records = models.BigIntegerField(default=0)
    runs = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=30, decimal_places=10, default=0)

    class Meta:
        db_table = "tb_usage_daily"
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "workflow", "provider", "model"], name="tb_usage_daily_key", nulls_distinct=False
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.workflow} {self.provider or '-'}/{self.model or '-'}"


class UsageRunTotal(models.Model):
    """Usage per run over its whole life: the usage page's "top runs by cost". Deleted with its
    run. ``tb_usage_run_cost_idx`` walks runs by cost, highest first, and carries the first and
    last usage times, so "runs with usage in [since, until)" is filtered inside the index."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True, related_name="usage_total")
    workflow = models.TextField()
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    records = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    # Cost figures (models.costs), kept by the trigger on tb_run: what resumes saved by returning
    # completed model steps from checkpoints, and the run's cost counted when it failed or was
    # cancelled (taken back out if it is begun again).
    saved_usd = models.DecimalField(max_digits=30, decimal_places=10, db_default=0)
    outcome = models.CharField(max_length=16, null=True, blank=True)
    outcome_day = models.DateField(null=True, blank=True)
    outcome_cost = models.DecimalField(max_digits=30, decimal_places=10, null=True, blank=True)

    class Meta:
        db_table = "tb_usage_run"
        verbose_name = "run usage total"
        indexes = [
            models.Index(fields=["-cost_usd", "run"], include=["first_at", "last_at"], name="tb_usage_run_cost_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} {self.cost_usd}"
