"""Fixtures for dashboard tests: one user per role, and a factory for realistic data."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from dashboard.roles import ensure_roles
from tidebase_core.models import (
    ChannelDelivery,
    Event,
    Gate,
    RecoveryAttempt,
    Run,
    RunEdge,
    RunState,
    StateStream,
    StateVersion,
    Step,
    UsageRecord,
)
from tidebase_core.services.usage import usage_rollup_add

ROLES = ("viewer", "approver", "admin")
PASSWORD = "correct-horse-battery-9"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, group: str | None = None, **extra: Any) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, **extra)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def users(db: None) -> dict[str, User]:
    ensure_roles()  # a transactional test elsewhere may have flushed the migration's groups
    made = {role: make_user(role, role) for role in ROLES}
    made["nobody"] = make_user("nobody")
    return made


def client_for(user: User, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def clients(users: dict[str, User]) -> dict[str, Client]:
    return {name: client_for(user) for name, user in users.items()}


_seq = itertools.count(1)


def add_events(run: Run, types: list[str]) -> None:
    for t in types:
        run.event_seq += 1
        Event.objects.create(run=run, seq=run.event_seq, type=t, payload={"n": run.event_seq})
    Run.objects.filter(id=run.id).update(event_seq=run.event_seq)


def make_run(
    *,
    workflow: str = "triage",
    status: str = "running",
    steps: int = 2,
    gate: str | None = "pending",
    usage: int = 1,
    extras: bool = True,
    created_at: dt.datetime | None = None,
    queue: str | None = None,
) -> Run:
    """A run with steps, a gate, state, versions, usage, a child, deliveries and events."""
    n = next(_seq)
    run = Run.objects.create(
        workflow_name=workflow,
        status=status,
        input={"ticket": n},
        attempt=2,
        queue=queue,
        recovery_webhook="http://127.0.0.1:9/recover" if extras else None,
    )
    if created_at is not None:
        Run.objects.filter(id=run.id).update(created_at=created_at)
        run.refresh_from_db()
    now = timezone.now()
    for i in range(steps):
        Step.objects.create(
            run=run,
            name=f"step-{i}",
            input_hash=f"h{i}",
            status="completed" if i < steps - 1 else "running",
            output={"i": i},
            lease_fence=1,
            started_at=now,
            completed_at=now + dt.timedelta(seconds=2) if i < steps - 1 else None,
            resume_contract={"checkpointInvariant": "idempotent"},
        )
    if gate:
        Gate.objects.create(
            run=run,
            name=f"approve-{n}",
            prompt=f"Ship fix #{n}?",
            data={"diff": "+1 -1", "ticket": n},
            status=gate,
            actor=None if gate == "pending" else "alice",
            resolved_at=None if gate == "pending" else now,
            timeout_at=now + dt.timedelta(hours=1),
        )
    for i in range(usage):
        record = UsageRecord.objects.create(
            run=run,
            kind="llm",
            provider="openai",
            model="gpt-4o" if i % 2 == 0 else "gpt-4o-mini",
            input_tokens=100,
            output_tokens=50,
            total_tokens=150,
            cost_usd=Decimal("0.0125"),
        )
        usage_rollup_add(usage_id=record.id)  # what usage_record does after its insert
    if extras:
        RunState.objects.create(run=run, value={"phase": "writing"}, version=1)
        stream = StateStream.objects.create(run=run, name="default", target_id=run.id, current_version=1)
        StateVersion.objects.create(stream=stream, run=run, version=1, value={"phase": "writing"}, label="draft")
        child = Run.objects.create(workflow_name="sub", status="completed")
        RunEdge.objects.create(parent_run=run, child_run=child, name=f"child-{n}")
        ChannelDelivery.objects.create(
            run=run,
            url="http://127.0.0.1:9/hook",
            event_type="gate.created",
            status="failed",
            attempts=8,
            error_text="connection refused",
        )
        RecoveryAttempt.objects.create(
            run=run,
            webhook_url="http://127.0.0.1:9/recover",
            status="delivered",
            attempts=1,
            http_status=200,
            completed_at=now,
        )
    add_events(run, ["run.created", "run.started", "step.started", "step.completed"])
    return run


@pytest.fixture
def seeded(db: None) -> list[Run]:
    return [make_run() for _ in range(3)]
