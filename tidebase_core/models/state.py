from __future__ import annotations

from django.db import models
from django.db.models import Q

from tidebase_core import ids
from tidebase_core.models.runs import Run


class RunState(models.Model):
    """The live state value of a run (one row per run)."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, primary_key=True, related_name="live_state")
    value = models.JSONField(default=dict, null=True)
    version = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_run_state"

    def __str__(self) -> str:
        return f"state of {self.run_id} v{self.version}"


class StateStream(models.Model):
    """A named, versioned history of values. Versioning is serialized by the stream's row lock."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.stream_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="state_streams")
    name = models.TextField()
    target_type = models.TextField(default="run")
    target_id = models.TextField()
    current_version = models.IntegerField(default=0)
    current_value = models.JSONField(null=True)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_state_stream"
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="tb_state_stream_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.current_version}"


class StateVersion(models.Model):
    IMPORTANCE = ("transient", "normal", "checkpoint", "milestone")

    id = models.CharField(primary_key=True, max_length=40, default=ids.version_id, editable=False)
    stream = models.ForeignKey(StateStream, on_delete=models.CASCADE, related_name="versions")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="state_versions")
    step_id = models.TextField(null=True, blank=True)
    version = models.IntegerField()
    value = models.JSONField(null=True)
    patch = models.JSONField(null=True, blank=True)
    label = models.TextField(null=True, blank=True)
    reason = models.TextField(null=True, blank=True)
    importance = models.TextField(default="normal")
    metadata = models.JSONField(default=dict)
    created_by = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_state_version"
        constraints = [
            models.UniqueConstraint(fields=["stream", "version"], name="tb_state_version_uniq"),
        ]
        indexes = [
            models.Index(fields=["run", "label"], name="tb_state_version_label_idx", condition=Q(label__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version}"
