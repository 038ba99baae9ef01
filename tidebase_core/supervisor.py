"""A small process supervisor for ``make run`` (``manage.py tidebase_run``).

It starts the web server and the webhook worker (with its embedded beat, or a separate beat),
restarts a child that exits when nobody asked it to (after a backoff that doubles on every
quick failure, up to ``TIDEBASE_RESTART_BACKOFF_MAX_S``), and on SIGINT, SIGTERM or SIGHUP
stops every child with SIGTERM, then SIGKILL after ``TIDEBASE_STOP_TIMEOUT_S``.

Each child runs in its own session, so its process group holds everything it forks (uvicorn's
web processes, Celery's embedded beat). Signals go to the whole group: a child that died
leaves no orphan behind (the group is cleaned before the restart), and a terminal's Ctrl-C
reaches the children only through the supervisor, once. On Linux each child also gets SIGTERM
if the supervisor itself is killed (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

STABLE_AFTER_S = 30.0
"""A child that ran this long before exiting restarts after the shortest backoff again."""
BACKOFF_MIN_S = 1.0
LEFTOVER_GRACE_S = 3.0
"""After a child's leader died: how long the rest of its group gets to stop on SIGTERM."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the supervisor dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    quick_failures: int = 0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        children: dict[str, list[str]],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stop_timeout_s: float | None = None,
        backoff_max_s: float | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.children = [Child(name, argv) for name, argv in children.items()]
        self.env = env
        self.cwd = cwd
        self.stop_timeout_s = (
            stop_timeout_s if stop_timeout_s is not None else _env_float("TIDEBASE_STOP_TIMEOUT_S", 20.0)
        )
        self.backoff_max_s = max(
            backoff_max_s if backoff_max_s is not None else _env_float("TIDEBASE_RESTART_BACKOFF_MAX_S", 30.0),
            BACKOFF_MIN_S,
        )
        self.out = out or sys.stderr
        self._stop = threading.Event()
        self._signals = 0

    def say(self, message: str) -> None:
        print(f"tidebase_run: {message}", file=self.out, flush=True)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(  # noqa: S603 - argv built by tidebase_run
            child.argv,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()
        child.pids.append(child.proc.pid)

    def _clean_group(self, pgid: int) -> None:
        """What a dead leader left in its group (an embedded beat, uvicorn workers) goes too."""
        if not _group_alive(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)

    def _check(self, child: Child, now: float) -> None:
        if child.proc is None:
            if now >= child.restart_at and not self._stop.is_set():
                self._start(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        self._clean_group(child.proc.pid)
        ran_s = now - child.started_at
        child.quick_failures = 0 if ran_s >= STABLE_AFTER_S else child.quick_failures + 1
        delay = min(BACKOFF_MIN_S * 2 ** max(child.quick_failures - 1, 0), self.backoff_max_s)
        child.proc = None
        child.restart_at = now + delay
        child.restarts += 1
        self.say(f"{child.name} {describe_exit(code)} after {ran_s:.1f}s; restarting in {delay:g}s")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Supervise until a stop signal (or ``until()``); then stop every child. Returns 0."""
        for child in self.children:
            self._start(child)
        while not self._stop.is_set() and not (until is not None and until()):
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            self._stop.wait(0.2)
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        running = [c for c in self.children if c.proc is not None]
        self.say(f"stopping {', '.join(c.name for c in running) or 'nothing'}")
        for child in running:
            assert child.proc is not None
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        first_signals = self._signals
        for child in running:
            assert child.proc is not None
            while child.proc.poll() is None and time.monotonic() < deadline and self._signals <= first_signals:
                time.sleep(0.05)  # a second Ctrl-C means "now": fall through to SIGKILL
        for child in running:
            assert child.proc is not None
            if child.proc.poll() is None:
                self.say(f"{child.name} did not stop in time: SIGKILL")
            _signal_group(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
            child.proc = None
