"""The Celery consumer of ``tidebase_worker`` (``worker_consumer`` in ``config.celery``):
Celery's own, except that losing the broker never ends the worker."""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """After a broker connection error, Celery 5.7 first collects the dead connection and then
    closes it. With kombu's Redis transport the collect can fail half-way (a pending BRPOP that
    times out) after it has already dropped the transport's client, so the close then restores
    the channel's unacknowledged messages through a transport without a client and raises
    ``AttributeError`` ('NoneType' object has no attribute 'hostname'). Celery takes that for an
    unrecoverable error and the worker exits (seen in tests/multiproc, a Redis restart under
    load). Here the failed close is logged and the consumer reconnects, as it does after any
    other connection error. Messages it could not restore stay in Redis's unacked set (Redis
    redelivers them after the visibility timeout) and the outbox sweep re-sends their
    deliveries meanwhile."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            logger.warning("worker.broker_close_failed", exc_info=True)
            self.connection = None
