"""Where the time of one request goes, route by route, on our server (issue #11).

    DATABASE_URL=postgres://... .venv/bin/python scripts/profile_routes.py [--samples 200]

Starts gunicorn as ``tidebase_serve`` does (gthread, 32 threads) but with ONE worker whose WSGI
app is this module's ``instrumented_app()``: ``config.wsgi.application`` with timers around the
layers a request passes through. It drives the routes sequentially with a new connection per
request, as the official client does (urllib), on a fresh database ``tidebase_profile``, then
reads the worker's timings back from ``GET /__profile`` (served by the wrapper, never by Django).

Per request, each layer's *exclusive* time (its own time, without the layers inside it):

- ``client + loopback + accept``: client-side latency minus the worker's ``handle()``: urllib,
  the TCP connection, gunicorn's poller and thread-pool hand-off. ``bare_rtt_ms`` is the same
  client against a minimal raw-socket server, for scale;
- ``gunicorn``: ``ThreadWorker.handle`` itself: request parsing, the WSGI environ, writing the answer;
- ``django handler``: ``WSGIHandler``/``BaseHandler`` (``WSGIRequest``, signals, the response
  object), our ``application()`` dispatch, and ``close()`` of the response;
- ``hot path``: ``tidebase_core.api.hotpath.serve`` (steps bypass Django; other routes only pay the check);
- ``url resolve``: ``BaseHandler.resolve_request``;
- ``protocol middleware``: ``ProtocolMiddleware`` (auth, CORS, raw-path routing, body limit);
- ``ninja``: ``Operation.run`` around the view (checks, decorators, response handling);
- ``json parse``: ``JsonParser.parse_body`` (``hotpath.loads`` on steps);
- ``pydantic``: ``Operation._get_values`` without the JSON parse (schema validation, path params);
- ``view + service``: the route function (with ``scopes.guard``): Python in views and services, the ORM;
- ``serialize``: ``wire.*_out`` (models to dicts); ``json encode``: ``wire.dumps``;
- ``sql``: every ``psycopg`` ``Cursor.execute``/``executemany`` (a round trip each; an implicit
  ``BEGIN`` rides on the statement that opens a transaction), ``commit``, ``rollback``, ``connect``.

Means are additive (they sum to the worker's ``handle()`` mean); p50s are per layer. The timers
cost about a microsecond each, so instrumented totals are slightly above ``make bench``'s.
``--cprofile ROUTE`` adds the worker-side cProfile of that route (by internal time) to the JSON.
Prints one JSON object on stdout and a table on stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
PROFILE_DB = "tidebase_profile"

LAYERS = [
    ("outside", "client + loopback + accept"),
    ("gunicorn", "gunicorn"),
    ("django", "django handler"),
    ("hotpath", "hot path"),
    ("resolve", "url resolve"),
    ("middleware", "protocol middleware"),
    ("ninja", "ninja"),
    ("json_parse", "json parse"),
    ("pydantic", "pydantic"),
    ("view", "view + service"),
    ("serialize", "serialize"),
    ("json_encode", "json encode"),
    ("sql", "sql"),
    ("commit", "commit"),
    ("rollback", "rollback"),
    ("connect", "connect"),
]

ROUTES = [  # (key, method, path pattern)
    ("health", "GET", r"^/health$"),
    ("run_create", "POST", r"^/runs/[^/]+$"),
    ("usage_record", "POST", r"^/runs/[^/]+/usage$"),
    ("state_set", "PUT", r"^/runs/[^/]+/state$"),
    ("step_begin", "POST", r"^/runs/[^/]+/steps/begin$"),
    ("step_complete", "POST", r"^/runs/[^/]+/steps/[^/]+/complete$"),
    ("run_begin", "POST", r"^/runs/[^/]+/begin$"),
]

USAGE_BODY = {  # what the official client sends for ctx.usage.record(...) in make bench
    "kind": "llm",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "inputTokens": 1200,
    "outputTokens": 350,
    "costUsd": 0.0021,
    "metadata": {"bench": True},
}


def route_of(method: str, path: str) -> str:
    for key, m, pattern in ROUTES:
        if m == method and re.match(pattern, path):
            return key
    return f"{method} other"


# ---- inside the gunicorn worker -------------------------------------------------------------

_local = threading.local()
_records: list[dict[str, Any]] = []
_profiles: list[Any] = []  # cProfile.Profile per request of the --cprofile route
CPROFILE_ENV = "TIDEBASE_PROFILE_CPROFILE"


def _timed(name: str, fn: Any) -> Any:
    """Wrap ``fn`` so its exclusive time lands in the current request's record under ``name``."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        stack = getattr(_local, "stack", None)
        if stack is None:  # not inside a request (startup, background threads)
            return fn(*args, **kwargs)
        frame = [0.0]
        stack.append(frame)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            stack.pop()
            stack[-1][0] += elapsed
            record = _local.record
            record[name] = record.get(name, 0.0) + elapsed - frame[0]
            record["n_" + name] = record.get("n_" + name, 0) + 1

    return inner


