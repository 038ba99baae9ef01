"""Approval policies as the Policies page shows them: the list, one policy, and its version
history with what each version changed. Slack incoming-webhook URLs carry a secret, so they are
shown masked everywhere but in an admin's edit form."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import F

from tidebase_core.models import ApiKey, ApprovalPolicy, ApprovalPolicyVersion, ExpiryAction, RejectMode
from tidebase_core.services.policies import BODY_FIELDS, slack_label

SECONDS_FIELDS = ("remind_after_s", "escalate_after_s", "expire_after_s")
SLACK_FIELDS = ("slack", "escalate_slack")

LABELS = {
    "name": "Name",
    "enabled": "Enabled",
    "position": "Position",
    "workflow_pattern": "Workflow pattern",
    "gate_pattern": "Gate pattern",
    "approver_groups": "Approver groups",
    "approver_keys": "Approver API keys",
    "quorum": "Quorum",
    "reject_mode": "Rejections",
    "allow_self_approval": "Self-approval",
    "require_comment": "Comment required",
    "allow_token": "Resolve token may decide",
    "email": "Email",
    "email_links": "One-click email links",
    "slack": "Slack",
    "remind_after_s": "Remind after",
    "escalate_after_s": "Escalate after",
    "escalate_groups": "Escalate to groups",
    "escalate_slack": "Escalate to Slack",
    "expire_after_s": "Expire after",
    "expiry_action": "At expiry",
}
"""How the page names each field of a policy (``BODY_FIELDS``)."""

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_seconds(seconds: int | None) -> str:
    """``5400`` → ``1h 30m``: the form a duration is typed in (``forms.SecondsField``)."""
    if seconds is None:
        return ""
    parts = []
    rest = int(seconds)
    for unit, size in _UNITS:
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts) or "0s"


def show(name: str, value: Any) -> str:
    """One field's value as text, for the list and the history."""
    if name in SECONDS_FIELDS:
        return format_seconds(value) or "never"
    if name in SLACK_FIELDS:
        return slack_label(value) or "—"
    if name == "reject_mode":
        return str(RejectMode(value).label) if value in RejectMode.values else str(value)
    if name == "expiry_action":
        return str(ExpiryAction(value).label) if value in ExpiryAction.values else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return "—" if value in (None, "") else str(value)


@dataclass(frozen=True)
class Change:
    field: str
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class VersionRow:
    version: int
    created_by: str
    created_at: dt.datetime
    changes: tuple[Change, ...]
    """Empty for the first version (the policy was created)."""


@dataclass(frozen=True)
class PolicyRow:
    """A policy as a row of the list, its settings summed up as text."""

    policy: ApprovalPolicy
    approvers: str
    sla: str
    channels: str


def _sla_text(policy: ApprovalPolicy) -> str:
    parts = [
        f"{word} {format_seconds(seconds)}"
        for word, seconds in (
            ("remind", policy.remind_after_s),
            ("escalate", policy.escalate_after_s),
            ("expire", policy.expire_after_s),
        )
        if seconds is not None
    ]
    if policy.expire_after_s is not None:
        parts[-1] += f" ({show('expiry_action', policy.expiry_action)})"
    return " · ".join(parts) or "none"


def _channels_text(policy: ApprovalPolicy) -> str:
    parts = []
    if policy.email:
        parts.append("email with one-click links" if policy.email_links else "email")
    if policy.slack:
        parts.append(f"Slack {slack_label(policy.slack)}")
    return ", ".join(parts) or "dashboard only"


def policy_list() -> list[PolicyRow]:
    """Every policy in the order gates are matched against them (position, then id), in one
    query."""
    rows = []
    for policy in ApprovalPolicy.objects.order_by("position", "id"):
        whom = [*policy.approver_groups, *(f"key {k}" for k in policy.approver_keys)]
        approvers = ", ".join(whom) or "anyone who may approve"
        rows.append(PolicyRow(policy, approvers, _sla_text(policy), _channels_text(policy)))
    return rows


def policy_get(*, policy_id: int) -> ApprovalPolicy | None:
    return ApprovalPolicy.objects.filter(id=policy_id).first()


def policy_history(*, policy_id: int) -> list[VersionRow]:
    """The versions of a policy, newest first, each with the fields it changed from the version
    before it (one query)."""
    versions = list(ApprovalPolicyVersion.objects.filter(policy_id=policy_id).order_by("version"))
    rows: list[VersionRow] = []
    before: dict[str, Any] | None = None
    for v in versions:
        changes: list[Change] = []
        if before is not None:
            for name in BODY_FIELDS:
                old, new = before.get(name), v.body.get(name)
                if old != new:
                    changes.append(Change(name, LABELS.get(name, name), show(name, old), show(name, new)))
        rows.append(VersionRow(v.version, v.created_by, v.created_at, tuple(changes)))
        before = v.body
    return rows[::-1]


def group_names() -> list[str]:
    return list(Group.objects.order_by("name").values_list("name", flat=True))


def key_names() -> list[str]:
    """Names of the API keys that are not revoked: what ``approver_keys`` may list."""
    return list(ApiKey.objects.filter(revoked_at__isnull=True).order_by(F("name").asc()).values_list("name", flat=True))
