"""Logging: readable lines by default, one JSON object per line with ``TIDEBASE_LOG_FORMAT=json``.

Every record carries the id of the HTTP request (``request_id``) or Celery task (``task_id``)
that was being served when it was written, from context variables: the protocol middleware, the
dashboard middleware chain and the step hot path set the request id (taken from a sane
``X-Request-ID`` header, else generated, and echoed in the answer); Celery's ``task_prerun``
signal sets the task id. Context variables follow the request onto whichever thread serves it.

``LOGGING`` in ``config.settings`` wires the formatters and ``ContextFilter`` below; this module
also silences the start-up warnings that say nothing actionable (``quiet_warnings``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("tidebase_request_id", default=None)
TASK_ID: ContextVar[str | None] = ContextVar("tidebase_task_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
"""What a client may choose as its request id: short, printable, no spaces or quotes, so it can
be copied into a log line or a header unchanged. Anything else is replaced by our own."""


def request_id_from(value: str | None) -> str:
    """The client's ``X-Request-ID`` if sane, else a new random id."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return secrets.token_hex(16)


# Attributes every LogRecord has; anything else was passed as ``extra=`` and is printed.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "task_id"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class ContextFilter(logging.Filter):
    """Stamps the current request id and task id on a record (``None`` outside either)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.task_id = TASK_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``12:00:01 WARNING tidebase.x: message key=value ... [req=...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={v}" for k, v in _extras(record).items()]
        for key in ("request_id", "task_id"):
            value = getattr(record, key, None)
            if value:
                fields.append(f"{key}={value}")
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # fields stay on the first line, above a traceback
        return f"{head} {' '.join(fields)}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``request_id`` /
    ``task_id`` when set, every ``extra=`` field, and ``exc_info`` as text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "task_id"):
            value = getattr(record, key, None)
            if value:
                out[key] = value
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter_name(value: str | None) -> str:
    """``TIDEBASE_LOG_FORMAT``: ``json`` or ``text`` (the default)."""
    return "json" if (value or "").strip().lower() == "json" else "text"


def quiet_warnings() -> None:
    """Silence start-up warnings nobody can act on. whitenoise warns that ``STATIC_ROOT`` does not
    exist when ``collectstatic`` was never run, although it serves from the finders then
    (``WHITENOISE_USE_FINDERS``); Celery warns that it runs as root, which containers and this
    kind of machine do, and which matters only with pickle (never accepted here). Called before
    the embedded Postgres starts too, whose warnings come before Django configures logging."""
    warnings.filterwarnings("ignore", message=r"No directory at: .*staticfiles")
    warnings.filterwarnings("ignore", message=r"You're running the worker with superuser privileges")
    # The embedded Postgres (pgserver) asks platformdirs for a runtime dir it then does not need.
    warnings.filterwarnings("ignore", message=r"XDG_RUNTIME_DIR is not set")


def install_celery_task_ids() -> None:
    """Set ``TASK_ID`` while a Celery task runs, so every line it logs names the task."""
    from celery.signals import task_postrun, task_prerun

    def started(task_id: str | None = None, **_: Any) -> None:
        TASK_ID.set(task_id)

    def finished(**_: Any) -> None:
        TASK_ID.set(None)

    task_prerun.connect(started, weak=False, dispatch_uid="tidebase.logs.task_id.start")
    task_postrun.connect(finished, weak=False, dispatch_uid="tidebase.logs.task_id.end")
