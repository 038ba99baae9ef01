"""Hold many open connections against a Tidebase server and measure whether it still answers
(issue #11, goal 1). Works against any Tidebase server on this machine (ours or the upstream
reference); traffic goes to 127.0.0.1 only. Standard library only: run it with any Python 3.11+.

    .venv/bin/python scripts/hold_connections.py --url http://127.0.0.1:7373 --connections 2000

What it does:

1. Setup, with the API key if one is given (``--api-key`` or ``TIDEBASE_API_KEY``): runs to stream,
   runs waiting at a pending gate, and one run for the step loop.
2. Idle baseline: ``GET /health`` latency and step latency (``steps/begin`` + ``complete``, a new
   connection per request like the official client), before any connection is held.
3. Opens ``--connections`` connections over ``--ramp-s`` seconds, in the ``--mix`` proportions:
   - ``sse``: ``GET /runs/:id/events?after=0`` (``&token=`` with a key, like the Python SDK),
     read until the server closes it; reconnects after 3 s like EventSource;
   - ``gate``: ``GET /runs/:id/gates/:gid?waitMs=W`` on a pending gate, re-sent on the same
     keep-alive connection when answered;
   - ``claim``: ``POST /queues/claim {"queues": [<empty queue>], "waitMs": W}``, re-sent likewise;
   - ``stalled``: half a request line (``GET /runs HT``), then nothing;
   - ``slow``: the head of a ``POST /runs/hold-slow`` with a 1 MB ``Content-Length``, then one
     body byte every ``--trickle-s`` seconds.
   ``stalled`` and ``slow`` never send an API key. A server that answers a long-poll early (one
   that ignores ``waitMs``, such as the reference) is polled again after ``--poll-s`` (the
   official client's default poll interval). Connections the server closes are reopened after a
   pause (a population of such clients, not a fixed set of sockets).
4. Holds them for ``--duration`` seconds (default 60, at most 600) while a thread samples
   ``GET /health`` every ``--health-interval`` seconds and another runs steps back to back.
5. Prints one JSON object: connections held (client side: open sockets; SSE: streams that got
   their 200; long-polls: requests outstanding longer than W + 5 s, which no server answered),
   health p50/p99/max/timeouts idle and loaded, step p50 idle and loaded, and the goal-1 checks
   (health answers within ``--health-budget-ms``, loaded step p50 within ``--step-ratio-max``
   times idle). The probe's own CPU time is reported: it shares the machine with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

KINDS = ("sse", "gate", "claim", "stalled", "slow")
DEFAULT_MIX = "sse=30,gate=25,claim=25,stalled=10,slow=10"
MAX_CONNECTIONS = 5000
MAX_DURATION_S = 600
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SLOW_BODY_BYTES = 1_000_000
OVERDUE_SLACK_S = 5.0
SSE_RETRY_S = 3.0
RECONNECT_PAUSE_S = 1.0


def log(message: str) -> None:
    print(f"[hold] {message}", file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_summary(
    samples_s: list[float], *, timeouts: int = 0, errors: int = 0, budget_ms: float | None = None
) -> dict[str, Any]:
    ms = [s * 1000 for s in samples_s]
    out: dict[str, Any] = {"n": len(ms), "timeouts": timeouts, "errors": errors}
    if ms:
        out.update(p50=round(pct(ms, 0.5), 3), p99=round(pct(ms, 0.99), 3), max=round(max(ms), 3))
        if budget_ms is not None:
            out["within_budget"] = round(sum(1 for x in ms if x <= budget_ms) / len(ms), 4)
    return out


# ---- blocking client (setup, health and step measurements) ----------------------------------


class Api:
    """One new connection per request, like the official client (urllib)."""

    def __init__(self, port: int, api_key: str | None) -> None:
        self.port = port
        self.api_key = api_key

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"content-type": "application/json", "connection": "close"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw[:200].decode("utf-8", "replace")
        return response.status, data

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {data}")
        return data


def step_once(api: Api, run_id: str, owner: str, name: str, timeout: float) -> float:
    """steps/begin + complete; seconds. Raises on a non-200 or an unexpected action."""
    t0 = time.perf_counter()
    body = {"name": name, "inputHash": "h-" + name, "input": {"n": name}, "options": {}, "leaseOwner": owner}
    status, began = api.call("POST", f"/runs/{run_id}/steps/begin", body, timeout=timeout)
    if status != 200 or began.get("action") != "execute":
        raise RuntimeError(f"steps/begin answered {status}: {began}")
    status, done = api.call(
        "POST",
        f"/runs/{run_id}/steps/{began['step']['id']}/complete",
        {"leaseOwner": began["leaseOwner"], "output": {"ok": True}},
        timeout=timeout,
    )
    if status != 200:
        raise RuntimeError(f"steps/complete answered {status}: {done}")
    return time.perf_counter() - t0


def health_once(api: Api, timeout: float) -> float:
    t0 = time.perf_counter()
    status, _ = api.call("GET", "/health", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET /health answered {status}")
    return time.perf_counter() - t0


@dataclass
class Sampler:
    """Samples collected by a background thread until ``stop`` is set."""

    samples: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    last_error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def record(self, fn: Any) -> None:
        try:
            self.samples.append(fn())
        except TimeoutError:
            self.timeouts += 1
        except Exception as exc:  # a refused or reset connection is a result, not a crash
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]


def health_loop(api: Api, out: Sampler, interval: float, timeout: float) -> None:
    while not out.stop.is_set():
        started = time.monotonic()
        out.record(lambda: health_once(api, timeout))
        out.stop.wait(max(0.0, interval - (time.monotonic() - started)))


def step_loop(api: Api, run_id: str, owner: str, prefix: str, out: Sampler, pause: float, timeout: float) -> None:
    i = 0
    while not out.stop.is_set():
        out.record(lambda i=i: step_once(api, run_id, owner, f"{prefix}-{i}", timeout))
        i += 1
        out.stop.wait(pause)


# ---- held connections (asyncio, raw sockets) ----------------------------------------------


@dataclass
class KindStats:
    requested: int = 0
    opened: int = 0
    connect_errors: int = 0
    open: int = 0  # sockets open now (client side)
    streaming: int = 0  # sse: streams that got their 200 and are still open
    closed_by_server: int = 0
    answers: int = 0
    early_answers: int = 0
    bytes_in: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    outstanding: dict[int, float] = field(default_factory=dict)  # long-polls: token -> sent at
    seconds_to_close: list[float] = field(default_factory=list)


class Probe:
    def __init__(self, args: argparse.Namespace, port: int, targets: dict[str, Any]) -> None:
        self.args = args
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.targets = targets
        self.stats = {k: KindStats() for k in KINDS}
        self.stop = asyncio.Event()
        self.wait_s = args.wait_ms / 1000
        self.tokens = 0

    # -- helpers --

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def connect(self, st: KindStats) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20), self.args.connect_timeout
            )
        except (TimeoutError, OSError):
            st.connect_errors += 1
            return None
        st.opened += 1
        st.open += 1
        return reader, writer

    @staticmethod
    def close(st: KindStats, writer: asyncio.StreamWriter) -> None:
        st.open -= 1
        writer.close()

    def auth_header(self) -> str:
        return f"Authorization: Bearer {self.args.api_key}\r\n" if self.args.api_key else ""

    @staticmethod
    async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        """Read one response; (status, connection reusable)."""
        line = await reader.readline()
        if not line:
            raise EOFError("closed before a response")
        version, status = line.split(b" ", 2)[:2]
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if not raw:
                raise EOFError("closed inside the response head")
            if raw in (b"\r\n", b"\n"):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        framed = True
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                await reader.readexactly(size + 2)
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        else:
            await reader.read()
            framed = False
        connection = headers.get("connection", "")
        reusable = framed and "close" not in connection and (version != b"HTTP/1.0" or "keep-alive" in connection)
        return int(status), reusable

    # -- the five kinds --

    async def sse(self, idx: int) -> None:
        st = self.stats["sse"]
        runs = self.targets["sse_runs"]
        run_id = runs[idx % len(runs)]
        token = f"&token={quote(self.args.api_key)}" if self.args.api_key else ""
        request = (
            f"GET /runs/{run_id}/events?after=0{token} HTTP/1.1\r\nHost: {self.host}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        while not self.stop.is_set():
            conn = await self.connect(st)
            if conn is None:
                await self.pause(SSE_RETRY_S)
                continue
            reader, writer = conn
            try:
                writer.write(request)
                await writer.drain()
                line = await reader.readline()
                status = int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/") else 0
                st.statuses[status] += 1
                if status == 200:
                    st.streaming += 1
                    try:
                        while True:
                            data = await reader.read(65536)
                            if not data:
                                break
                            st.bytes_in += len(data)
                    finally:
                        st.streaming -= 1
                st.closed_by_server += 1
            except (OSError, EOFError, ValueError, IndexError):
                st.closed_by_server += 1
            finally:
                self.close(st, writer)
            await self.pause(SSE_RETRY_S)

    async def long_poll(self, kind: str, request: bytes) -> None:
        st = self.stats[kind]
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self.stop.is_set():
                if conn is None:
                    conn = await self.connect(st)
                    if conn is None:
                        await self.pause(RECONNECT_PAUSE_S)
                        continue
                reader, writer = conn
                self.tokens += 1
                token = self.tokens
                sent = time.monotonic()
                st.outstanding[token] = sent
                try:
                    writer.write(request)
                    await writer.drain()
                    status, reusable = await self.read_response(reader)
                except (OSError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError):
                    st.closed_by_server += 1
                    self.close(st, writer)
                    conn = None
                    await self.pause(RECONNECT_PAUSE_S)
                    continue
                finally:
                    st.outstanding.pop(token, None)
                elapsed = time.monotonic() - sent
                st.answers += 1
                st.statuses[status] += 1
                early = elapsed < self.wait_s / 2
                st.early_answers += early
                if not reusable:
                    self.close(st, writer)
                    conn = None
                if early or status != 200:
                    await self.pause(self.args.poll_s)
        finally:
            if conn is not None:
                self.close(st, conn[1])

    def gate_request(self, idx: int) -> bytes:
        gates = self.targets["gates"]
        run_id, gate_id = gates[idx % len(gates)]
        return (
            f"GET /runs/{run_id}/gates/{gate_id}?waitMs={self.args.wait_ms} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\n{self.auth_header()}\r\n"
        ).encode()

    def claim_request(self) -> bytes:
        body = json.dumps({"queues": [self.targets["queue"]], "limit": 1, "waitMs": self.args.wait_ms}).encode()
        head = (
            f"POST /queues/claim HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{self.auth_header()}\r\n"
        )
        return head.encode() + body

    async def stalled(self, idx: int) -> None:
        st = self.stats["stalled"]
        while not self.stop.is_set():
            conn = await self.connect(st)
            if conn is None:
                await self.pause(RECONNECT_PAUSE_S)
                continue
            reader, writer = conn
            opened = time.monotonic()
            try:
                writer.write(b"GET /runs HT")  # half a request line, never finished
                await writer.drain()
                data = await reader.read(4096)  # until the server answers or closes
                if data.startswith(b"HTTP/"):
                    st.statuses[int(data.split(b" ", 2)[1])] += 1
            except (OSError, ValueError, IndexError):
                pass
            finally:
                self.close(st, writer)
            st.closed_by_server += 1
            st.seconds_to_close.append(time.monotonic() - opened)
            await self.pause(RECONNECT_PAUSE_S)

    async def slow(self, idx: int) -> None:
        st = self.stats["slow"]
        head = (
            f"POST /runs/hold-slow HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n"
        ).encode()
        while not self.stop.is_set():
            conn = await self.connect(st)
            if conn is None:
                await self.pause(RECONNECT_PAUSE_S)
                continue
            reader, writer = conn
            opened = time.monotonic()
            answer = asyncio.ensure_future(reader.read(4096))
            try:
                writer.write(head)
                await writer.drain()
                for _ in range(SLOW_BODY_BYTES):
                    done, _ = await asyncio.wait({answer}, timeout=self.args.trickle_s)
                    if done:
                        break
                    writer.write(b" ")
                    await writer.drain()
                data = answer.result() if answer.done() and not answer.exception() else b""
                if data.startswith(b"HTTP/"):
                    st.statuses[int(data.split(b" ", 2)[1])] += 1
            except (OSError, ValueError, IndexError):
                pass
            finally:
                if not answer.done():
                    answer.cancel()
                self.close(st, writer)
            st.closed_by_server += 1
            st.seconds_to_close.append(time.monotonic() - opened)
            await self.pause(RECONNECT_PAUSE_S)

    # -- orchestration --

    def snapshot(self) -> dict[str, dict[str, int]]:
        now = time.monotonic()
        overdue_after = self.wait_s + OVERDUE_SLACK_S
        out = {}
        for kind, st in self.stats.items():
            row = {"open": st.open}
            if kind == "sse":
                row["streaming"] = st.streaming
            if kind in ("gate", "claim"):
                row["overdue"] = sum(1 for t in list(st.outstanding.values()) if now - t > overdue_after)
            out[kind] = row
        return out

    def coroutine(self, kind: str, idx: int) -> Any:
        if kind == "sse":
            return self.sse(idx)
        if kind == "gate":
            return self.long_poll("gate", self.gate_request(idx))
        if kind == "claim":
            return self.long_poll("claim", self.claim_request())
        if kind == "stalled":
            return self.stalled(idx)
        return self.slow(idx)

    async def run(self, counts: dict[str, int], on_held: Any) -> dict[str, Any]:
        order = interleave(counts)
        for kind, n in counts.items():
            self.stats[kind].requested = n
        tasks: list[asyncio.Task[None]] = []
        ramp = self.args.ramp_s
        t0 = time.monotonic()
        log(f"opening {len(order)} connections over {ramp:.0f}s")
        for i, (kind, idx) in enumerate(order):
            due = t0 + ramp * i / max(1, len(order))
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.coroutine(kind, idx)))
        await asyncio.sleep(self.args.settle_s)
        log(f"holding for {self.args.duration:.0f}s: {self.snapshot()}")
        on_held()
        window: list[dict[str, dict[str, int]]] = []
        hold_start = time.monotonic()
        while time.monotonic() - hold_start < self.args.duration:
            window.append(self.snapshot())
            await asyncio.sleep(min(1.0, max(0.0, self.args.duration - (time.monotonic() - hold_start))))
        window.append(self.snapshot())
        self.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"window": window, "hold_s": round(time.monotonic() - hold_start, 1)}


def interleave(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Connections in an order that keeps the mix even over the ramp."""
    total = sum(counts.values())
    placed = []
    for kind, n in counts.items():
        placed += [((i + 0.5) / n, kind, i) for i in range(n)] if n else []
    placed.sort()
    assert len(placed) == total
    return [(kind, i) for _, kind, i in placed]


