"""After-commit hand-off of outbox rows to whoever delivers them.

The core writes delivery rows (``ChannelDelivery``, ``RecoveryAttempt``) in the same
transaction as the change that causes them, and knows nothing about delivery. The ``webhooks``
app registers a dispatcher at startup; after the transaction commits, the dispatcher is called
with the new row ids (it queues Celery tasks). If it is never called — no dispatcher, a crash
between commit and hand-off, a broker outage — the rows are still there and the periodic sweep
delivers them: nothing depends on this hook for correctness, only for latency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from django.db import transaction

logger = logging.getLogger(__name__)

OutboxKind = Literal["channel", "recovery", "notification"]
Dispatcher = Callable[[OutboxKind, list[str]], None]

_dispatchers: list[Dispatcher] = []
_recorders: list[Dispatcher] = []


def register_dispatcher(fn: Dispatcher) -> None:
    if fn not in _dispatchers:
        _dispatchers.append(fn)


def register_recorder(fn: Dispatcher) -> None:
    """``fn(kind, ids)`` runs as the rows are written, inside the writer's transaction (or right
    after its single autocommit statement), before any dispatch: ``tidebase_core.tracing`` keeps
    the request's trace context with the rows. Registered only when tracing is on."""
    if fn not in _recorders:
        _recorders.append(fn)


def _dispatch(kind: OutboxKind, ids: list[str]) -> None:
    for fn in _dispatchers:
        try:
            fn(kind, ids)
        except Exception:  # the sweep will pick the rows up
            logger.exception("outbox.dispatch.failed", extra={"kind": kind, "count": len(ids)})


def after_commit(kind: OutboxKind, ids: list[str]) -> None:
    """Hand ``ids`` to the dispatchers once the current transaction commits."""
    if ids and _recorders:
        for record in _recorders:
            record(kind, ids)
    if ids and _dispatchers:
        transaction.on_commit(lambda: _dispatch(kind, ids), robust=True)
