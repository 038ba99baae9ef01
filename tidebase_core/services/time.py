from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import connection


def db_now() -> dt.datetime:
    """The database clock: every lease decision uses it, never the app server's clock.
    Inside a transaction this is the transaction start time (``now()``)."""
    with connection.cursor() as cur:
        cur.execute("SELECT now()")
        row = cur.fetchone()
    assert row is not None
    value: dt.datetime = row[0]
    return value


def lease_delta() -> dt.timedelta:
    return dt.timedelta(milliseconds=settings.TIDEBASE_LEASE_MS)
