"""Handing outbox rows to Celery without ever blocking the caller.

The core calls ``outbox_dispatch`` after a transaction commits, in the request thread. Publishing
may stall when the broker is unreachable, so messages go through an in-process queue to one
daemon thread per process that publishes them with retries off. A publish that fails is only
logged: the row is still ``pending`` in Postgres and the beat sweep dispatches it later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable

from tidebase_core.outbox import OutboxKind
from webhooks.services.kinds import Kind

logger = logging.getLogger(__name__)

QUEUE_MAX = 100_000
"""Messages waiting for the publisher thread; beyond this they are dropped (the sweep repairs)."""

Item = tuple[Kind, str, int, str, float | None]

_lock = threading.Lock()
_queue: queue.Queue[Item] | None = None
_pid: int | None = None


def _publisher(q: queue.Queue[Item]) -> None:
    while True:
        kind, delivery_id, expected, trigger, countdown = q.get()
        try:
            publish(kind, delivery_id, expected, trigger, countdown)
        except Exception:
            logger.warning("webhook.publish.failed", extra={"kind": kind, "delivery_id": delivery_id}, exc_info=True)
        finally:
            q.task_done()


def publish(kind: Kind, delivery_id: str, expected: int, trigger: str, countdown: float | None = None) -> None:
    """Publish one ``deliver`` message now (raises when the broker refuses). No publish retries."""
    from webhooks.tasks import deliver

    deliver.apply_async(args=[kind, delivery_id, expected, trigger], countdown=countdown, retry=False)


def _queue_for_process() -> queue.Queue[Item]:
    """The publisher queue of this process (a forked child gets its own thread)."""
    global _queue, _pid
    with _lock:
        if _queue is None or _pid != os.getpid():
            _queue = queue.Queue(QUEUE_MAX)
            _pid = os.getpid()
            threading.Thread(target=_publisher, args=(_queue,), name="tidebase-webhook-publisher", daemon=True).start()
        return _queue


def enqueue(
    kind: Kind, items: Iterable[tuple[str, int]], *, trigger: str = "dispatch", countdown: float | None = None
) -> None:
    """Queue ``deliver`` messages for ``(delivery_id, expected_attempts)`` pairs; returns at once."""
    q = _queue_for_process()
    for delivery_id, expected in items:
        try:
            q.put_nowait((kind, delivery_id, expected, trigger, countdown))
        except queue.Full:
            logger.warning("webhook.publish.queue_full", extra={"kind": kind, "delivery_id": delivery_id})


def flush(timeout_s: float = 5.0) -> bool:
    """Wait until queued messages are published (tests, management commands). True when drained."""
    q = _queue
    if q is None:
        return True
    done = threading.Event()

    def wait() -> None:
        q.join()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done.wait(timeout_s)


def outbox_dispatch(kind: OutboxKind, ids: list[str]) -> None:
    """The core's after-commit hook (``tidebase_core.outbox``): rows just written have made no
    attempt yet, so each message claims attempt 1."""
    enqueue(kind, [(i, 0) for i in ids])
