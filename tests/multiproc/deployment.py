"""The process layout of a multi-machine deployment, on this machine (issue #13, item 1).

Everything here is a real, separate process, started the way an operator starts it:

- a private Postgres cluster (``initdb`` under a temporary folder, its own port, trust auth), so
  the suite can restart it without disturbing anything else on the machine;
- a private broker: ``redis-server`` on a free port, or a private RabbitMQ node (its own node
  name, ports, Mnesia and log folders, Erlang cookie);
- two web servers (``python -m tidebase_core.server``, one process each, on different ports),
  two webhook workers (``manage.py tidebase_worker --no-beat``) and two beats
  (``manage.py tidebase_beat``, each with its own schedule file, as on two machines), all on one
  database and one broker.

Each process runs in its own process group, so SIGKILL takes it down the way a machine loses it.
The test process talks to the layout only through HTTP, the broker's and Postgres's own
clients, and reads the database with plain psycopg (never Django's test database).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from tests.conftest import ROOT, free_port
from tidebase_core.server import server_argv

APP_ROOT = Path(os.environ.get("TIDEBASE_MULTIPROC_APP_ROOT") or ROOT)
"""Where the layout's processes run from. Only for checking the suite itself: point it at a copy
of the checkout with a guarantee deliberately broken, and the suite must fail."""

ADMIN_USER = "mp-admin"
ADMIN_PASSWORD = "multiproc-Admin-Passw0rd!"  # of a private throwaway cluster

# Every process of the layout gets these (README "Configuration"): short retry schedule,
# in-flight horizon and reconciler tick so faults heal within seconds; small pools so the whole
# layout stays far below max_connections (2 x (4 + 1) web + 2 x (4 + 3) worker + 2 x 2 beat).
LAYOUT_ENV = {
    "TIDEBASE_API_KEY": "",
    "TIDEBASE_API_KEY_CACHE_S": "0",
    "TIDEBASE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
    "TIDEBASE_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1",
    "TIDEBASE_WEBHOOK_TIMEOUT_S": "3",
    "TIDEBASE_WEBHOOK_CONNECT_TIMEOUT_S": "1",
    "TIDEBASE_WEBHOOK_INFLIGHT_S": "5",
    "TIDEBASE_WEBHOOK_CONCURRENCY": "4",
    "TIDEBASE_RECONCILE_MS": "300",
    "TIDEBASE_HEARTBEAT_S": "0.5",
    "TIDEBASE_HEARTBEAT_STALE_S": "3",
    "TIDEBASE_LEASE_MS": "2000",
    "TIDEBASE_DB_POOL_SIZE": "4",
    "TIDEBASE_DB_POOL_TIMEOUT_S": "5",
    "TIDEBASE_LOG_LEVEL": "WARNING",
    "TIDEBASE_SERVER_LOG_LEVEL": "warning",
    # An SSE stream re-reads the log at each keep-alive and a long-poll at the end of its wait:
    # both far away here, so an event or a decision can only arrive through its notification.
    "TIDEBASE_SSE_KEEPALIVE_S": "300",
    "TIDEBASE_GATE_WAIT_MAX_MS": "600000",
}
WEB_THREADS = 6
WORKER_CONCURRENCY = 4
PG_MAX_CONNECTIONS = 60
"""Of the private cluster: the layout needs about 30, the test process a few."""

_DROP_ENV = ("DATABASE_URL", "CELERY_BROKER_URL", "TIDEBASE_URL", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; a liveness bound, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- Postgres -------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest installed Postgres 15+ server binaries (Debian layout), or ``TIDEBASE_PG_BINDIR``."""
    configured = os.environ.get("TIDEBASE_PG_BINDIR")
    candidates = [Path(configured)] if configured else []
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    candidates += [p for p in versions if int(p.parent.name) >= 15]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


class PrivatePostgres:
    """A throwaway Postgres cluster on a free port. As root, its commands run as ``postgres``
    (``initdb`` refuses root)."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.port = free_port()
        self._owner: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run initdb as") from None
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root and runuser is missing")
            self._owner = "postgres"
            shutil.chown(base, "postgres", "postgres")
        base.chmod(0o755)

    def _cmd(self, *argv: str, timeout: float = 120) -> None:
        full = [str(self.bindir / argv[0]), *argv[1:]]
        if self._owner:
            full = ["runuser", "-u", self._owner, "--", *full]
        done = subprocess.run(full, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}\n{_tail(self.log)}")

    def init(self) -> PrivatePostgres:
        self._cmd("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "max_connections": str(PG_MAX_CONNECTIONS),
            "shared_buffers": "'64MB'",
            # A fast shutdown (the restart under test) checkpoints cleanly, so skipping fsync
            # loses nothing here and spares the shared disk.
            "fsync": "off",
            "full_page_writes": "off",
            "track_activity_query_size": "16384",  # whole statements in pg_stat_activity (web_has_read)
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/multiproc\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        return self

    def start(self) -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server comes back."""
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "60", "restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


