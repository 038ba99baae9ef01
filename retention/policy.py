"""The effective retention policy: environment defaults plus the dashboard's rows.

Resolution, per field: the most specific row that sets the field wins (exact workflow names
first, then patterns by their number of literal characters, longest first, then the pattern
text), then the environment. A field set to ``0`` keeps forever; so does a field nobody sets.

The same resolution is written as SQL (``Policy.case``), so the pruner, its dry run and the
Storage page apply the policy inside Postgres, in one pass over an index, and agree exactly."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from retention import conf
from retention.models import RetentionPolicy

FIELDS: tuple[str, ...] = tuple(conf.FIELDS)
RUN_FIELDS = {"completed": "completed_days", "failed": "failed_days", "cancelled": "cancelled_days"}
"""Terminal run status -> its retention field."""


def is_pattern(workflow: str) -> bool:
    return "*" in workflow or "?" in workflow


def _literal_chars(workflow: str) -> int:
    return sum(1 for c in workflow if c not in "*?")


def precedence(workflow: str) -> tuple[int, int, str]:
    """Sort key: exact names first, then the most literal characters, then the text."""
    return (1 if is_pattern(workflow) else 0, -_literal_chars(workflow), workflow)


def like_pattern(workflow: str) -> str:
    """The pattern as a LIKE pattern with ``\\`` as escape character."""
    out = []
    for c in workflow:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def matches(workflow_pattern: str, name: str) -> bool:
    """What ``LIKE like_pattern(...)`` answers, in Python (the page names the rule that applies)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in workflow_pattern)
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


@dataclass(frozen=True)
class Rule:
    workflow: str
    values: dict[str, int | None]
    """None: inherit; 0: keep forever; n: n days (versions)."""


@dataclass(frozen=True)
class Effective:
    """One workflow's resolved policy: a value (None: keep forever) and where it came from."""

    values: dict[str, int | None]
    sources: dict[str, str]

    @property
    def rollup_days(self) -> int | None:
        """The rollup retention that is applied: only one that exceeds the raw usage retention."""
        if conf.rollup_problem(self.values["usage_days"], self.values["rollup_days"]):
            return None
        return self.values["rollup_days"]


@dataclass(frozen=True)
class Policy:
    env: dict[str, int | None]
    rules: tuple[Rule, ...] = field(default=())

    @classmethod
    def load(cls) -> Policy:
        rows = list(RetentionPolicy.objects.all())
        rules = [Rule(r.workflow, {f: getattr(r, f) for f in FIELDS}) for r in rows]
        return cls.build(dict(settings.TIDEBASE_RETAIN), rules)

    @classmethod
    def build(cls, env: dict[str, int | None], rules: list[Rule]) -> Policy:
        return cls(
            env={f: env.get(f) for f in FIELDS}, rules=tuple(sorted(rules, key=lambda r: precedence(r.workflow)))
        )

    def effective(self, workflow: str) -> Effective:
        values: dict[str, int | None] = {}
        sources: dict[str, str] = {}
        for f in FIELDS:
            for rule in self.rules:
                value = rule.values.get(f)
                if value is not None and matches(rule.workflow, workflow):
                    values[f], sources[f] = value or None, f"policy {rule.workflow}"
                    break
            else:
                values[f], sources[f] = self.env.get(f), "environment" if self.env.get(f) else "default"
        return Effective(values, sources)

    def active(self, name: str) -> bool:
        """Whether any workflow may have a value for the field (else its pruning is skipped)."""
        return self.min_value(name) is not None

    def min_value(self, name: str) -> int | None:
        """The smallest value in force anywhere: an index range every candidate lies in."""
        values = [v for v in [self.env.get(name), *(r.values.get(name) for r in self.rules)] if v]
        return min(values) if values else None

    def case(self, name: str, column: str) -> tuple[str, list[Any]]:
        """SQL for the field's value for the workflow in ``column`` (NULL: keep forever), and its
        parameters (positional ``%s``)."""
        parts: list[str] = []
        params: list[Any] = []
        for rule in self.rules:
            value = rule.values.get(name)
            if value is None:
                continue
            if is_pattern(rule.workflow):
                parts.append(f"WHEN {column} LIKE %s ESCAPE '\\' THEN %s::int")
                params += [like_pattern(rule.workflow), value or None]
            else:
                parts.append(f"WHEN {column} = %s THEN %s::int")
                params += [rule.workflow, value or None]
        default = self.env.get(name)
        if not parts:
            return "%s::int", [default]
        return f"(CASE {' '.join(parts)} ELSE %s::int END)", [*params, default]

    def rollup_case(self, column: str) -> tuple[str, list[Any]]:
        """The rollup retention in force for the workflow in ``column``: NULL unless it exceeds
        that workflow's raw usage retention (which must be set)."""
        rollup, rp = self.case("rollup_days", column)
        usage, up = self.case("usage_days", column)
        return f"(CASE WHEN {rollup} > {usage} THEN {rollup} END)", [*rp, *up, *rp]


def rule_problems(values: dict[str, int | None], workflow: str, policy: Policy) -> dict[str, str]:
    """Field errors of a rule about to be saved: its rollup retention, resolved with the rule
    itself first, then the ``*`` row, then the environment, must exceed the raw usage retention."""

    def resolved(name: str) -> int | None:
        if values.get(name) is not None:
            return values[name] or None
        for rule in policy.rules:
            if rule.workflow == "*" and rule.workflow != workflow and rule.values.get(name) is not None:
                return rule.values[name] or None
        return policy.env.get(name)

    problem = conf.rollup_problem(resolved("usage_days"), resolved("rollup_days"))
    if problem and (values.get("rollup_days") or values.get("usage_days")):
        return {"rollup_days": problem}
    return {}
