"""Build hook only; everything else about the package is in pyproject.toml.

The project-level ``templates/`` and ``static/`` live beside ``manage.py`` in a checkout. A wheel
has no such place, so they are copied into the ``config`` package (``config/templates``,
``config/static``), where ``config/settings.py`` looks first. An editable install keeps reading
them from the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROJECT_ASSETS = ("templates", "static")


class BuildPyWithProjectAssets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in PROJECT_ASSETS:
            target = Path(self.build_lib) / "config" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithProjectAssets})