class Db:
    """Plain psycopg reads and writes of the layout's database: a fresh connection per call, so
    a database restart costs the test nothing but a retry."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def value(self, sql: str, params: Any = None) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def try_rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]] | None:
        """``rows``, or None while the database is unreachable (a restart in progress)."""
        try:
            return self.rows(sql, params)
        except psycopg.OperationalError:
            return None


# --- brokers -----------------------------------------------------------------------------------


class Broker:
    name: str
    url: str
    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        """Take the broker away, as a crash or a restart does."""
        self.stop()

    def up(self) -> None:
        self.start()

    def queued(self, queue: str = "tidebase") -> int:
        """Messages waiting in ``queue`` (Celery's, by default)."""
        from kombu import Connection

        with Connection(self.url, connect_timeout=2) as conn:
            try:
                return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
            except conn.channel_errors:  # Redis: an empty queue does not exist
                return 0

    def reachable(self) -> bool:
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False


class PrivateRedis(Broker):
    """``redis-server`` on a free port without persistence: a restart loses every message, so
    the outbox sweep must re-send what was queued."""

    name = "redis"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        return None if shutil.which("redis-server") else "redis-server is not installed"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.base), "--logfile", str(self.base / "redis.log")]
        self.proc = subprocess.Popen(argv, cwd=self.base, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._pong, 30, f"redis-server on port {self.port}")

    def _pong(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # as a crash: no save, every queued message gone
            self.proc.wait(10)


class PrivateRabbit(Broker):
    """A private RabbitMQ node: its own node name, AMQP and distribution ports, Mnesia and log
    folders, configuration and Erlang cookie (``HOME``), so stopping it disturbs no other user
    of the machine's RabbitMQ. Celery's queue is durable and its messages persistent, so a
    restart keeps what was queued; what was published while it was down is the sweep's."""

    name = "rabbitmq"
    SBIN = Path(os.environ.get("TIDEBASE_RABBITMQ_SBIN") or "/usr/lib/rabbitmq/bin")

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"tbmp{os.getpid()}x{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen[bytes] | None = None
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the node's and rabbitmqctl's Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @classmethod
    def available(cls) -> str | None:
        if not (cls.SBIN / "rabbitmq-server").exists():
            return f"RabbitMQ is not installed ({cls.SBIN}/rabbitmq-server missing)"
        if shutil.which("erl") is None:
            return "Erlang (erl) is not installed"
        return None

    def start(self) -> None:
        log = (self.base / "rabbitmq-server.out").open("ab")
        self.proc = subprocess.Popen(
            [str(self.SBIN / "rabbitmq-server")],
            cwd=self.base,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {_tail(self.base / 'rabbitmq-server.out')}")
            return self.reachable()

        wait_for(up, 120, f"RabbitMQ node {self.node}", interval=0.2)

    def ctl(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.SBIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout[-1000:]}{done.stderr[-1000:]}")

    def down(self) -> None:
        """``rabbitmqctl stop_app``: the broker closes every connection and stops serving; the
        node (and its durable queues, with their persistent messages) stays on disk."""
        self.ctl("stop_app")

    def up(self) -> None:
        self.ctl("start_app")
        wait_for(self.reachable, 60, f"RabbitMQ node {self.node} back", interval=0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.ctl("shutdown")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# --- the layout --------------------------------------------------------------------------------


@dataclass
class Proc:
    """One process of the layout, in its own process group."""

    name: str
    kind: str  # web, worker, beat
    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n--- start #{self.starts + 1} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=APP_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no drain, no acknowledgement, no clean shutdown."""
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Layout:
    broker: Broker
    database_url: str
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = Db(self.database_url)
        common = {
            **{k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith("TIDEBASE_TEST_")},
            **LAYOUT_ENV,
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker.url,
            "PYTHONUNBUFFERED": "1",
        }
        manage = [sys.executable, str(APP_ROOT / "manage.py")]
        for i, name in enumerate(("a", "b")):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {**common, "PORT": str(port), "TIDEBASE_PUBLIC_URL": url}
            argv = server_argv(bind=f"127.0.0.1:{port}", workers=1, threads=WEB_THREADS, graceful_timeout=2)
            self.procs.append(Proc(f"web-{name}", "web", argv, env, self.logs / f"web-{name}.log", url, port))
            folder = self.logs / f"machine-{i}"  # beat's schedule file: one per machine
            folder.mkdir(exist_ok=True)
            env = {**common, "TIDEBASE_BROKER_DIR": str(folder)}
            argv = [*manage, "tidebase_worker", "--no-beat", "--concurrency", str(WORKER_CONCURRENCY)]
            self.procs.append(Proc(f"worker-{name}", "worker", argv, env, self.logs / f"worker-{name}.log"))
            self.procs.append(
                Proc(f"beat-{name}", "beat", [*manage, "tidebase_beat"], env, self.logs / f"beat-{name}.log")
            )

    def of(self, kind: str) -> list[Proc]:
        return [p for p in self.procs if p.kind == kind]

    @property
    def webs(self) -> list[Proc]:
        return self.of("web")

    @property
    def workers(self) -> list[Proc]:
        return self.of("worker")

    @property
    def beats(self) -> list[Proc]:
        return self.of("beat")

    def ensure(self, timeout: float = 120) -> None:
        """Every process alive and ready: dead ones (a previous test's fault) are started again;
        then both web servers answer ``/ready`` (database, migrations, broker, and a live worker
        and beat) and each worker and beat process has a fresh heartbeat row."""
        for p in self.procs:
            if not p.alive:
                p.start()
        wait_for(self._ready, timeout, f"the layout to be ready; logs in {self.logs}", interval=0.2)

    def _ready(self) -> bool:
        for p in self.procs:
            if not p.alive:
                raise AssertionError(f"{p.name} exited ({p.proc and p.proc.returncode}): {_tail(p.log)}")
        for web in self.webs:
            try:
                if httpx.get(web.url + "/ready", timeout=5).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        fresh = self.db.try_rows(
            """SELECT kind, pid FROM tb_process_heartbeat
               WHERE stopped_at IS NULL AND last_seen > now() - interval '2 seconds'"""
        )
        if fresh is None:
            return False
        return {(p.kind, p.pid) for p in self.procs if p.kind != "web"} <= set(fresh)

    def stop(self) -> None:
        for p in self.procs:  # all at once: each drains in parallel
            if p.alive and p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGTERM)
        for p in self.procs:
            p.stop()

    def dump_stacks(self) -> None:
        """Ask every worker and beat to write its threads' stacks into its log (Celery's SIGUSR1
        handler): what a wedged process was doing, for the failure report."""
        for p in self.procs:
            if p.kind != "web" and p.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGUSR1)

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}


