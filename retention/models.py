"""Retention policies (docs/decisions.md, "Retention").

The environment holds the global defaults (``retention.conf``); these rows override them, edited
by admins on the dashboard's Storage page. A row names a workflow or a pattern (``*`` any run of
characters, ``?`` one character; ``*`` alone is every workflow). For each field, the most specific
row that sets it wins (exact names first, then patterns by their count of literal characters),
then the environment. A field left empty inherits; ``0`` keeps forever."""

from __future__ import annotations

from django.db import models

from retention.conf import MAX_VALUE


def _days(help_text: str) -> models.PositiveIntegerField[int | None, int | None]:
    return models.PositiveIntegerField(null=True, blank=True, help_text=help_text)


class RetentionPolicy(models.Model):
    id = models.BigAutoField(primary_key=True)
    workflow = models.CharField(
        max_length=200, unique=True, help_text="A workflow name, or a pattern: * any characters, ? one character."
    )
    completed_days = _days("Completed runs are deleted this many days after they completed.")
    failed_days = _days("Failed runs are deleted this many days after they last changed.")
    cancelled_days = _days("Cancelled runs are deleted this many days after they were cancelled.")
    usage_days = _days("Raw usage records of finished runs are deleted once the run's last record is this old.")
    rollup_days = _days("Daily usage rollups are deleted after this many days (must exceed the usage days).")
    delivery_days = _days("Finished webhook deliveries (and their attempts) are deleted after this many days.")
    state_days = _days("Unlabelled state versions older than this are deleted (the newest versions stay).")
    state_versions = _days("Keep at least this many newest versions per state stream.")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.TextField(blank=True, default="")

    class Meta:
        db_table = "tb_retention_policy"
        default_permissions = ()
        permissions = (("manage_retention", "Can view storage and edit retention policies"),)
        constraints = [
            models.CheckConstraint(
                condition=models.Q(
                    *(
                        models.Q(**{f"{f}__isnull": True}) | models.Q(**{f"{f}__lte": MAX_VALUE})
                        for f in (
                            "completed_days",
                            "failed_days",
                            "cancelled_days",
                            "usage_days",
                            "rollup_days",
                            "delivery_days",
                            "state_days",
                            "state_versions",
                        )
                    )
                ),
                name="tb_retention_policy_range",
            ),
        ]

    def __str__(self) -> str:
        return f"retention {self.workflow}"


class RetentionMark(models.Model):
    """A high-water mark the pruner keeps. ``usage``: every raw usage record of a run whose
    records were pruned (by the usage retention, or with the run) is at or before ``at`` (the
    run's last record), so the rollups of later days can still be rebuilt from tb_usage
    (``tidebase_usage_rollups`` refuses earlier days)."""

    name = models.CharField(primary_key=True, max_length=40)
    at = models.DateTimeField()

    class Meta:
        db_table = "tb_retention_mark"

    def __str__(self) -> str:
        return f"{self.name} {self.at}"
