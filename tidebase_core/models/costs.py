"""Cost figures by UTC day (docs/decisions.md, "Cost figures"): what the usage page shows besides
the usage rollups, each kept current where it happens, never summed from tb_usage on a page.

``kind`` says what a row counts:

- ``step``: recorded cost by step group (``name``: ``model:<agent>``, ``tool:<tool>``, a step's
  name up to its first ``:``; ``tool:<label>`` for priced tool calls outside steps; ``(no step)``),
  added by the usage-record statement (``tb_usage_added``);
- ``replay_saved``: the recorded cost of completed model steps of a run that is begun again (a
  resume returns them from checkpoints instead of paying again), added when its attempt grows;
- ``failed``, ``cancelled``: a run's recorded cost when it ends that way, taken back out if it is
  begun again (both by the trigger on tb_run);
- ``approval``: one row per human decision of an approval gate (``records``) with its run's
  recorded cost at that moment (the trigger on tb_gate).

A ledger like tb_usage_daily: deleting a run does not subtract it.
"""

from __future__ import annotations

from django.db import models


class CostDaily(models.Model):
    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16)
    day = models.DateField()
    workflow = models.TextField()
    name = models.TextField(blank=True, default="")
    records = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=30, decimal_places=10, default=0)

    class Meta:
        db_table = "tb_cost_daily"
        verbose_name = "daily cost figure"
        constraints = [
            models.UniqueConstraint(fields=["kind", "day", "workflow", "name"], name="tb_cost_daily_key"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.kind} {self.workflow} {self.name}: {self.cost_usd}"
