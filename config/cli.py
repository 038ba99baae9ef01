"""``tidebase-server``: ``manage.py`` for an installed wheel (``tidebase-server migrate``,
``tidebase-server tidebase_serve --host 0.0.0.0``, ``tidebase-server tidebase_worker``, ...).
Also ``python -m config.cli``."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
