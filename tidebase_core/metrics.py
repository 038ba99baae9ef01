"""Prometheus figures, recorded where they happen and served at ``GET /metrics``.

Two kinds of figures:

- **Events** (counters and histograms), recorded by the process where they happen with
  ``prometheus_client``: HTTP requests (one observation per request, in the ASGI gateway),
  step latency (begin to complete, on complete), gate wait (created to resolved, on resolve),
  usage cost and tokens (on record), enqueue-to-claim wait (on claim), webhook attempts by
  outcome and attempt number (in the Celery worker) and reconciler ticks. Several web processes
  and Celery workers write them to one folder (``prometheus_client``'s multiprocess mode,
  ``PROMETHEUS_MULTIPROC_DIR``, set up by ``metrics_directory``); ``/metrics`` adds them up.
- **State** (gauges), computed from Postgres when ``/metrics`` is scraped
  (``tidebase_core.selectors.metrics``): active runs by status and workflow, pending gates,
  outbox backlog, queue depth, reconciler lag. No process has to remember them, so a restart
  or a second machine never makes them wrong.

``TIDEBASE_METRICS=0`` turns everything off: ``prometheus_client`` is never imported, every
``record`` function returns at once, and ``/metrics`` answers 404 ``metrics_disabled``.

Hot-path cost: one histogram observation per request (two locked writes into a memory-mapped
file) and, on step complete, one more; labels are resolved once per distinct label set and
cached. Caller-chosen label values (queue, provider, model) are capped per process
(``LABEL_VALUES_MAX``; further values count as ``other``) so an agent cannot explode the
number of series.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The folder prometheus_client's multiprocess mode writes to (read when it is first imported)."""
DIR_ENV = "TIDEBASE_METRICS_DIR"

ROUTE_ENVIRON = "tidebase.route"
"""Environ key where the WSGI side leaves the operation id of the route it served (the step hot
path, the scope guard of every protocol route); the gateway turns it into the ``route`` label."""

LABEL_VALUES_MAX = 200
"""Distinct values a caller-chosen label (queue, provider, model) takes per process."""

TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Request, attempt and tick durations: from a millisecond (a step) to a minute (a long-poll)."""
WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 86400, 7 * 86400)
"""Steps, gates and queued runs: from milliseconds to a week (a gate that waits for a human)."""
ATTEMPT_LABEL_MAX = 10
"""Attempt numbers above this are labelled ``10+`` (retries are few; redeliveries keep counting)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw not in {"0", "false", "no", "off"}


ENABLED = _flag("TIDEBASE_METRICS", True)
"""Read once per process; ``TIDEBASE_METRICS=0`` (for a bench comparison, or to opt out)."""


# ---- the shared folder ------------------------------------------------------------------------


def metrics_directory(*, owner: bool) -> str | None:
    """Make sure this process and the processes it starts write to one folder, and return it.

    ``PROMETHEUS_MULTIPROC_DIR`` already set (by a supervisor, or by hand): used as it is.
    Else ``TIDEBASE_METRICS_DIR``: used, created if missing. Else, for an ``owner`` (the web
    server, the supervisor), a fresh temporary folder removed when this process exits; other
    processes (a lone worker) then keep their figures in memory, unread. Call it before
    ``prometheus_client`` is imported, in a process that starts the others."""
    if not ENABLED:
        return None
    current = os.environ.get(MULTIPROC_ENV)
    if current:
        Path(current).mkdir(parents=True, exist_ok=True)
        return current
    chosen = os.environ.get(DIR_ENV)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
    elif owner:
        chosen = tempfile.mkdtemp(prefix="tidebase-metrics-")
        pid = os.getpid()

        def remove() -> None:
            if os.getpid() == pid:  # not in a forked child that inherited the handler
                shutil.rmtree(chosen, ignore_errors=True)

        atexit.register(remove)
    else:
        return None
    os.environ[MULTIPROC_ENV] = chosen
    return chosen


def clear_directory(path: str) -> None:
    """Empty the folder before any process writes to it (a supervisor starting its children):
    files of processes from an earlier start would otherwise be added in forever."""
    for entry in Path(path).glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


# ---- the figures ------------------------------------------------------------------------------


class _Capped:
    """A caller-chosen label value, or ``other`` once ``LABEL_VALUES_MAX`` values were seen."""

    def __init__(self, limit: int = LABEL_VALUES_MAX) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        text = (value or "")[:120]
        if text in self.seen:
            return text
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(text)
        return text


