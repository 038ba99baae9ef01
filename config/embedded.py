"""Embedded defaults for a machine with nothing installed.

When ``DATABASE_URL`` is unset, the server starts (or reuses) a private Postgres from the
``pgserver`` package, with its data under ``TIDEBASE_DATA_DIR`` (default ``.tidebase/`` in the
project). The server is left running when the process exits, so the web server, the Celery worker,
``manage.py`` commands and the test runner all share one instance; ``make stop`` stops it.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """``TIDEBASE_DATA_DIR``; by default ``.tidebase/`` beside ``manage.py`` in a checkout, and in the
    working directory when installed from a wheel (never inside site-packages)."""
    default = BASE_DIR / ".tidebase" if (BASE_DIR / "manage.py").is_file() else Path.cwd() / ".tidebase"
    return Path(os.environ.get("TIDEBASE_DATA_DIR") or default).resolve()


def embedded_database_url() -> str:
    """Start the embedded Postgres if needed and return a URL for it."""
    from tidebase_core.logs import quiet_warnings

    quiet_warnings()
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise RuntimeError(
            "DATABASE_URL is not set and the embedded Postgres (pip install pgserver) is missing"
        ) from exc
    pgdata = data_dir() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    return str(server.get_uri())


def stop() -> None:
    """Stop the embedded Postgres if it is running (``make stop``)."""
    pgdata = data_dir() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    import subprocess

    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "stop"]
    if os.geteuid() == 0:  # pgserver runs the cluster as an unprivileged user when started by root
        cmd = ["su", "-s", "/bin/sh", "pgserver", "-c", " ".join(cmd)]
    subprocess.run(cmd, check=False)  # noqa: S603
