"""Data model of the durable core. Table names are explicit (``tb_*``): hot paths use raw SQL."""

from __future__ import annotations

from tidebase_core.models.approvals import (
    ApprovalPolicy,
    ApprovalPolicyVersion,
    ExpiryAction,
    GateVote,
    Notification,
    NotificationMedium,
    RejectMode,
    SlackUser,
    UsedNonce,
)
from tidebase_core.models.audit import AuditEntry, AuditHead
from tidebase_core.models.budgets import BudgetLimit, BudgetScope, BudgetSpend, BudgetVersion
from tidebase_core.models.costs import CostDaily
from tidebase_core.models.gates import Gate, GateStatus
from tidebase_core.models.keys import ApiKey, IdempotencyKey, KeyScope
from tidebase_core.models.outbox import ChannelDelivery, DeliveryStatus, RecoveryAttempt
from tidebase_core.models.queues import QueueConfig, Schedule
from tidebase_core.models.runs import Channel, Event, Run, RunEdge, RunStatus
from tidebase_core.models.state import RunState, StateStream, StateVersion
from tidebase_core.models.steps import Step, StepStatus
from tidebase_core.models.usage import UsageDaily, UsageRecord, UsageRunTotal

__all__ = [
    "ApiKey",
    "ApprovalPolicy",
    "ApprovalPolicyVersion",
    "AuditEntry",
    "AuditHead",
    "BudgetLimit",
    "BudgetScope",
    "BudgetSpend",
    "BudgetVersion",
    "Channel",
    "ChannelDelivery",
    "CostDaily",
    "DeliveryStatus",
    "Event",
    "ExpiryAction",
    "Gate",
    "GateStatus",
    "GateVote",
    "IdempotencyKey",
    "KeyScope",
    "Notification",
    "NotificationMedium",
    "QueueConfig",
    "RecoveryAttempt",
    "RejectMode",
    "Run",
    "RunEdge",
    "RunState",
    "RunStatus",
    "Schedule",
    "SlackUser",
    "StateStream",
    "StateVersion",
    "Step",
    "StepStatus",
    "UsageDaily",
    "UsageRecord",
    "UsageRunTotal",
    "UsedNonce",
]
