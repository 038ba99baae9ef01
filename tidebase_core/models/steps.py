from __future__ import annotations

from django.db import models

from tidebase_core import ids
from tidebase_core.models.runs import Run


class StepStatus(models.TextChoices):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    FAILED_RETRYABLE = "failed_retryable"
    MANUAL_REVIEW = "manual_review"


class Step(models.Model):
    """A named checkpoint inside a run.

    ``lease_fence`` is the run's ``attempt`` when the step was begun by the run's lease
    owner (NULL when begun under an unrelated owner). A later run lease (higher attempt)
    makes such a step lease stale: it can be taken over and its holder cannot write.
    """

    id = models.CharField(primary_key=True, max_length=40, default=ids.step_id, editable=False)
    # no index of its own: tb_step_run_name_uniq (run_id, name) serves every lookup by run
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    name = models.TextField()
    input_hash = models.TextField()
    input = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    resume_contract = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.RUNNING)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    lease_owner = models.TextField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_fence = models.IntegerField(null=True, blank=True)
    attempt = models.IntegerField(default=1)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_step"
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="tb_step_run_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