# --- clients -----------------------------------------------------------------------------------


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30)


def checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise AssertionError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


class SseFollower:
    """An SSE client that fails over: it streams a run's events from the first URL and, when the
    stream breaks, reconnects to the next with ``Last-Event-ID`` (what EventSource does behind a
    load balancer). Records every sequence number received and when each connection opened."""

    def __init__(self, urls: list[str], run_id: str) -> None:
        self.urls, self.run_id = urls, run_id
        self.seqs: list[int] = []
        self.connects: list[tuple[float, str]] = []
        self.breaks: list[float] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        self._thread = threading.Thread(target=self._run, name=f"sse-{run_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, failures = 0, 0
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            last = self.seqs[-1] if self.seqs else 0
            try:
                with self._client.stream(
                    "GET", f"{url}/runs/{self.run_id}/events", headers={"Last-Event-ID": str(last)}
                ) as response:
                    if response.status_code == 200:
                        self._socket = response.extensions["network_stream"].get_extra_info("socket")
                        self.connects.append((time.monotonic(), url))
                        failures = 0
                        for line in response.iter_lines():
                            if self._stop.is_set():
                                return
                            if line.startswith("data: "):
                                seq = int(json.loads(line[6:])["seq"])
                                with self._cond:
                                    self.seqs.append(seq)
                                    self._cond.notify_all()
            except (httpx.HTTPError, OSError, ValueError):
                pass
            if self._stop.is_set():
                return
            self.breaks.append(time.monotonic())
            i += 1
            failures += 1
            if failures >= len(self.urls):  # every server refused: back off a little
                self._stop.wait(0.1)

    def wait_seq(self, seq: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.seqs or self.seqs[-1] < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"SSE client of {self.run_id} saw {self.seqs[-5:]} waiting for seq {seq}")
                self._cond.wait(left)

    def connected_to(self, url: str) -> bool:
        return any(u == url for _, u in self.connects)

    def close(self) -> None:
        self._stop.set()
        if self._socket is not None:  # wakes the reading thread at once (an idle stream sends nothing)
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._client.close()


class GateWaiter:
    """A client waiting for a gate decision with long-polls (``?waitMs=``) that fails over to
    the next URL when its server goes away."""

    def __init__(self, urls: list[str], run_id: str, gate_id: str, wait_ms: int = 25_000) -> None:
        self.urls, self.run_id, self.gate_id, self.wait_ms = urls, run_id, gate_id, wait_ms
        self.requests: list[tuple[float, str]] = []
        self.failures: list[float] = []
        self.answer: dict[str, Any] | None = None
        self.answered_at = 0.0
        self.answered_by = ""
        self.done = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=wait_ms / 1000 + 30)
        self._thread = threading.Thread(target=self._run, name=f"gate-{gate_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, failures = 0, 0
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            self.requests.append((time.monotonic(), url))
            try:
                response = self._client.get(
                    f"{url}/runs/{self.run_id}/gates/{self.gate_id}", params={"waitMs": self.wait_ms}
                )
                if response.status_code == 200:
                    body = response.json()
                    if body["gate"]["status"] != "pending":
                        self.answer, self.answered_at, self.answered_by = body, time.monotonic(), url
                        self.done.set()
                        return
                    failures = 0
                    continue  # still pending: poll the same server again
            except (httpx.HTTPError, OSError):
                pass
            self.failures.append(time.monotonic())
            i += 1
            failures += 1
            if failures >= len(self.urls):
                self._stop.wait(0.1)

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self._thread.join(10)


class Writer:
    """Load: state writes to one run through the given web servers, round robin, paced, on a
    thread. Records (monotonic time, url, status or exception name) for every request."""

    def __init__(self, urls: list[str], run_id: str, pace_s: float = 0.02) -> None:
        self.urls, self.run_id, self.pace_s = urls, run_id, pace_s
        self.results: list[tuple[float, str, int | str]] = []
        self._stop = threading.Event()
        self._clients = {u: httpx.Client(base_url=u, timeout=15) for u in urls}
        self._thread = threading.Thread(target=self._run, name=f"writer-{run_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            i += 1
            try:
                status: int | str = (
                    self._clients[url].put(f"/runs/{self.run_id}/state", json={"value": {"i": i}}).status_code
                )
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.results.append((time.monotonic(), url, status))
            self._stop.wait(self.pace_s)

    def ok_count(self) -> int:
        return sum(1 for r in self.results if r[2] == 200)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for c in self._clients.values():
            c.close()


def connections_to(proc: Proc, port: int) -> int:
    """Established TCP connections of ``proc`` to a local ``port`` (its broker, its database)."""
    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port)


def web_has_read(web: Proc, pg_port: int, db: Db, needle: str) -> bool:
    """Whether one of ``web``'s database sessions has run a statement containing ``needle`` (a
    gate id: its long-poll has checked the gate and is parked). Django binds parameters on the
    client, so ``pg_stat_activity.query`` shows the literal."""
    try:
        conns = psutil.Process(web.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    ports = [c.laddr.port for c in conns if c.raddr and c.raddr.port == pg_port]
    if not ports:
        return False
    found = db.value(
        "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) AND position(%s in query) > 0",
        [ports, needle],
    )
    return bool(found)


@dataclass
class Receipt:
    webhook_id: str
    attempt: int
    body: dict[str, Any]
    at: float


class Receiver:
    """A loopback webhook receiver (threads) recording every request; answers 200 after
    ``delay_s`` (a receiver that takes a moment, so a burst is in flight when a fault hits)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.delay_s = delay_s
        self.receipts: list[Receipt] = []
        self.lock = threading.Lock()
        self.port = free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.receipts.append(
                        Receipt(
                            self.headers.get("webhook-id", ""),
                            int(self.headers.get("x-tidebase-delivery-attempt") or 0),
                            json.loads(raw or b"{}"),
                            time.monotonic(),
                        )
                    )
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, tag: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{tag}"

    def by_id(self) -> dict[str, list[Receipt]]:
        out: dict[str, list[Receipt]] = {}
        with self.lock:
            for r in self.receipts:
                out.setdefault(r.webhook_id, []).append(r)
        return out

    def count(self) -> int:
        with self.lock:
            return len(self.receipts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns():x}"
