"""Queues and schedules (PROTOCOL.md §10-§11)."""

from __future__ import annotations


def schedules_fire_due() -> int:
    """Enqueue due schedules. (Filled in with the queues routes.)"""
    return 0


def push_dispatch_due() -> int:
    """Invite push-mode workers for ready runs. (Filled in with the queues routes.)"""
    return 0
