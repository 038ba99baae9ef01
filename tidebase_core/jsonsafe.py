"""JSON that Postgres can store (issue #12, items 7 and 8).

Two kinds of valid JSON cannot go into a ``jsonb`` (or ``text``) column: a string holding the NUL
character (``"\\u0000"``), and a number too large for a double (``1e400`` parses as infinity). Both
are refused as a 400 ``unsupported_value`` before any SQL runs, the same way on every path that
reads a request body (the ninja parser, the WSGI step hot path, the dashboard's decision form),
so the answer never depends on which statement would have failed, and never carries its text.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tidebase_core.exceptions import UnsupportedValue

NUL = "strings cannot contain the NUL character (\\u0000)"
INFINITE = "numbers must fit in a double (a number such as 1e400 is out of range)"

_SUSPECT = re.compile(rb"\\u0000|[0-9][eE][+]?[0-9]{3}|[0-9]{200}")
"""Text a body must contain for one of its values to be unstorable: the ``\\u0000`` escape, a
3-digit exponent, or 200 digits in a row (a number beyond a double with an exponent of at most
99 needs 210 digits: ``1<209 zeros>e99``). Bodies without it (nearly all) are not walked."""


def storable_problem(value: Any) -> str | None:
    """Why Postgres cannot store this parsed JSON value, or None if it can."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return NUL
        elif isinstance(item, float):
            if not math.isfinite(item):
                return INFINITE
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return NUL
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_body(raw: bytes, data: Any) -> None:
    """Raise ``UnsupportedValue`` (400) if the JSON ``data`` parsed from ``raw`` cannot be stored."""
    if _SUSPECT.search(raw) is None:
        return
    problem = storable_problem(data)
    if problem is not None:
        raise UnsupportedValue(problem)
