"""The Celery app: webhook delivery, the delivery sweep and the reconciler tick.

Broker: ``CELERY_BROKER_URL`` (``redis://…`` or ``amqp://…``) when set; otherwise the embedded
filesystem broker (``webhooks.broker``) in ``TIDEBASE_BROKER_DIR`` (default
``$TIDEBASE_DATA_DIR/broker``). No result backend: task results are ignored, outcomes live in
Postgres. Start a worker with beat embedded: ``manage.py tidebase_worker``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
TRANSPORT_ALIASES.setdefault("tidebasefs", "webhooks.broker:Transport")

BROKER_CONNECT_TIMEOUT_S = 2.0
"""How long a publish may wait for the broker. Publishing never blocks a request (it happens on
a background thread), and a failed publish is repaired by the sweep, so fail fast."""


def broker_folder() -> Path:
    from django.conf import settings

    from config.embedded import data_dir

    return Path(settings.TIDEBASE_BROKER_DIR or data_dir() / "broker").resolve()


def celery_settings() -> dict[str, Any]:
    """Celery configuration derived from the Django settings (read once, when the app is first used)."""
    from django.conf import settings

    tick_s = max(settings.TIDEBASE_RECONCILE_MS, 100) / 1000
    folder = broker_folder()
    folder.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": "tidebase",
        # A message is acknowledged after its task ran; a worker that dies returns unstarted
        # messages to the broker (where the transport supports it). Either way the sweep repairs.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 4,
        # Off: after a broker reconnect Celery lowers the prefetch count and raises it again from
        # the thread that acknowledges a task; with the threads pool that is a pool thread, which
        # then waits for basic.qos-ok on a connection the main thread reads, forever. Every pool
        # thread ends up there and the worker stops consuming (tests/multiproc, broker restart).
        "worker_enable_prefetch_count_reduction": False,
        "worker_consumer": "webhooks.consumer:Consumer",  # survives a lost Redis connection
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": BROKER_CONNECT_TIMEOUT_S,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule_filename": str(folder / "celerybeat-schedule"),
        "beat_schedule": {
            "tidebase-tick": {
                "task": "tidebase.tick",
                "schedule": tick_s,
                # A tick nobody ran in time is worthless; the next one does the same work.
                "options": {"expires": max(tick_s * 2, 1.0)},
            },
        },
    }
    retention_s = settings.TIDEBASE_RETENTION_INTERVAL_S
    if retention_s > 0:  # the retention policy (retention.tasks); a missed pass is redone by the next
        conf["beat_schedule"]["tidebase-retention"] = {
            "task": "tidebase.retention",
            "schedule": float(retention_s),
            "options": {"expires": float(retention_s)},
        }
    url = settings.CELERY_BROKER_URL
    if url:
        conf["broker_url"] = url
        if url.startswith(("redis://", "rediss://")):
            conf["broker_transport_options"] = {
                "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
                "socket_timeout": 10,
                "max_retries": 0,
            }
    else:
        queues, control = folder / "queues", folder / "control"
        queues.mkdir(exist_ok=True)
        control.mkdir(exist_ok=True)
        conf["broker_url"] = "tidebasefs://localhost/"  # a host, or kombu warns it assumed one
        conf["broker_transport_options"] = {
            "data_folder_in": str(queues),
            "data_folder_out": str(queues),
            "control_folder": str(control),
            "polling_interval": 0.1,
        }
        # Fan-out control messages to workers that died would pile up as files forever.
        conf["worker_enable_remote_control"] = False
    return conf


app = Celery("tidebase")
app.add_defaults(celery_settings)
app.autodiscover_tasks(["webhooks", "retention"])
