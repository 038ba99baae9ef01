"""The run (and step) the current task or thread is executing, for integrations.

The clients set :data:`current_run` while a workflow executes (``tide.run``, queue workers) and
while a session is entered (``with``/``async with`` on an attached session); ``run.step`` sets
the current step while its function runs. Integrations such as :mod:`tidebase.pydantic_ai` read
them so agent code needs no explicit handle. Plain ``contextvars``: asyncio tasks and
``asyncio.to_thread`` inherit them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "AUTO_USAGE_SOURCE",
    "StepFrame",
    "current_run",
    "current_step",
    "enter_run",
    "exit_run",
    "note_usage_record",
    "running",
    "step_scope",
]

AUTO_USAGE_SOURCE = "tidebase.pydantic_ai"
"""``metadata.source`` of usage rows an integration records by itself, once per model request."""

_RUN: contextvars.ContextVar[Any] = contextvars.ContextVar("tidebase.current_run", default=None)
_STEP: contextvars.ContextVar[StepFrame | None] = contextvars.ContextVar("tidebase.current_step", default=None)


@dataclasses.dataclass
class StepFrame:
    """A step whose function is running. ``auto_usage`` is set (on it and its parents) when an
    integration recorded usage inside it, so a manual ``usage_record`` there can be flagged."""

    run_id: str
    name: str
    step_id: str | None
    parent: StepFrame | None = None
    auto_usage: bool = False
    warned: bool = False

    def mark_auto_usage(self) -> None:
        frame: StepFrame | None = self
        while frame is not None:
            frame.auto_usage = True
            frame = frame.parent


def current_run() -> Any:
    """The ``RunContext``/``AsyncRunContext`` executing in this task or thread, or ``None``."""
    return _RUN.get()


def current_step() -> StepFrame | None:
    """The innermost step whose function is running in this task or thread, or ``None``."""
    return _STEP.get()


@contextlib.contextmanager
def running(run: Any) -> Iterator[None]:
    token = _RUN.set(run)
    try:
        yield
    finally:
        _RUN.reset(token)


def enter_run(run: Any) -> contextvars.Token[Any]:
    """Make ``run`` current until :func:`exit_run` (sessions entered with ``with``)."""
    return _RUN.set(run)


def exit_run(token: contextvars.Token[Any] | None) -> None:
    if token is not None:
        with contextlib.suppress(ValueError):  # exited in another context: nothing to undo here
            _RUN.reset(token)


@contextlib.contextmanager
def step_scope(run_id: str, name: str, step_id: str | None) -> Iterator[StepFrame]:
    frame = StepFrame(run_id, name, step_id, parent=_STEP.get())
    token = _STEP.set(frame)
    try:
        yield frame
    finally:
        _STEP.reset(token)


def note_usage_record(run_id: str, fields: Mapping[str, Any]) -> None:
    """Warn when usage is recorded by hand inside a step whose model requests an integration
    already recorded (the outer-step pattern around a durable agent counts tokens twice)."""
    metadata = fields.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("source") == AUTO_USAGE_SOURCE:
        return
    frame = _STEP.get()
    while frame is not None and frame.run_id == run_id:
        if frame.auto_usage:
            if not frame.warned:
                frame.warned = True
                warnings.warn(
                    f"usage recorded by hand inside step {frame.name!r}, whose model requests "
                    "TidebaseDurability already recorded once each: the ledger counts those tokens "
                    "twice. Drop the manual run.usage_record(...) for the agent's model calls.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        frame = frame.parent
