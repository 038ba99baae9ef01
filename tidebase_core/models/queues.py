from __future__ import annotations

from django.db import models


class QueueConfig(models.Model):
    """Caps and push target of a queue. ``null`` means "no cap" (and, on PUT, "keep")."""

    name = models.TextField(primary_key=True)
    concurrency = models.IntegerField(null=True, blank=True)
    rate_per_minute = models.IntegerField(null=True, blank=True)
    invoke_url = models.TextField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_queue_config"

    def __str__(self) -> str:
        return self.name


class Schedule(models.Model):
    """A 5-field UTC cron that enqueues a run per fire time. ``next_run_at`` only moves forward,
    under the row lock, in the same transaction as the enqueue: one run per fire time."""

    name = models.TextField(primary_key=True)
    cron = models.TextField()
    workflow_name = models.TextField()
    input = models.JSONField(default=dict, null=True)
    queue = models.TextField(default="default", db_column="queue_name")
    max_attempts = models.IntegerField(default=1)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_schedule"
        indexes = [models.Index(fields=["next_run_at"], name="tb_schedule_due_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron})"
