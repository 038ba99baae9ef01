"""Data model of the durable core. Table names are explicit (``tb_*``): hot paths use raw SQL."""

from __future__ import annotations

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
    "Gate",
    "GateStatus",
    "IdempotencyKey",
    "KeyScope",
    "QueueConfig",
    "RecoveryAttempt",
    "Run",
    "RunEdge",
    "RunState",
    "RunStatus",
    "Schedule",
    "StateStream",
    "StateVersion",
    "Step",
    "StepStatus",
    "UsageDaily",
    "UsageRecord",
    "UsageRunTotal",
]
