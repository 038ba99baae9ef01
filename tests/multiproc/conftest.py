"""Fixtures of the multi-process suite (``tests/multiproc``, marker ``multiproc``).

``layout`` is the whole deployment (``deployment.Layout``) on a private Postgres cluster and a
private broker, parametrized over RabbitMQ and Redis; it lives for the session, per broker.
Tests take ``deployment``, which first heals what an earlier test broke (a killed process is
started again) and waits until everything is ready. Fault figures are collected with ``figure``
and printed in pytest's terminal summary (and written to ``var/multiproc/figures.txt``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.multiproc.deployment import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    APP_ROOT,
    LAYOUT_ENV,
    Broker,
    Layout,
    PrivatePostgres,
    PrivateRabbit,
    PrivateRedis,
    postgres_bindir,
)

FIGURES: list[str] = []
LOGS = ROOT / "var" / "multiproc"
TEMPLATE_DB = "tidebase_template"


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A temporary folder outside pytest's (which is private to the user): the cluster's
    ``postgres`` user must be able to reach it."""
    base = Path(tempfile.mkdtemp(prefix="tidebase-multiproc-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pg(scratch: Path) -> Iterator[PrivatePostgres]:
    """A Postgres cluster of our own, migrated once into a template database (with a dashboard
    admin); each broker's layout gets a copy."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("Postgres 15+ server binaries (initdb, pg_ctl) not found; set TIDEBASE_PG_BINDIR")
    folder = scratch / "postgres"
    folder.mkdir()
    try:
        pg = PrivatePostgres(bindir, folder).init()
    except RuntimeError as exc:
        pytest.skip(f"cannot create a private Postgres cluster: {exc}")
    pg.start()
    try:
        pg.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        env = {
            **_clean_env(),
            **LAYOUT_ENV,
            "DATABASE_URL": pg.url(TEMPLATE_DB),
            "TIDEBASE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        for argv in (["migrate", "--noinput", "--skip-checks"], ["tidebase_createadmin", ADMIN_USER]):
            done = subprocess.run(
                [sys.executable, str(APP_ROOT / "manage.py"), *argv],
                cwd=APP_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"manage.py {argv[0]}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        yield pg
    finally:
        pg.stop()


def _clean_env() -> dict[str, str]:
    import os

    drop = ("DATABASE_URL", "CELERY_BROKER_URL", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TIDEBASE_TEST_")}


@pytest.fixture(scope="session")
def run_logs() -> Path:
    """This session's process logs; the folders of older sessions but the last few are removed."""
    folder = LOGS / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(p for p in LOGS.iterdir() if p.is_dir())[:-5]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


@pytest.fixture(scope="session", params=["rabbitmq", "redis"])
def layout(
    request: pytest.FixtureRequest, private_pg: PrivatePostgres, scratch: Path, run_logs: Path
) -> Iterator[Layout]:
    """Two web servers, two workers and two beats on one database (a copy of the migrated
    template) and one private broker."""
    name: str = request.param
    folder = scratch / name
    folder.mkdir()
    kind: type[PrivateRedis] | type[PrivateRabbit] = PrivateRedis if name == "redis" else PrivateRabbit
    reason = kind.available()
    if reason:
        pytest.skip(f"multiproc[{name}]: {reason}")
    broker: Broker = kind(folder)
    database = f"tidebase_{name}"
    private_pg.execute(f"CREATE DATABASE {database} TEMPLATE {TEMPLATE_DB}")
    logs = run_logs / name
    logs.mkdir()
    broker.start()
    deployment = Layout(broker, private_pg.url(database), logs)
    try:
        started = time.monotonic()
        deployment.ensure()
        FIGURES.append(
            f"multiproc[{name}] layout: 2 web + 2 worker + 2 beat ready in {time.monotonic() - started:.1f} s"
        )
        yield deployment
    finally:
        deployment.stop()
        broker.stop()


@pytest.fixture
def deployment(layout: Layout) -> Layout:
    """The layout, healed and ready: a process an earlier test killed is started again."""
    layout.ensure()
    return layout


@pytest.fixture
def pg(private_pg: PrivatePostgres) -> PrivatePostgres:
    return private_pg


@pytest.fixture
def figure(layout: Layout) -> Callable[[str], None]:
    """Record a figure for the terminal summary: ``figure("web SIGKILL: ...")``."""

    def record(text: str) -> None:
        FIGURES.append(f"multiproc[{layout.broker.name}] {text}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("multi-process deployment: figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "figures.txt").write_text("\n".join(FIGURES) + "\n")
