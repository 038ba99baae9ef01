"""Rebuilding the cost figures (``tb_cost_daily``, models.costs) from what the database holds.

They are kept current where they happen (the usage-record statement, the triggers of migration
0012); ``usage_rollups_rebuild`` (``manage.py tidebase_usage_rollups rebuild``, ``tidebase_seed``)
calls ``cost_figures_rebuild`` in its transaction, under its SHARE lock on tb_usage:

- ``step`` rows: from tb_usage, grouped by day, workflow and step group, as the statement adds them;
- ``failed``/``cancelled``: runs that are failed or cancelled now and were never counted (seeded,
  or ended before migration 0012) are counted on the day of their last update, with their recorded
  cost; then the rows are summed again from the runs' counted outcomes;
- ``approval``: from the decided approval gates, with their runs' recorded cost now (the cost at
  the moment of the decision is not kept anywhere else);
- ``replay_saved`` is left as it is: what a resume returned from checkpoints is known only then.
"""

from __future__ import annotations

from typing import Any

_STEPS = """
INSERT INTO tb_cost_daily (kind, day, workflow, name, records, cost_usd)
SELECT 'step', (u.created_at AT TIME ZONE 'UTC')::date, r.workflow_name,
       tb_usage_group(s.name, u.kind, u.label, u.provider), count(*), sum(u.cost_usd)
FROM tb_usage u
JOIN tb_run r ON r.id = u.run_id
LEFT JOIN tb_step s ON s.id = u.step_id
WHERE u.cost_usd > 0 AND u.created_at >= %(since)s
GROUP BY 2, 3, 4
"""

_OUTCOMES_MARK = """
UPDATE tb_usage_run t SET outcome = r.status, outcome_day = (r.updated_at AT TIME ZONE 'UTC')::date,
       outcome_cost = t.cost_usd
FROM tb_run r
WHERE r.id = t.run_id AND r.status IN ('failed', 'cancelled') AND t.outcome IS NULL AND t.cost_usd > 0
  AND r.updated_at >= %(since)s
"""

_OUTCOMES = """
INSERT INTO tb_cost_daily (kind, day, workflow, name, records, cost_usd)
SELECT outcome, outcome_day, workflow, '', count(*), sum(outcome_cost)
FROM tb_usage_run
WHERE outcome IS NOT NULL AND outcome_day >= %(since_day)s
GROUP BY 1, 2, 3
"""

_APPROVALS = """
INSERT INTO tb_cost_daily (kind, day, workflow, name, records, cost_usd)
SELECT 'approval', (g.resolved_at AT TIME ZONE 'UTC')::date, r.workflow_name, '', count(*),
       COALESCE(sum(t.cost_usd), 0)
FROM tb_gate g
JOIN tb_run r ON r.id = g.run_id
LEFT JOIN tb_usage_run t ON t.run_id = g.run_id
WHERE g.status IN ('approved', 'rejected') AND g.name NOT LIKE 'budget:%%' AND g.resolved_at >= %(since)s
GROUP BY 2, 3
"""


def cost_figures_rebuild(cur: Any, params: dict[str, Any]) -> dict[str, int]:
    """Recompute the rebuildable kinds from ``params["since"]`` (a UTC midnight; ``since_day`` its
    date) on, with the caller's cursor and transaction. Returns rows written per kind."""
    written: dict[str, int] = {}
    cur.execute("DELETE FROM tb_cost_daily WHERE kind = 'step' AND day >= %(since_day)s", params)
    cur.execute(_STEPS, params)
    written["step"] = cur.rowcount
    cur.execute(_OUTCOMES_MARK, params)
    cur.execute("DELETE FROM tb_cost_daily WHERE kind IN ('failed', 'cancelled') AND day >= %(since_day)s", params)
    cur.execute(_OUTCOMES, params)
    written["outcome"] = cur.rowcount
    cur.execute("DELETE FROM tb_cost_daily WHERE kind = 'approval' AND day >= %(since_day)s", params)
    cur.execute(_APPROVALS, params)
    written["approval"] = cur.rowcount
    return written
