from __future__ import annotations

from django.db import connection


def claim_key(*, scope: str, key: str, resource_id: str) -> str | None:
    """Record ``key`` for a new resource inside the caller's transaction. Returns None when the
    key is new, or the id of the resource an earlier request with this key created (that
    request's transaction has committed: ON CONFLICT waits for it). The caller then returns
    that resource and rolls its own work back."""
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO tb_idempotency_key (scope, key, resource_id, created_at) VALUES (%s, %s, %s, now())
               ON CONFLICT (scope, key) DO NOTHING RETURNING id""",
            (scope, key, resource_id),
        )
        if cur.fetchone() is not None:
            return None
        cur.execute("SELECT resource_id FROM tb_idempotency_key WHERE scope = %s AND key = %s", (scope, key))
        row = cur.fetchone()
    return str(row[0]) if row else None
