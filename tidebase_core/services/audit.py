"""The tamper-evident audit trail (docs/decisions.md, "Audit trail").

``audit_append`` adds an entry inside the caller's transaction: a decision that rolls back leaves
no entry, and a decision never commits without one. Appends lock the one-row chain head
(``tb_audit_head``) and so serialize: each entry's ``prev_hash`` is the hash of the entry before
it, whatever commits concurrently. Take the head last in a transaction (after the gate, run and
budget rows), so the lock is held only until the commit and no lock is waited for after it.

``audit_verify`` recomputes the chain and names the first broken entry; ``audit_rows`` streams the
entries for export (CSV and JSONL)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from tidebase_core.models import AuditEntry

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""

# Kinds of entries. Reminders and escalations come with the policies that send them.
DECISION = "decision"
EXPIRY = "expiry"
POLICY_CHANGE = "policy_change"
REMINDER = "reminder"
ESCALATION = "escalation"

# Channels a decision or change arrives through.
DASHBOARD = "dashboard"
API_KEY = "api_key"
TOKEN = "token"  # noqa: S105 (a channel name, not a secret)
EMAIL = "email"
SLACK = "slack"
SYSTEM = "system"
"""The reconciler: timeouts, ended budget periods."""

FIELDS = ("seq", "at", "kind", "run_id", "gate_id", "actor", "channel", "policy_version", "data", "prev_hash", "hash")


def channel_of(decided_by: str) -> str:
    """The channel of a ``decided_by`` label (``Principal.label``, ``user:<name>``, ``reconciler``)."""
    if decided_by.startswith("user:"):
        return DASHBOARD
    if decided_by.startswith("token:"):
        return TOKEN
    if decided_by == "reconciler":
        return SYSTEM
    return API_KEY


def _at_text(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def canonical(entry: dict[str, Any]) -> str:
    """The canonical JSON an entry's hash is computed over: every field but ``hash``, keys
    sorted, no spaces, ``at`` in UTC with microseconds."""
    body = {k: entry[k] for k in FIELDS if k != "hash"}
    at = body["at"]
    body["at"] = _at_text(at) if isinstance(at, dt.datetime) else at
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry).encode()).hexdigest()


_HEAD_SQL = "SELECT h.seq, h.hash, clock_timestamp(), %s::jsonb FROM tb_audit_head h WHERE h.id = 1 FOR UPDATE"
_HEAD_INIT_SQL = """INSERT INTO tb_audit_head (id, seq, hash)
    SELECT 1, COALESCE(max(seq), 0), COALESCE((SELECT hash FROM tb_audit ORDER BY seq DESC LIMIT 1), %s) FROM tb_audit
    ON CONFLICT (id) DO NOTHING"""
_INSERT_SQL = """INSERT INTO tb_audit (seq, at, kind, run_id, gate_id, actor, channel, policy_version, data,
                                       prev_hash, hash)
                 VALUES (%(seq)s, %(at)s, %(kind)s, %(run_id)s, %(gate_id)s, %(actor)s, %(channel)s,
                         %(policy_version)s, %(data)s::jsonb, %(prev_hash)s, %(hash)s)"""


def audit_append(
    *,
    kind: str,
    actor: str,
    channel: str,
    run_id: str | None = None,
    gate_id: str | None = None,
    policy_version: str | int | None = None,
    data: Any = None,
) -> AuditEntry:
    """Append an entry, chained to the one before it, inside the caller's transaction (required)."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_append must run inside the decision's transaction")
    text = json.dumps({} if data is None else data, default=str, allow_nan=False)
    with connection.cursor() as cur:
        cur.execute(_HEAD_SQL, [text])  # the lock: appends serialize here until their commit
        row = cur.fetchone()
        if row is None:  # the head row is gone (a test flush): rebuilt from the last entry
            cur.execute(_HEAD_INIT_SQL, [GENESIS])
            cur.execute(_HEAD_SQL, [text])
            row = cur.fetchone()
            assert row is not None
        head_seq, prev_hash, at, normalized = row
        if isinstance(normalized, str):  # Django leaves jsonb undecoded (JSONField decodes it)
            normalized = json.loads(normalized)
        entry: dict[str, Any] = {
            "seq": int(head_seq) + 1,
            "at": at,
            "kind": kind,
            "run_id": run_id,
            "gate_id": gate_id,
            "actor": actor,
            "channel": channel,
            "policy_version": None if policy_version is None else str(policy_version),
            "data": normalized,  # as jsonb gives it back, so verification recomputes the same text
            "prev_hash": prev_hash,
        }
        entry["hash"] = entry_hash(entry)
        cur.execute(_INSERT_SQL, {**entry, "data": json.dumps(normalized)})
        cur.execute("UPDATE tb_audit_head SET seq = %s, hash = %s WHERE id = 1", [entry["seq"], entry["hash"]])
    return AuditEntry(**entry)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""

    @property
    def message(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} entries"
        return (
            f"audit chain broken at entry {self.broken_seq}: {self.reason} ({self.checked} entries checked before it)"
        )


