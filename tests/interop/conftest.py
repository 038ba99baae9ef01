"""Interop fixtures: the official ``tidebase==0.7.0`` client lives in its own virtualenv
(``var/interop-venv``) because it shares the import name ``tidebase`` with the repo's SDK.
Scenarios run there as subprocesses (``scenarios.py``) against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTEROP_VENV = ROOT / "var" / "interop-venv"
SCENARIOS = Path(__file__).resolve().parent / "scenarios.py"
OFFICIAL_VERSION = "0.7.0"


def venv_python(venv: Path = INTEROP_VENV) -> Path:
    return venv / "bin" / "python"


def installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('tidebase'))"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd="/",
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def clean_env(**extra: str) -> dict[str, str]:
    """The subprocess environment: no PYTHONPATH/venv leakage, so ``import tidebase`` can only
    resolve to the interop venv's copy of the PyPI client."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def ensure_interop_venv(venv: Path = INTEROP_VENV) -> Path:
    """Create var/interop-venv with tidebase==0.7.0 if it is missing (or has the wrong version).
    Raises (never skips) when pip cannot install it."""
    python = venv_python(venv)
    if installed_version(python) == OFFICIAL_VERSION:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"tidebase=={OFFICIAL_VERSION}"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    if install.returncode != 0 or installed_version(python) != OFFICIAL_VERSION:
        raise RuntimeError(
            f"could not install tidebase=={OFFICIAL_VERSION} into {venv}:\n{install.stdout}\n{install.stderr}"
        )
    return python


@pytest.fixture(scope="session")
def interop_python() -> Path:
    return ensure_interop_venv()


ScenarioRunner = Callable[..., dict[str, Any]]


def run_scenario(python: Path, url: str, name: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(
        [str(python), str(SCENARIOS), name, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",  # keep the repo's ``tidebase`` package off sys.path
        env=clean_env(TIDEBASE_URL=url, TIDEBASE_API_KEY=""),
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scenario {name} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.fixture
def scenario(interop_python: Path, live_server_url: str) -> ScenarioRunner:
    """Run a scenario against the shared open live server; returns its JSON result."""

    def run(name: str, *args: str, url: str | None = None, timeout: float = 120) -> dict[str, Any]:
        return run_scenario(interop_python, url or live_server_url, name, *args, timeout=timeout)

    return run
