from __future__ import annotations

from django.db import models

from tidebase_core import ids


class KeyScope(models.TextChoices):
    AGENT = "agent"  # run workflows, open gates; never resolve or read resolve tokens
    OPERATOR = "operator"  # agent + resolve gates, cancel runs
    ADMIN = "admin"  # everything


class ApiKey(models.Model):
    """An API key created in the app. Only a SHA-256 digest of the secret is stored."""

    id = models.CharField(primary_key=True, max_length=40, default=ids.key_id, editable=False)
    name = models.CharField(max_length=200, unique=True)
    prefix = models.CharField(max_length=16, help_text="First characters, to recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=16, choices=KeyScope.choices, default=KeyScope.AGENT)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tb_api_key"

    def __str__(self) -> str:
        return f"{self.name} ({self.scope})"


class IdempotencyKey(models.Model):
    """A client's ``Idempotency-Key`` for a create (run create, usage, enqueue): a retried
    request with the same key returns the resource the first one made instead of a second one.
    The row is inserted in the same transaction as the resource, so concurrent retries settle
    on the unique index. Kept for 24 hours."""

    scope = models.CharField(max_length=300)
    key = models.CharField(max_length=200)
    resource_id = models.CharField(max_length=40)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_idempotency_key"
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="tb_idempotency_uniq")]
        indexes = [models.Index(fields=["created_at"], name="tb_idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
