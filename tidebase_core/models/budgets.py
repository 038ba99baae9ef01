"""Cost budgets (docs/decisions.md, "Budgets that park a run").

A run's own budget lives on its row (``Run.budget_usd``). The shared budgets, per workflow per UTC
day and per UTC calendar month, and one global per UTC day, are here: ``BudgetVersion`` keeps
every change (a new row each time, never updated), ``BudgetLimit`` the current limit of each
budget (what the step-begin statement reads), and ``BudgetSpend`` what has been spent against a
budget in one period, added to by the usage-record statement for the budgets that have a limit.
Money is a Decimal, never a float.
"""

from __future__ import annotations

from django.db import models


class BudgetScope(models.TextChoices):
    RUN = "run", "per run"
    WORKFLOW_DAY = "workflow_day", "per workflow per UTC day"
    WORKFLOW_MONTH = "workflow_month", "per workflow per UTC month"
    GLOBAL_DAY = "global_day", "all workflows per UTC day"


SHARED_SCOPES = (BudgetScope.WORKFLOW_DAY, BudgetScope.WORKFLOW_MONTH, BudgetScope.GLOBAL_DAY)
"""Scopes kept in ``BudgetLimit``: every run of the workflow (or every run) spends against them."""

GLOBAL = ""
"""``workflow`` of the global budget (no workflow is named ``""``: the API refuses empty names)."""


class BudgetVersion(models.Model):
    """One change of a shared budget: the whole history, newest version last. ``limit_usd`` NULL
    removes the budget."""

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=16, choices=[(s.value, s.label) for s in SHARED_SCOPES])
    workflow = models.TextField(blank=True, default=GLOBAL)
    version = models.IntegerField()
    limit_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    created_by = models.TextField()
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tb_budget_version"
        permissions = (("manage_budgets", "Can change cost budgets"),)
        constraints = [
            models.UniqueConstraint(fields=["scope", "workflow", "version"], name="tb_budget_version_key"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.workflow or '*'} v{self.version}: {self.limit_usd}"


class BudgetLimit(models.Model):
    """The current limit of a shared budget (its newest version). Read by every step begin of a
    run of the workflow, so it stays a handful of rows."""

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=16, choices=[(s.value, s.label) for s in SHARED_SCOPES])
    workflow = models.TextField(blank=True, default=GLOBAL)
    limit_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    version = models.IntegerField()
    updated_by = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tb_budget_limit"
        constraints = [
            models.UniqueConstraint(fields=["scope", "workflow"], name="tb_budget_limit_key"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.workflow or '*'}: {self.limit_usd}"


class BudgetSpend(models.Model):
    """What was spent against a shared budget in one period: a UTC day (``*_day``) or the first
    day of a UTC month (``workflow_month``). Kept only while the budget has a limit: the usage
    statement adds to the rows of budgets with a limit, and setting a limit recomputes the current
    period's row from ``tb_usage_daily``."""

    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(max_length=16, choices=[(s.value, s.label) for s in SHARED_SCOPES])
    workflow = models.TextField(blank=True, default=GLOBAL)
    period = models.DateField()
    spent_usd = models.DecimalField(max_digits=30, decimal_places=10, default=0)

    class Meta:
        db_table = "tb_budget_spend"
        constraints = [
            models.UniqueConstraint(fields=["scope", "workflow", "period"], name="tb_budget_spend_key"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.workflow or '*'} {self.period}: {self.spent_usd}"
