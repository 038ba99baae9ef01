"""The one gunicorn command line, shared by ``tidebase_serve``, the test suite and ``make bench``.

Threaded workers (``gthread``): SSE streams and gate/claim long-polls hold a thread each while
they wait, and idle keep-alive connections wait in the worker's poller, not on a thread.
Two alternatives were measured against it on step traffic and dropped: gunicorn's sync worker
run by N threads each blocking in ``accept()``, and a pool that reuses the most recently idle
thread. Neither served faster. A single-threaded sync worker does (about 0.3 ms less per
request on this project's benchmark machine) but cannot hold SSE streams or long-polls.

No access log unless asked for: with ``--access-logfile /dev/null`` gunicorn still formats
the line for every request.
"""

from __future__ import annotations

import sys


def gunicorn_argv(
    *, bind: str, workers: int, threads: int, graceful_timeout: int = 5, access_log: bool = False
) -> list[str]:
    """The one gunicorn command line: ``tidebase_serve``, the test suite and ``make bench``."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--graceful-timeout",
        str(graceful_timeout),
        "--timeout",
        "120",
    ]
    if access_log:
        argv += ["--access-logfile", "-"]
    return argv