def parse_mix(spec: str, total: int) -> dict[str, int]:
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise SystemExit(f"unknown kind {name!r} in --mix (kinds: {', '.join(KINDS)})")
        weights[name] = float(value)
        if weights[name] < 0:
            raise SystemExit("--mix weights must be >= 0")
    scale = sum(weights.values())
    if scale <= 0:
        raise SystemExit("--mix needs a positive weight")
    exact = {k: total * w / scale for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return {k: counts.get(k, 0) for k in KINDS}


def raise_nofile(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---- setup, report, main --------------------------------------------------------------------


def setup(api: Api, counts: dict[str, int], cap: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    sse_runs = [
        api.ok("POST", "/runs/hold-sse", {"input": {"probe": tag}})["run"]["id"]
        for _ in range(min(cap, counts["sse"]) or 1)
    ]
    gates = []
    for k in range(min(cap, counts["gate"]) or 1):
        run_id = api.ok("POST", "/runs/hold-gate", {"input": {"probe": tag}})["run"]["id"]
        api.ok("POST", f"/runs/{run_id}/begin")
        gate = api.ok(
            "POST",
            f"/runs/{run_id}/gates/begin",
            {"name": f"hold-{k}", "prompt": "hold?", "data": {}, "channels": [], "capability": None},
        )["gate"]
        gates.append((run_id, gate["id"]))
    step_run = api.ok("POST", "/runs/hold-steps", {"input": {"probe": tag}})["run"]["id"]
    owner = api.ok("POST", f"/runs/{step_run}/begin")["leaseOwner"]
    return {
        "tag": tag,
        "sse_runs": sse_runs,
        "gates": gates,
        "queue": f"hold-{tag}",
        "step_run": step_run,
        "owner": owner,
    }


def connection_summary(probe: Probe, window: list[dict[str, dict[str, int]]]) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    held_totals = [sum(s[k]["open"] for k in KINDS) for s in window]
    for kind in KINDS:
        st = probe.stats[kind]
        opens = [s[kind]["open"] for s in window]
        row: dict[str, Any] = {
            "requested": st.requested,
            "held_min": min(opens),
            "held_median": statistics.median(opens),
            "held_end": opens[-1],
            "opened": st.opened,
            "connect_errors": st.connect_errors,
            "closed_by_server": st.closed_by_server,
            "statuses": {str(k): v for k, v in sorted(st.statuses.items())},
        }
        if kind == "sse":
            streaming = [s[kind]["streaming"] for s in window]
            row.update(streaming_min=min(streaming), streaming_end=streaming[-1], bytes_in=st.bytes_in)
        if kind in ("gate", "claim"):
            overdue = [s[kind]["overdue"] for s in window]
            row.update(answers=st.answers, early_answers=st.early_answers, overdue_max=max(overdue))
        if kind in ("stalled", "slow") and st.seconds_to_close:
            row["seconds_to_close_p50"] = round(statistics.median(st.seconds_to_close), 2)
        by_kind[kind] = row
    return {
        "requested": sum(probe.stats[k].requested for k in KINDS),
        "held_min": min(held_totals),
        "held_median": statistics.median(held_totals),
        "held_end": held_totals[-1],
        "sse_streaming_min": by_kind["sse"].get("streaming_min", 0),
        "long_polls_overdue_max": max((s["gate"]["overdue"] + s["claim"]["overdue"] for s in window), default=0),
        "by_kind": by_kind,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", default=os.environ.get("TIDEBASE_URL", "http://127.0.0.1:7373"))
    p.add_argument("--api-key", default=os.environ.get("TIDEBASE_API_KEY") or None)
    p.add_argument("--connections", type=int, default=2000, help=f"at most {MAX_CONNECTIONS}")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"weights per kind (default {DEFAULT_MIX})")
    p.add_argument("--duration", type=float, default=60, help=f"hold seconds, at most {MAX_DURATION_S}")
    p.add_argument("--ramp-s", type=float, default=10, help="seconds over which connections are opened")
    p.add_argument("--settle-s", type=float, default=3, help="pause between the ramp and the hold window")
    p.add_argument("--wait-ms", type=int, default=25000, help="waitMs of gate and claim long-polls")
    p.add_argument("--poll-s", type=float, default=1.0, help="pause after an early (not long-polled) answer")
    p.add_argument("--trickle-s", type=float, default=1.0, help="seconds between body bytes of slow clients")
    p.add_argument("--connect-timeout", type=float, default=10)
    p.add_argument("--setup-runs", type=int, default=50, help="distinct runs (and gates) to stream and wait on")
    p.add_argument("--health-interval", type=float, default=0.25)
    p.add_argument("--health-timeout", type=float, default=5)
    p.add_argument("--health-budget-ms", type=float, default=100)
    p.add_argument("--idle-health", type=int, default=100, help="GET /health samples before the hold")
    p.add_argument("--idle-steps", type=int, default=100, help="steps before the hold (after 20 warm-up)")
    p.add_argument("--step-pause-s", type=float, default=0.05, help="pause between loaded steps")
    p.add_argument("--step-timeout", type=float, default=10)
    p.add_argument("--step-ratio-max", type=float, default=1.5)
    args = p.parse_args(argv)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        p.error(f"--connections must be 1..{MAX_CONNECTIONS}")
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S}]")
    if not 0 <= args.ramp_s <= 120 or not 0 <= args.settle_s <= 60:
        p.error("--ramp-s must be 0..120 and --settle-s 0..60")
    if args.wait_ms < 1 or args.poll_s <= 0 or args.trickle_s <= 0 or args.health_interval <= 0:
        p.error("--wait-ms, --poll-s, --trickle-s and --health-interval must be positive")
    return args


def target_port(url: str) -> int:
    parsed = urlparse(url)
    if parsed.scheme != "http" or (parsed.hostname or "") not in LOOPBACK_HOSTS:
        raise SystemExit(f"--url must be http:// on this machine (127.0.0.1 or localhost), not {url!r}")
    if parsed.path not in ("", "/"):
        raise SystemExit("--url must not have a path")
    return parsed.port or 80


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    port = target_port(args.url)
    nofile = raise_nofile(args.connections + 256)
    if nofile[0] != resource.RLIM_INFINITY and nofile[0] < args.connections + 64:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}; cannot hold {args.connections} connections")
    counts = parse_mix(args.mix, args.connections)
    api = Api(port, args.api_key)
    health_once(api, args.health_timeout)
    targets = setup(api, counts, args.setup_runs)
    log(
        f"setup done: {len(targets['sse_runs'])} runs to stream, {len(targets['gates'])} gates, "
        f"queue {targets['queue']}"
    )

    idle_health = Sampler()
    for _ in range(args.idle_health):
        idle_health.record(lambda: health_once(api, args.health_timeout))
    for i in range(20):
        step_once(api, targets["step_run"], targets["owner"], f"warm-{i}", args.step_timeout)
    idle_steps = Sampler()
    for i in range(args.idle_steps):
        idle_steps.record(
            lambda i=i: step_once(api, targets["step_run"], targets["owner"], f"idle-{i}", args.step_timeout)
        )
    if not idle_steps.samples:
        raise SystemExit(f"no idle step succeeded: {idle_steps.last_error}")
    log(
        f"idle: health p50 {pct(idle_health.samples, 0.5) * 1000:.2f} ms, "
        f"step p50 {pct(idle_steps.samples, 0.5) * 1000:.2f} ms"
    )

    loaded_health, loaded_steps = Sampler(), Sampler()
    threads = [
        threading.Thread(
            target=health_loop, args=(api, loaded_health, args.health_interval, args.health_timeout), daemon=True
        ),
        threading.Thread(
            target=step_loop,
            args=(
                api,
                targets["step_run"],
                targets["owner"],
                "loaded",
                loaded_steps,
                args.step_pause_s,
                args.step_timeout,
            ),
            daemon=True,
        ),
    ]
    probe = Probe(args, port, targets)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    held = asyncio.run(probe.run(counts, on_held=lambda: [t.start() for t in threads]))
    for sampler in (loaded_health, loaded_steps):
        sampler.stop.set()
    for t in threads:
        t.join(args.step_timeout * 2 + args.health_timeout)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)

    connections = connection_summary(probe, held["window"])
    health = {
        "idle": latency_summary(
            idle_health.samples,
            timeouts=idle_health.timeouts,
            errors=idle_health.errors,
            budget_ms=args.health_budget_ms,
        ),
        "loaded": latency_summary(
            loaded_health.samples,
            timeouts=loaded_health.timeouts,
            errors=loaded_health.errors,
            budget_ms=args.health_budget_ms,
        ),
        "last_error": loaded_health.last_error,
    }
    idle_p50 = pct(idle_steps.samples, 0.5) * 1000
    loaded_p50 = pct(loaded_steps.samples, 0.5) * 1000 if loaded_steps.samples else None
    step = {
        "idle_p50_ms": round(idle_p50, 3),
        "loaded_p50_ms": round(loaded_p50, 3) if loaded_p50 is not None else None,
        "loaded_over_idle": round(loaded_p50 / idle_p50, 2) if loaded_p50 is not None else None,
        "idle": latency_summary(idle_steps.samples, timeouts=idle_steps.timeouts, errors=idle_steps.errors),
        "loaded": latency_summary(loaded_steps.samples, timeouts=loaded_steps.timeouts, errors=loaded_steps.errors),
        "last_error": loaded_steps.last_error,
    }
    loaded = health["loaded"]
    goal = {
        "all_connections_open": connections["held_min"] >= connections["requested"],
        "sse_all_streaming": connections["sse_streaming_min"] >= counts["sse"],
        "no_long_poll_overdue": connections["long_polls_overdue_max"] == 0,
        "health_within_budget": bool(loaded.get("n"))
        and loaded["timeouts"] == 0
        and loaded["errors"] == 0
        and loaded["max"] <= args.health_budget_ms,
        "step_p50_within_ratio": step["loaded_over_idle"] is not None
        and step["loaded_over_idle"] <= args.step_ratio_max
        and not loaded_steps.timeouts
        and not loaded_steps.errors,
        "health_budget_ms": args.health_budget_ms,
        "step_ratio_max": args.step_ratio_max,
    }
    report = {
        "target": {"url": args.url, "api_key": bool(args.api_key)},
        "config": {
            "connections": args.connections,
            "mix": counts,
            "duration_s": args.duration,
            "ramp_s": args.ramp_s,
            "wait_ms": args.wait_ms,
            "poll_s": args.poll_s,
            "trickle_s": args.trickle_s,
            "health_interval_s": args.health_interval,
        },
        "hold_s": held["hold_s"],
        "connections": connections,
        "health": health,
        "step": step,
        "goal": goal,
        "probe": {
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "wall_s": round(time.monotonic() - started, 1),
            "nofile": list(nofile),
        },
    }
    print(json.dumps(report, indent=2))
    log(
        f"held {connections['held_min']}..{connections['held_end']} of {connections['requested']} "
        f"(sse streaming >= {connections['sse_streaming_min']}, long-polls overdue <= "
        f"{connections['long_polls_overdue_max']}); health p50/p99/max {loaded.get('p50')}/{loaded.get('p99')}/"
        f"{loaded.get('max')} ms, {loaded['timeouts']} timeouts, {loaded['errors']} errors; step p50 idle "
        f"{step['idle_p50_ms']} ms, loaded {step['loaded_p50_ms']} ms ({step['loaded_over_idle']}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
