from __future__ import annotations

from django.db import models
from django.db.models import Q

from tidebase_core import ids


class RunStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class Run(models.Model):
    """One execution of a workflow. ``attempt`` doubles as the run-lease fencing token:
    it increases on every successful begin and claim, and steps remember the value they
    were begun under (``Step.lease_fence``)."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.run_id, editable=False)
    workflow_name = models.TextField()
    input = models.JSONField(default=dict)
    metadata = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    recovery_webhook = models.TextField(null=True, blank=True)
    lease_owner = models.TextField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempt = models.IntegerField(default=0)
    event_seq = models.BigIntegerField(default=0, help_text="Last event sequence number.")
    queue = models.TextField(null=True, blank=True, db_column="queue_name")
    dedupe_key = models.TextField(null=True, blank=True)
    priority = models.IntegerField(default=0)
    run_at = models.DateTimeField(null=True, blank=True)
    max_attempts = models.IntegerField(default=1)
    claimed_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.TextField(null=True, blank=True)
    cancel_actor = models.TextField(null=True, blank=True)
    failure_class = models.TextField(null=True, blank=True)
    budget_usd = models.DecimalField(
        max_digits=20,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="The run's own budget in USD (NULL: none); raised by approving its budget gate.",
    )
    budget_allowance_usd = models.DecimalField(
        max_digits=30,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="Approved allowance past the shared (workflow, global) budgets: the run may go on "
        "until its own spend reaches this.",
    )
    started_by = models.TextField(
        null=True, blank=True, help_text="Who created the run (Principal.label): may not approve its gates."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tb_run"
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="tb_run_created_idx"),
            models.Index(fields=["status", "-created_at"], name="tb_run_status_idx"),
            models.Index(
                fields=["lease_expires_at"],
                name="tb_run_lease_exp_idx",
                condition=Q(status="running"),
            ),
            models.Index(
                fields=["queue", "status", "run_at", "priority"],
                name="tb_run_queue_idx",
                condition=Q(queue__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "dedupe_key"],
                name="tb_run_active_dedupe",
                condition=Q(dedupe_key__isnull=False, status__in=["queued", "running"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.id} ({self.status})"


class RunEdge(models.Model):
    """Parent → child link. The edge name is the idempotency key of child creation."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.edge_id, editable=False)
    parent_run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="child_edges")
    child_run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="parent_edges")
    name = models.TextField()
    edge_type = models.TextField(default="child")
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_run_edge"
        constraints = [
            models.UniqueConstraint(fields=["parent_run", "name"], name="tb_run_edge_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.parent_run_id} → {self.child_run_id} ({self.name})"


class Channel(models.Model):
    """A webhook channel subscribed to a run's events. The secret is never echoed on reads."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.channel_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="channels")
    type = models.TextField(default="webhook")
    url = models.TextField()
    secret = models.TextField(null=True, blank=True)
    events = models.JSONField(default=list)
    set_by_scope = models.CharField(
        max_length=16,
        db_default="agent",
        help_text="Scope of the principal that configured the channel. Gate deliveries carry the "
        "resolve token only to channels set by a scope that may resolve (operator, admin).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_channel"

    def __str__(self) -> str:
        return f"{self.type} {self.url}"


class Event(models.Model):
    """Append-only per-run log. ``seq`` is dense per run: writers take it from
    ``Run.event_seq`` under the run's row lock (see services.events)."""

    id = models.BigAutoField(primary_key=True)
    # no index of its own: tb_event_run_seq_uniq (run_id, seq) serves every lookup by run
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
    seq = models.BigIntegerField()
    type = models.TextField()
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_event"
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="tb_event_run_seq_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.type}"