def _sql_timed(fn: Any) -> Any:
    """Like ``_timed("sql")``, and keeps each statement's text and time."""
    timed = _timed("sql", fn)

    @functools.wraps(fn)
    def inner(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        record = getattr(_local, "record", None)
        if record is None:
            return fn(cursor, query, *args, **kwargs)
        from psycopg import pq

        conn = cursor.connection
        opens = not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE
        text = query if isinstance(query, str) else getattr(query, "as_string", lambda _c: repr(query))(conn)
        t0 = time.perf_counter()
        try:
            return timed(cursor, query, *args, **kwargs)
        finally:
            label = ("BEGIN; " if opens else "") + " ".join(str(text).split())[:140]
            record.setdefault("statements", []).append([label, time.perf_counter() - t0])

    return inner


def instrumented_app() -> Any:
    """The gunicorn app (``profile_routes:instrumented_app()``): config.wsgi.application, timed."""
    wsgi = importlib.import_module("config.wsgi")  # first: it sets Django up
    import psycopg
    from django.core.handlers.base import BaseHandler
    from gunicorn.workers.gthread import ThreadWorker
    from ninja.operation import Operation

    from config.api import JsonParser
    from tidebase_core import wire
    from tidebase_core.api import hotpath
    from tidebase_core.middleware import ProtocolMiddleware

    cprofile_route = os.environ.get(CPROFILE_ENV) or None
    orig_handle = ThreadWorker.handle

    def handle(self: Any, conn: Any) -> Any:
        _local.stack = [[0.0]]
        _local.record = {}
        t0 = time.perf_counter()
        try:
            return orig_handle(self, conn)
        finally:
            total = time.perf_counter() - t0
            record = _local.record
            record["gunicorn"] = total - _local.stack[0][0]
            record["handle"] = total
            _local.stack = _local.record = None
            if record.get("route") and record["route"] != "profile":
                _records.append(record)

    ThreadWorker.handle = handle  # type: ignore[method-assign]

    django_app = wsgi.application

    def application(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/__profile":
            body = json.dumps({"records": _records, "cprofile": cprofile_lines()}).encode()
            _records.clear()
            _profiles.clear()
            if getattr(_local, "record", None) is not None:
                _local.record["route"] = "profile"
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        route = route_of(environ.get("REQUEST_METHOD", ""), path)
        if getattr(_local, "record", None) is not None:
            _local.record["route"] = route

        def whole(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            result = django_app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # request_finished: close_old_connections and friends

        if route != cprofile_route:
            return _timed("django", whole)(environ, start_response)
        profile = cProfile.Profile()
        profile.enable()
        try:
            return _timed("django", whole)(environ, start_response)
        finally:
            profile.disable()
            _profiles.append(profile)

    hotpath.serve = _timed("hotpath", hotpath.serve)
    hotpath.loads = _timed("json_parse", hotpath.loads)
    hotpath.dumps = _timed("json_encode", hotpath.dumps)
    BaseHandler.resolve_request = _timed("resolve", BaseHandler.resolve_request)  # type: ignore[method-assign]
    ProtocolMiddleware.__call__ = _timed("middleware", ProtocolMiddleware.__call__)  # type: ignore[method-assign]
    JsonParser.parse_body = _timed("json_parse", JsonParser.parse_body)  # type: ignore[method-assign]
    Operation._get_values = _timed("pydantic", Operation._get_values)  # type: ignore[method-assign]
    orig_run = Operation.run

    def run(self: Any, request: Any, **kw: Any) -> Any:
        if not getattr(self, "_profiled", False):
            self.view_func = _timed("view", self.view_func)
            self._profiled = True
        return orig_run(self, request, **kw)

    Operation.run = _timed("ninja", run)  # type: ignore[method-assign]
    for name in dir(wire):
        if name.endswith("_out") and callable(getattr(wire, name)):
            setattr(wire, name, _timed("serialize", getattr(wire, name)))
    wire.dumps = _timed("json_encode", wire.dumps)
    psycopg.Cursor.execute = _sql_timed(psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = _sql_timed(psycopg.Cursor.executemany)  # type: ignore[method-assign]
    psycopg.Connection.commit = _timed("commit", psycopg.Connection.commit)  # type: ignore[method-assign]
    psycopg.Connection.rollback = _timed("rollback", psycopg.Connection.rollback)  # type: ignore[method-assign]
    connect = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]
    psycopg.Connection.connect = classmethod(_timed("connect", connect))  # type: ignore[method-assign,assignment]
    return application


def cprofile_lines(top: int = 40) -> list[str]:
    """The collected cProfile data, by internal time (instrumentation wrappers included)."""
    if not _profiles:
        return []
    out = io.StringIO()
    stats = pstats.Stats(_profiles[0], stream=out)
    for profile in _profiles[1:]:
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(top)
    return [line for line in out.getvalue().splitlines() if line.strip()]


# ---- the driver -----------------------------------------------------------------------------


def request(url: str, method: str, path: str, body: Any = None) -> tuple[Any, float]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"}, method=method)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as response:
        answer = json.loads(response.read().decode())
    return answer, time.perf_counter() - t0


class Driver:
    def __init__(self, url: str) -> None:
        self.url = url
        self.n = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[Any, float]:
        self.n += 1
        return request(self.url, method, path, body)

    def running_run(self, name: str) -> tuple[str, str]:
        run_id = self.call("POST", f"/runs/{name}", {"input": {}})[0]["run"]["id"]
        return run_id, self.call("POST", f"/runs/{run_id}/begin")[0]["leaseOwner"]

    def samples(self, route: str, n: int) -> dict[str, list[float]]:
        """Client-side seconds per request; ``step`` gives ``step_begin`` and ``step_complete``."""
        out: list[float] = []
        if route == "step":
            run_id, owner = self.running_run("profile-steps")
            begins, completes = [], []
            for i in range(n):
                name = f"step-{self.n}-{i}"
                body = {"name": name, "inputHash": "h-" + name, "input": {"i": i}, "options": {}, "leaseOwner": owner}
                began, begin_s = self.call("POST", f"/runs/{run_id}/steps/begin", body)
                _, complete_s = self.call(
                    "POST", f"/runs/{run_id}/steps/{began['step']['id']}/complete", {"leaseOwner": owner, "output": i}
                )
                begins.append(begin_s)
                completes.append(complete_s)
            return {"step_begin": begins, "step_complete": completes}
        if route == "health":
            for _ in range(n):
                out.append(self.call("GET", "/health")[1])
        elif route == "run_create":
            for i in range(n):
                out.append(self.call("POST", "/runs/profile", {"input": {"i": i}})[1])
        elif route == "usage_record":
            run_id, _ = self.running_run("profile-usage")
            for _ in range(n):
                out.append(self.call("POST", f"/runs/{run_id}/usage", USAGE_BODY)[1])
        elif route == "state_set":
            run_id, _ = self.running_run("profile-state")
            for i in range(n):
                value = {"i": i, "status": "working", "items": ["a", "b", "c"], "progress": {"done": i, "total": 100}}
                out.append(self.call("PUT", f"/runs/{run_id}/state", {"value": value})[1])
        else:
            raise SystemExit(f"unknown route {route!r} (health, run_create, usage_record, state_set, step)")
        return {route: out}


def summarize(route: str, client: list[float], records: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in records if r.get("route") == route]
    handle = [r["handle"] for r in mine]
    ms = 1000.0
    # client latencies and worker records are matched by count, not one to one: layer means
    # come from the worker, "outside" is the client's mean minus the worker's handle() mean
    layers: dict[str, dict[str, float]] = {}
    for key, _label in LAYERS:
        if key == "outside":
            values = [statistics.fmean(client) - statistics.fmean(handle)] if handle else [0.0]
            layers[key] = {"mean_ms": round(values[0] * ms, 3)}
            continue
        values = [r.get(key, 0.0) for r in mine]
        if not any(values):
            continue
        layers[key] = {
            "mean_ms": round(statistics.fmean(values) * ms, 3),
            "p50_ms": round(statistics.median(values) * ms, 3),
            "calls": statistics.median(r.get("n_" + key, 0) for r in mine),
        }
    statements = [r.get("statements", []) for r in mine]
    shape = statements[-1] if statements else []
    same = [s for s in statements if [x[0][:40] for x in s] == [x[0][:40] for x in shape]]
    per_statement = [
        {"sql": label, "p50_ms": round(statistics.median(s[i][1] for s in same) * ms, 3)}
        for i, (label, _) in enumerate(shape)
    ]
    return {
        "samples": len(client),
        "client_p50_ms": round(statistics.median(client) * ms, 3),
        "client_mean_ms": round(statistics.fmean(client) * ms, 3),
        "handle_p50_ms": round(statistics.median(handle) * ms, 3) if handle else None,
        "handle_mean_ms": round(statistics.fmean(handle) * ms, 3) if handle else None,
        "sql_round_trips": statistics.median(r.get("n_sql", 0) for r in mine) if mine else None,
        "commits": statistics.median(r.get("n_commit", 0) for r in mine) if mine else None,
        "layers": layers,
        "statements": per_statement,
    }


def table(report: dict[str, Any]) -> list[str]:
    routes = list(report["routes"])
    lines = ["| mean ms | " + " | ".join(routes) + " |", "|---" * (len(routes) + 1) + "|"]
    lines.append("| client p50 | " + " | ".join(f"{report['routes'][r]['client_p50_ms']:.2f}" for r in routes) + " |")
    for key, label in LAYERS:
        cells = []
        for r in routes:
            layer = report["routes"][r]["layers"].get(key)
            cell = f"{layer['mean_ms']:.3f}" if layer else "-"
            if key == "sql" and layer:
                cell += f" ({report['routes'][r]['sql_round_trips']:g} trips)"
            cells.append(cell)
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| client mean | " + " | ".join(f"{report['routes'][r]['client_mean_ms']:.3f}" for r in routes) + " |")
    lines.append(f"(bare loopback RTT, same client: p50 {report['bare_rtt_ms']:.3f} ms)")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--cprofile",
        metavar="ROUTE",
        help="also cProfile the server side of this route (run_create, usage_record, state_set, health, ...)",
    )
    parser.add_argument("--routes", default="health,run_create,usage_record,state_set,step", help="comma-separated")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SCRIPTS))
    import bench

    base_url = bench.base_database_url()
    db_url = bench.prepare_database(base_url, PROFILE_DB)
    port = bench.free_port()
    url = f"http://127.0.0.1:{port}"
    # gunicorn, not the uvicorn gateway: its ThreadWorker.handle is the timed "HTTP server" layer,
    # and the layers measured here (Django, ninja, SQL) are the same under both.
    argv_ = [sys.executable, "-m", "gunicorn", "--pythonpath", str(SCRIPTS), "profile_routes:instrumented_app()"]
    argv_ += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread", "--threads", "32"]
    (ROOT / "var").mkdir(exist_ok=True)
    log_path = ROOT / "var" / "profile-server.log"
    env = bench.clean_env(DATABASE_URL=db_url, PORT=str(port), TIDEBASE_PUBLIC_URL=url, TIDEBASE_API_KEY="")
    env[CPROFILE_ENV] = args.cprofile or ""
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(argv_, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        echo, rtt_url = bench.start_echo()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    bench.http_get(url + "/health")
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"profile server did not start; see {log_path}") from None
                    time.sleep(0.1)
            rtt = []
            for i in range(args.samples + 20):
                req = urllib.request.Request(
                    rtt_url, data=b'{"name":"s"}', headers={"content-type": "application/json"}
                )
                t0 = time.perf_counter()
                with urllib.request.urlopen(req) as response:
                    response.read()
                if i >= 20:
                    rtt.append(time.perf_counter() - t0)
            driver = Driver(url)
            routes = [r.strip() for r in args.routes.split(",") if r.strip()]
            for route in routes:
                driver.samples(route, args.warmup)
            request(url, "GET", "/__profile")  # drop the warm-up records
            report: dict[str, Any] = {
                "server": " ".join(argv_[1:]),
                "database": PROFILE_DB,
                "bare_rtt_ms": round(statistics.median(rtt) * 1000, 3),
                "routes": {},
            }
            for route in routes:
                clients = driver.samples(route, args.samples)
                dump = request(url, "GET", "/__profile")[0]
                for key, client in clients.items():
                    report["routes"][key] = summarize(key, client, dump["records"])
                    if key == args.cprofile:
                        report["routes"][key]["cprofile"] = dump["cprofile"]
                    print(f"[profile] {key}: client p50 {statistics.median(client) * 1000:.2f} ms", file=sys.stderr)
        finally:
            echo.terminate()
            server.terminate()
            server.wait(15)
            echo.wait(5)
    print(json.dumps(report, indent=2))
    for line in table(report):
        print(f"[profile] {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
