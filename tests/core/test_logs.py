"""Logs people can read (issue #13, item 4): a request id on every answer and on every line
logged while serving it, JSON lines on demand, task ids in Celery tasks, and ticks that did
nothing stay silent."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tidebase_core import auth
from tidebase_core.logs import TASK_ID, ContextFilter, JsonFormatter, TextFormatter

pytestmark = pytest.mark.django_db(transaction=True)

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Records of the ``tidebase`` loggers, formatted as in production with TIDEBASE_LOG_FORMAT=json."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    probe = logging.getLogger("tidebase.probe")
    probe.addHandler(handler)
    probe.setLevel(logging.INFO)
    yield out
    probe.removeHandler(handler)


@pytest.fixture
def logging_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request authenticates (hot path and middleware alike): log a line while doing it."""
    real = auth.authenticate

    def authenticate(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("tidebase.probe").info("probe", extra={"where": "auth"})
        return real(*args, **kwargs)

    monkeypatch.setattr(auth, "authenticate", authenticate)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def begin_path(client: Client) -> tuple[str, bytes]:
    run = client.post("/runs/logs", {}, content_type="application/json").json()["run"]
    owner = client.post(f"/runs/{run['id']}/begin").json()["leaseOwner"]
    body = json.dumps({"name": "s", "inputHash": "h", "leaseOwner": owner}).encode()
    return f"/runs/{run['id']}/steps/begin", body


def hot_path(path: str, body: bytes, request_id: str) -> tuple[str, dict[str, str]]:
    """A step begin through the WSGI entry point, as the gateway calls it: the hot path answers
    it without Django's handler or any middleware."""
    from config import wsgi

    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_REQUEST_ID": request_id,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
    }
    answered: list[tuple[str, dict[str, str]]] = []
    chunks = wsgi.application(env, lambda status, headers: answered.append((status, dict(headers))))
    assert json.loads(b"".join(chunks))["action"] == "execute"
    return answered[0]


def test_request_id_is_echoed_and_on_every_line(json_lines: io.StringIO, logging_auth: None) -> None:
    client = Client()
    path, body = begin_path(client)
    json_lines.truncate(0)
    json_lines.seek(0)
    status, headers = hot_path(path, body, "req-hot-1")
    assert status.startswith("200")
    assert headers["X-Request-ID"] == "req-hot-1"
    listed = client.get("/runs", headers={"X-Request-ID": "req-list-2"})
    assert listed.headers["X-Request-ID"] == "req-list-2"
    page = client.get("/dashboard/login/", headers={"X-Request-ID": "req-page-3"})
    assert page.headers["X-Request-ID"] == "req-page-3"
    lines = parsed(json_lines)
    assert [line["request_id"] for line in lines] == ["req-hot-1", "req-list-2"]
    assert all(line["message"] == "probe" and line["where"] == "auth" for line in lines)
    assert all(line["logger"] == "tidebase.probe" and line["level"] == "INFO" and line["ts"] for line in lines)


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 200, 'quote"', "ü"])
def test_missing_or_unsafe_request_id_is_replaced(sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    answered = Client().get("/runs", headers=headers)
    assert GENERATED.fullmatch(answered.headers["X-Request-ID"])
    assert Client().get("/runs").headers["X-Request-ID"] != answered.headers["X-Request-ID"]


def test_no_request_id_outside_a_request(json_lines: io.StringIO) -> None:
    Client().get("/runs", headers={"X-Request-ID": "gone-after"})
    logging.getLogger("tidebase.probe").info("later")
    assert "request_id" not in parsed(json_lines)[-1]


def test_celery_task_lines_carry_the_task_id(json_lines: io.StringIO) -> None:
    from celery.signals import task_postrun, task_prerun

    import webhooks.tasks  # noqa: F401  (connects the signals)

    task_prerun.send(sender=None, task_id="task-42", task=None)
    logging.getLogger("tidebase.probe").info("inside")
    task_postrun.send(sender=None, task_id="task-42", task=None)
    logging.getLogger("tidebase.probe").info("after")
    inside, after = parsed(json_lines)
    assert inside["task_id"] == "task-42"
    assert "task_id" not in after
    assert TASK_ID.get() is None


def test_json_lines_keep_exceptions_on_one_line(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tidebase.probe").exception("failed", extra={"delivery_id": "d_1"})
    (line,) = json_lines.getvalue().splitlines()
    record = json.loads(line)
    assert record["delivery_id"] == "d_1"
    assert "ValueError: boom" in record["exc_info"]


def test_text_lines_show_extra_fields() -> None:
    record = logging.makeLogRecord({"name": "webhooks", "levelname": "WARNING", "msg": "webhook.publish.failed"})
    record.delivery_id = "d_9"
    ContextFilter().filter(record)
    assert TextFormatter().format(record).endswith("webhooks: webhook.publish.failed delivery_id=d_9")


def test_a_tick_that_did_nothing_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from webhooks import tasks

    caplog.set_level(logging.DEBUG)
    result = tasks.tick()
    assert result["swept"] == 0
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_tick_that_did_something_logs_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhooks import tasks

    monkeypatch.setattr(tasks, "reconcile_locked", lambda: {"leases": {"requeued": 2, "failed": 0}, "deadlines": 0})
    monkeypatch.setattr(tasks, "sweep", lambda: 3)
    caplog.set_level(logging.INFO)
    tasks.tick()
    (line,) = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert line.getMessage() == "tick: reconcile.leases.requeued=2, swept=3"


def test_celery_chatter_is_off_at_info() -> None:
    """Celery's per-task lines (received, succeeded) and beat's per-tick "Sending due task"."""
    for name in ("celery.beat", "celery.app.trace", "celery.worker.strategy", "pgserver"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
