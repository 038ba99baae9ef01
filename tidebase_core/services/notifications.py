"""Who is told about a gate, and where: the email and Slack outbox rows of a policy's gate.

Rows are written inside the transaction that opens, reminds, escalates, expires or decides the
gate, and the webhooks app delivers them after commit (``webhooks.services.notify``) with the
retries and dead letters of every other delivery. What a message says is rendered when it is
sent, from the gate as it is then.

- ``gate.created`` and ``gate.reminded``: an email to each member of the policy's approver groups
  who has an address (when the policy emails), and a Slack message to the policy's ``slack``.
- ``gate.escalated``: an email to each member of the escalation groups, and a Slack message to
  ``escalate_slack``.
- ``gate.resolved`` and ``gate.expired``: a Slack message to the policy's ``slack`` with the outcome.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.functions import Now

from tidebase_core.models import ApprovalPolicy, Gate, Notification, NotificationMedium
from tidebase_core.outbox import after_commit

ASKING = ("gate.created", "gate.reminded")
TELLING = ("gate.resolved", "gate.expired")


def _members(groups: list[str]) -> list[Any]:
    if not groups:
        return []
    return list(
        get_user_model()
        .objects.filter(groups__name__in=groups, is_active=True)
        .exclude(email="")
        .distinct()
        .order_by("pk")
    )


def notify_gate(
    gate: Gate, event_type: str, *, policy: ApprovalPolicy | None = None, data: dict[str, Any] | None = None
) -> list[str]:
    """Write the notifications of ``event_type`` for ``gate`` (inside the caller's transaction)
    and hand them to the dispatcher after commit. Returns the new row ids. ``policy``: the gate's
    policy when the caller holds it already (else it is read)."""
    if policy is None and gate.policy_id:
        policy = ApprovalPolicy.objects.filter(id=gate.policy_id).first()
    if policy is None:
        return []
    rows: list[Notification] = []

    def add(medium: str, target: str, user: Any = None) -> None:
        rows.append(
            Notification(
                run_id=gate.run_id,
                gate_id=gate.id,
                medium=medium,
                event_type=event_type,
                target=target,
                user=user,
                data=data or {},
                next_attempt_at=Now(),  # due now: the sweep leaves it to its after-commit message a while
            )
        )

    if event_type in ASKING or event_type == "gate.escalated":
        escalating = event_type == "gate.escalated"
        if policy.email or escalating:
            for user in _members(policy.escalate_groups if escalating else policy.approver_groups):
                add(NotificationMedium.EMAIL, user.email, user)
        slack = policy.escalate_slack if escalating else policy.slack
        if slack:
            add(NotificationMedium.SLACK, slack)
    elif event_type in TELLING and policy.slack:
        add(NotificationMedium.SLACK, policy.slack)
    Notification.objects.bulk_create(rows)
    ids = [row.id for row in rows]
    after_commit("notification", ids)
    return ids


def notify_slack_response(gate: Gate, response_url: str) -> list[str]:
    """Replace the Slack message a decision was clicked in with the outcome (Slack's
    ``response_url``)."""
    row = Notification.objects.create(
        run_id=gate.run_id,
        gate_id=gate.id,
        medium=NotificationMedium.SLACK,
        event_type="gate.resolved" if gate.status != "pending" else "gate.voted",
        target=response_url,
        data={"replace_original": True},
        next_attempt_at=Now(),
    )
    after_commit("notification", [row.id])
    return [row.id]