def _values(e: AuditEntry) -> dict[str, Any]:
    return {k: getattr(e, k) for k in FIELDS}


def audit_verify(*, chunk: int = 2000) -> Verdict:
    """Recompute the chain from the first entry: the first entry whose seq is not the next one
    (a gap: entries removed), whose ``prev_hash`` is not the previous entry's hash (reordered or
    removed), or whose hash is not its content's (changed) is named. Reads in one snapshot, in
    chunks (bounded memory)."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SELECT seq, hash FROM tb_audit_head WHERE id = 1")
            head = cur.fetchone()
        expected, prev, checked = 1, GENESIS, 0
        for e in AuditEntry.objects.order_by("seq").iterator(chunk_size=chunk):
            if e.seq != expected:
                return Verdict(False, checked, expected, f"entry missing (gap: the next entry is {e.seq})")
            if e.prev_hash != prev:
                return Verdict(False, checked, e.seq, "prev mismatch: prev_hash is not the previous entry's hash")
            if entry_hash(_values(e)) != e.hash:
                return Verdict(False, checked, e.seq, "hash mismatch: the entry was changed")
            prev, expected, checked = e.hash, expected + 1, checked + 1
        if head is not None and (int(head[0]) != expected - 1 or head[1] != prev):
            return Verdict(False, checked, expected, f"entry missing (the chain head is at entry {head[0]})")
    return Verdict(True, checked)


def audit_entries(*, since: dt.datetime | None = None, until: dt.datetime | None = None) -> Iterator[AuditEntry]:
    """Entries in seq order, ``since`` ≤ at < ``until``, streamed in chunks."""
    rows = AuditEntry.objects.order_by("seq")
    if since is not None:
        rows = rows.filter(at__gte=since)
    if until is not None:
        rows = rows.filter(at__lt=until)
    return rows.iterator(chunk_size=2000)


def export_record(e: AuditEntry) -> dict[str, Any]:
    out = _values(e)
    out["at"] = _at_text(e.at)
    return out


def export_lines(fmt: str, entries: Iterator[AuditEntry]) -> Iterator[str]:
    """CSV (a header, then ``data`` as JSON text) or JSONL, one line at a time."""
    if fmt == "jsonl":
        for e in entries:
            yield json.dumps(export_record(e), ensure_ascii=False, sort_keys=True) + "\n"
        return
    buf = io.StringIO()
    writer = csv.writer(buf)

    def line(values: list[Any]) -> str:
        buf.seek(0)
        buf.truncate()
        writer.writerow(values)
        return buf.getvalue()

    yield line(list(FIELDS))
    for e in entries:
        rec = export_record(e)
        rec["data"] = json.dumps(rec["data"], ensure_ascii=False, sort_keys=True)
        yield line([_cell(rec[k]) for k in FIELDS])


_GUARDED = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value: Any) -> Any:
    """A CSV cell. Text a spreadsheet would run as a formula gets a leading ``'`` (as does text
    that starts with one, so ``record_from_csv`` can take it off again exactly)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_GUARDED):
        return "'" + value
    return value


def record_from_csv(row: dict[str, str]) -> dict[str, Any]:
    """An exported CSV row back to the entry's values (for checking an export's hashes offline)."""
    out: dict[str, Any] = {k: (row[k][1:] if row[k].startswith("'") else row[k]) or None for k in FIELDS}
    out["seq"] = int(row["seq"])
    out["data"] = json.loads(row["data"])
    return out


__all__ = [
    "API_KEY",
    "DASHBOARD",
    "DECISION",
    "EMAIL",
    "ESCALATION",
    "EXPIRY",
    "GENESIS",
    "POLICY_CHANGE",
    "REMINDER",
    "SLACK",
    "SYSTEM",
    "TOKEN",
    "Verdict",
    "audit_append",
    "audit_entries",
    "audit_verify",
    "canonical",
    "channel_of",
    "entry_hash",
    "export_lines",
    "record_from_csv",
]
