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