class _Figures:
    """Every event figure, created once per process (only when metrics are on)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = Histogram(
            "tidebase_http_request_duration_seconds",
            "HTTP requests by method, route template and status: time from the request's headers to its answer.",
            ["method", "route", "status"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.step = Histogram(
            "tidebase_step_duration_seconds",
            "Steps completed: time from the step's begin to its complete (database clock).",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.gate = Histogram(
            "tidebase_gate_wait_seconds",
            "Gates resolved, by decision: time from the gate's creation to its decision.",
            ["decision"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.cost = Counter(
            "tidebase_usage_cost_usd",
            "Usage cost recorded (USD; sent by the agent or computed by the server).",
            ["provider", "model"],
            registry=r,
        )
        self.tokens = Counter(
            "tidebase_usage_tokens",
            "Tokens recorded in usage records, by direction (input, output).",
            ["provider", "model", "direction"],
            registry=r,
        )
        self.usage_records = Counter(
            "tidebase_usage_records", "Usage records written.", ["provider", "model"], registry=r
        )
        self.claim = Histogram(
            "tidebase_queue_claim_wait_seconds",
            "Queued runs claimed, by queue: time from the run being ready (runAt) to its claim.",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "tidebase_webhook_deliveries",
            "Delivery attempts by kind (channel, recovery, notification), outcome and attempt number.",
            ["kind", "outcome", "attempt"],
            registry=r,
        )
        self.delivery_time = Histogram(
            "tidebase_webhook_attempt_duration_seconds",
            "Webhook attempts: time from connect to the receiver's answer (or the error).",
            ["kind"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.tick = Histogram(
            "tidebase_reconciler_tick_duration_seconds",
            "Reconciler ticks (reconciler pass and delivery sweep).",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.last_tick = Gauge(
            "tidebase_reconciler_last_tick_timestamp_seconds",
            "Unix time at which the last reconciler tick finished.",
            multiprocess_mode="max",
            registry=r,
        )
        self.queues = _Capped()
        self.providers = _Capped()
        self.models = _Capped()
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._children: dict[tuple[object, ...], Any] = {}

    def http_child(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:
            if method not in _METHODS:
                method = "other"
            child = self.http.labels(method, route, str(status))
            self._http_children[key] = child
        return child

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


_figures: _Figures | None = None
_lock = threading.Lock()


def figures() -> _Figures:
    global _figures
    if _figures is None:
        with _lock:
            if _figures is None:
                _figures = _Figures()
    return _figures


# ---- recording (each a no-op with metrics off) ------------------------------------------------


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """One HTTP request (the gateway calls it once per request)."""
    figures().http_child(method, route, status).observe(seconds)


def step_completed(step: Any) -> None:
    """A step checkpoint was written: its begin-to-complete time, from the stored row."""
    if not ENABLED or step.started_at is None or step.completed_at is None:
        return
    figures().step.observe(max(0.0, (step.completed_at - step.started_at).total_seconds()))


def gate_resolved(gate: Any) -> None:
    """A gate was decided (API, dashboard, resolve token or timeout)."""
    if not ENABLED or gate.resolved_at is None or gate.created_at is None:
        return
    f = figures()
    f.child(f.gate, str(gate.decision or gate.status)).observe(
        max(0.0, (gate.resolved_at - gate.created_at).total_seconds())
    )


def usage_recorded(record: Any) -> None:
    """A usage record was written (an idempotent retry is not counted again)."""
    if not ENABLED:
        return
    f = figures()
    provider, model = f.providers(record.provider), f.models(record.model)
    f.child(f.usage_records, provider, model).inc()
    cost = record.cost_usd
    if cost is not None and cost > 0:
        f.child(f.cost, provider, model).inc(float(cost) if isinstance(cost, Decimal) else cost)
    if record.input_tokens:
        f.child(f.tokens, provider, model, "input").inc(record.input_tokens)
    if record.output_tokens:
        f.child(f.tokens, provider, model, "output").inc(record.output_tokens)


def runs_claimed(runs: Iterable[Any]) -> None:
    """Queued runs were claimed: how long each waited since it became ready."""
    if not ENABLED:
        return
    f = figures()
    for run in runs:
        ready = run.run_at or run.created_at
        if run.claimed_at is None or ready is None:
            continue
        f.child(f.claim, f.queues(run.queue)).observe(max(0.0, (run.claimed_at - ready).total_seconds()))


def delivery_attempted(kind: str, number: int, outcome: str, seconds: float) -> None:
    """One webhook attempt finished: ``outcome`` is delivered, retry or failed."""
    if not ENABLED:
        return
    f = figures()
    attempt = str(number) if number < ATTEMPT_LABEL_MAX else f"{ATTEMPT_LABEL_MAX}+"
    f.child(f.deliveries, kind, outcome, attempt).inc()
    f.child(f.delivery_time, kind).observe(seconds)


def reconciler_ticked(seconds: float) -> None:
    if not ENABLED:
        return
    f = figures()
    f.tick.observe(seconds)
    f.last_tick.set(time.time())


# ---- the route label --------------------------------------------------------------------------

_templates: dict[str, str] | None = None


def _route_templates() -> dict[str, str]:
    """Operation id → route template (``/runs/{run_id}/steps/begin``), from the NinjaAPI."""
    global _templates
    if _templates is None:
        from config.api import api

        found = {"run_events": "/runs/{run_id}/events", "metrics": "/metrics"}
        for prefix, router in api._routers:
            for path, view in router.path_operations.items():
                for operation in view.operations:
                    if operation.operation_id:
                        found[operation.operation_id] = (prefix + path) or "/"
        _templates = found
    return _templates


_PREFIXES = (("/dashboard", "/dashboard"), ("/admin", "/admin"), ("/static", "/static"), ("/api", "/api"))


def route_label(path: str, operation_id: str | None) -> str:
    """The ``route`` label of a request: its template when a protocol route served it, else a
    fixed label per area (``/dashboard``, ``/admin``, ``/static``, ``/api``), ``unmatched`` for a
    protocol path no route took (401, 404) and ``other`` for the rest: never the raw path."""
    if operation_id is not None:
        return _route_templates().get(operation_id, operation_id)
    if path == "/health":
        return "/health"
    for prefix, label in _PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return label
    from tidebase_core.middleware import is_protocol_path

    return "unmatched" if is_protocol_path(path) else "other"


# ---- exposition -------------------------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector:
    """The state figures, read from Postgres at scrape time."""

    def collect(self) -> Iterator[Any]:
        from tidebase_core.selectors.metrics import state_families

        yield from state_families()


def render() -> bytes:
    """The exposition of every figure: events of every process writing to the shared folder
    (or of this process alone, without one) plus the state read from Postgres now."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    else:
        registry.register(_LocalCollector(figures().registry))
    registry.register(_StateCollector())
    return generate_latest(registry)


class _LocalCollector:
    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()
