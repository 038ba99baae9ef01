"""Approval policies (docs/approvals.md): who may decide a gate, how many must agree, what happens
when nobody looks, and where operators are told.

``ApprovalPolicy`` is a policy as it is now; every change bumps ``version`` and writes the whole
policy to ``ApprovalPolicyVersion`` (never updated), so a gate's ``policy_version`` names exactly
the rules it was decided under. ``GateVote`` is one approver's vote on a gate (one per approver);
``Notification`` is an outbox row (an email or a Slack message) the webhooks app delivers;
``UsedNonce`` makes one-click email links and Slack callbacks single-use; ``SlackUser`` maps a
Slack user to the Django user whose groups and name a Slack click decides with.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from tidebase_core import ids
from tidebase_core.models.gates import Gate
from tidebase_core.models.outbox import OutboxRow
from tidebase_core.models.runs import Run


class RejectMode(models.TextChoices):
    ANY = "any", "any rejection rejects"
    QUORUM = "quorum", "rejection needs the quorum too"


class ExpiryAction(models.TextChoices):
    NONE = "none", "leave pending"
    REJECT = "reject", "reject"
    APPROVE = "approve", "approve"


class ApprovalPolicy(models.Model):
    """A policy as it is now. Gates match the first enabled policy, by ``position`` then id, whose
    ``workflow_pattern`` and ``gate_pattern`` (shell patterns: ``*``, ``?``, ``[abc]``) match the
    run's workflow and the gate's name. A gate no policy matches keeps the open rules: any
    principal that may resolve decides it alone."""

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    position = models.IntegerField(default=100)
    workflow_pattern = models.CharField(max_length=200, default="*")
    gate_pattern = models.CharField(max_length=200, default="*")
    approver_groups = models.JSONField(default=list, help_text="Django groups whose members may decide.")
    approver_keys = models.JSONField(default=list, help_text="Names of API keys that may decide.")
    quorum = models.PositiveIntegerField(default=1)
    reject_mode = models.CharField(max_length=8, choices=RejectMode.choices, default=RejectMode.ANY)
    allow_self_approval = models.BooleanField(default=False)
    require_comment = models.BooleanField(default=False)
    allow_token = models.BooleanField(default=False, help_text="Whether a gate's resolve token may decide it.")
    email = models.BooleanField(default=False, help_text="Email the approvers when a gate opens and at reminders.")
    email_links = models.BooleanField(default=False, help_text="Put one-click Approve/Reject links in the emails.")
    slack = models.TextField(blank=True, default="", help_text="Slack incoming-webhook URL or channel id.")
    remind_after_s = models.PositiveIntegerField(null=True, blank=True)
    escalate_after_s = models.PositiveIntegerField(null=True, blank=True)
    escalate_groups = models.JSONField(default=list)
    escalate_slack = models.TextField(blank=True, default="")
    expire_after_s = models.PositiveIntegerField(null=True, blank=True)
    expiry_action = models.CharField(max_length=8, choices=ExpiryAction.choices, default=ExpiryAction.NONE)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.TextField(default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_approval_policy"
        permissions = (("manage_policies", "Can change approval policies"),)
        ordering = ("position", "id")

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class ApprovalPolicyVersion(models.Model):
    """One version of a policy, whole (``body``), as it was saved."""

    id = models.BigAutoField(primary_key=True)
    policy = models.ForeignKey(ApprovalPolicy, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    body = models.JSONField()
    created_by = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_approval_policy_version"
        constraints = [models.UniqueConstraint(fields=["policy", "version"], name="tb_policy_version_key")]

    def __str__(self) -> str:
        return f"policy {self.policy_id} v{self.version}"


class GateVote(models.Model):
    """One approver's vote on a gate under a policy: at most one per approver (``voter``, the
    decider's identity label, e.g. ``user:alice`` or ``key:ops``)."""

    id = models.BigAutoField(primary_key=True)
    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="votes")
    voter = models.TextField()
    decision = models.CharField(max_length=16)
    comment = models.TextField(blank=True, default="")
    channel = models.CharField(max_length=16)
    policy_version = models.PositiveIntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_gate_vote"
        constraints = [models.UniqueConstraint(fields=["gate", "voter"], name="tb_gate_vote_once")]

    def __str__(self) -> str:
        return f"{self.voter}: {self.decision}"


class NotificationMedium(models.TextChoices):
    EMAIL = "email"
    SLACK = "slack"


class Notification(OutboxRow):
    """An email or Slack message about a gate, delivered by the webhooks app like a channel
    delivery (retries, dead letters). ``target``: an email address, a Slack incoming-webhook or
    ``response_url`` URL, or a Slack channel id (sent with ``TIDEBASE_SLACK_BOT_TOKEN``).
    ``user``: the recipient an email's one-click links are bound to."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.notification_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="notifications")
    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="notifications")
    medium = models.CharField(max_length=8, choices=NotificationMedium.choices)
    event_type = models.TextField()
    target = models.TextField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    data = models.JSONField(default=dict)

    class Meta:
        db_table = "tb_notification"
        indexes = [
            models.Index(fields=["next_attempt_at"], name="tb_notification_due_idx", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.medium} {self.event_type} → {self.target} ({self.status})"


class UsedNonce(models.Model):
    """A one-click link or Slack callback that has been used: inserted in the decision's
    transaction, so a second use finds it (and a refused decision leaves the link usable)."""

    key = models.CharField(primary_key=True, max_length=128)
    used_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "tb_used_nonce"

    def __str__(self) -> str:
        return self.key


class SlackUser(models.Model):
    """Which Django user a Slack user decides as."""

    slack_user_id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack_ids")

    class Meta:
        db_table = "tb_slack_user"

    def __str__(self) -> str:
        return f"{self.slack_user_id} → {self.user_id}"
