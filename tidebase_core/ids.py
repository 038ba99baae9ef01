"""Prefixed opaque ids (PROTOCOL.md §1): ``run_`` + 32 lowercase hex digits, and friends."""

from __future__ import annotations

import secrets
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_token() -> str:
    """A gate resolve token: 32 hex digits from the OS CSPRNG."""
    return secrets.token_hex(16)


def run_id() -> str:
    return new_id("run")


def step_id() -> str:
    return new_id("step")


def gate_id() -> str:
    return new_id("gate")


def stream_id() -> str:
    return new_id("stream")


def version_id() -> str:
    return new_id("ver")


def edge_id() -> str:
    return new_id("edge")


def recovery_id() -> str:
    return new_id("rec")


def channel_id() -> str:
    return new_id("chan")


def delivery_id() -> str:
    return new_id("del")


def notification_id() -> str:
    return new_id("ntf")


def usage_id() -> str:
    return new_id("use")


def key_id() -> str:
    return new_id("key")
