"""Deleting rows together with everything that depends on them, in one SQL statement.

The dependants come from Django's model graph (every model that points at the deleted one, at
any depth), so a table added later by any app is deleted with its run, or set to NULL, exactly as
``on_delete`` says, without a change here: the foreign keys in Postgres have no ``ON DELETE``
action (Django emulates it), so raw SQL must do what the ORM's collector would, but without
loading rows into Python. An ``on_delete`` this module cannot honour in SQL (PROTECT, RESTRICT,
SET_DEFAULT, SET(...)) or a many-to-many relation refuses to build a plan: silently skipping it
would make the commit fail on its foreign key, every time.

Delivery attempts (``tb_delivery_attempt``) point at outbox rows by text id, not by foreign key;
they are deleted with their delivery."""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db import models

MAX_DEPTH = 6

# Outbox tables whose rows have attempts in tb_delivery_attempt, and the attempts' ``kind``.
ATTEMPT_KINDS = {
    "tb_channel_delivery": "channel",
    "tb_recovery_attempt": "recovery",
    "tb_notification": "notification",
}


@dataclass(frozen=True)
class Plan:
    sql: str
    """One statement taking ``%(ids)s`` (primary keys of the root rows); it answers one row of
    counts, in the order of ``tables``."""
    tables: tuple[str, ...]


def _table(model: type[models.Model]) -> str:
    return model._meta.db_table


def _pk(model: type[models.Model]) -> str:
    pk = model._meta.pk
    assert pk is not None
    assert pk.column is not None
    return pk.column


def _relations(model: type[models.Model]) -> list[tuple[type[models.Model], str, str | None, object]]:
    """(child model, its column, the column it references here, on_delete) for every model that
    points at ``model``."""
    out: list[tuple[type[models.Model], str, str | None, object]] = []
    for rel in model._meta.related_objects:
        if rel.many_to_many:
            raise ImproperlyConfigured(f"retention cannot delete {_table(model)}: many-to-many {rel}")
        fk = rel.field
        assert isinstance(fk, models.ForeignKey)
        out.append((rel.related_model, fk.column, fk.target_field.column, rel.on_delete))
    return out


def _collect(
    model: type[models.Model],
    where: str,
    depth: int,
    cascade: dict[type[models.Model], list[str]],
    set_null: dict[type[models.Model], list[tuple[str, str]]],
) -> None:
    if depth > MAX_DEPTH:
        raise ImproperlyConfigured(f"retention: dependants of {_table(model)} nest deeper than {MAX_DEPTH}")
    for child, column, target, on_delete in _relations(model):
        if depth == 0 and target == _pk(model):
            cond = f"{column} = ANY(%(ids)s)"  # the root rows' own keys: no subquery
        else:
            cond = f"{column} IN (SELECT {target} FROM {_table(model)} WHERE {where})"
        if on_delete is models.CASCADE:
            cascade[child].append(cond)
            _collect(child, cond, depth + 1, cascade, set_null)
        elif on_delete is models.SET_NULL:
            set_null[child].append((column, cond))
        elif on_delete is models.DO_NOTHING:
            continue
        else:
            name = getattr(on_delete, "__name__", repr(on_delete))
            raise ImproperlyConfigured(f"retention cannot delete {_table(model)}: {_table(child)} uses {name}")


def _any(conds: list[str]) -> str:
    return " OR ".join(f"({c})" for c in dict.fromkeys(conds))


@functools.cache
def delete_plan(model: type[models.Model]) -> Plan:
    """The statement that deletes the ``model`` rows with primary keys ``%(ids)s`` and their
    dependants. All parts are CTEs of one statement: they share one snapshot, so a dependant's
    subquery still sees the parent rows it selects by, and the deferred foreign keys are checked
    at commit, when everything is gone."""
    cascade: dict[type[models.Model], list[str]] = defaultdict(list)
    set_null: dict[type[models.Model], list[tuple[str, str]]] = defaultdict(list)
    root = f"{_pk(model)} = ANY(%(ids)s)"
    _collect(model, root, 0, cascade, set_null)
    parts: list[tuple[str, str]] = []  # (label, statement)
    deleted = {model: root, **{m: _any(c) for m, c in cascade.items()}}
    for child, where in deleted.items():
        kind = ATTEMPT_KINDS.get(_table(child))
        if kind:
            parts.append(
                (
                    "tb_delivery_attempt",
                    f"DELETE FROM tb_delivery_attempt WHERE kind = '{kind}' AND delivery_id IN "
                    f"(SELECT {_pk(child)} FROM {_table(child)} WHERE {where}) RETURNING 1",
                )
            )
    for child, pairs in set_null.items():
        for column, cond in pairs:
            # Rows deleted by this statement anyway are left alone: updating them first would
            # make the DELETE skip them (a row changed by the same command is not deleted).
            unless = f" AND NOT ({deleted[child]})" if child in deleted else ""
            parts.append(
                (
                    f"{_table(child)}:{column}",
                    f"UPDATE {_table(child)} SET {column} = NULL WHERE {cond}{unless} RETURNING 1",
                )
            )
    for child, where in deleted.items():
        if child is not model:
            parts.append((_table(child), f"DELETE FROM {_table(child)} WHERE {where} RETURNING 1"))
    parts.append((_table(model), f"DELETE FROM {_table(model)} WHERE {root} RETURNING 1"))
    ctes = ",\n".join(f"c{i} AS ({sql})" for i, (_, sql) in enumerate(parts))
    counts = ", ".join(f"(SELECT count(*) FROM c{i})" for i in range(len(parts)))
    return Plan(sql=f"WITH {ctes}\nSELECT {counts}", tables=tuple(label for label, _ in parts))


@dataclass(frozen=True)
class Chunk:
    """Deletes at most ``%(n)s`` rows of one table that belong to the run ``%(run)s``."""

    table: str
    sql: str


@functools.cache
def run_chunks(run_model: type[models.Model]) -> tuple[Chunk, ...]:
    """How a run too large for one batch is emptied, one bounded statement per transaction: its
    tables with many rows per run (direct dependants with a single key to the run), in an order
    where a table comes after every table that points at it. The rest goes with the run in its
    final batch."""
    direct: dict[type[models.Model], str] = {}
    counts: dict[type[models.Model], int] = defaultdict(int)
    for child, column, target, on_delete in _relations(run_model):
        counts[child] += 1
        if on_delete is models.CASCADE and target == _pk(run_model):
            direct[child] = column
    candidates = {
        m: c
        for m, c in direct.items()
        if counts[m] == 1
        and m._meta.pk is not None
        and m._meta.pk.column != c  # one row per run (e.g. tb_run_state): nothing to chunk
        # dependants, if any, are deleted by run too and only point here with SET_NULL: a
        # chunk never has to delete or update them (they are drained first, see the order)
        and all(grand in direct and how is models.SET_NULL for grand, _, _, how in _relations(m))
    }
    ordered: list[type[models.Model]] = []
    pending = dict(candidates)
    while pending:
        ready = [m for m in pending if not any(g in pending and g is not m for g, *_ in _relations(m))]
        if not ready:  # a cycle: leave those to the final batch
            break
        for m in sorted(ready, key=_table):
            ordered.append(m)
            del pending[m]
    chunks = []
    for m in ordered:
        table, pk, column = _table(m), _pk(m), candidates[m]
        doomed = f"SELECT {pk} FROM {table} WHERE {column} = %(run)s LIMIT %(n)s"
        kind = ATTEMPT_KINDS.get(table)
        attempts = (
            f"a AS (DELETE FROM tb_delivery_attempt WHERE kind = '{kind}' "
            f"AND delivery_id IN (SELECT {pk} FROM doomed)), "
            if kind
            else ""
        )
        sql = (
            f"WITH doomed AS MATERIALIZED ({doomed}), {attempts}"
            f"d AS (DELETE FROM {table} WHERE {pk} IN (SELECT {pk} FROM doomed) RETURNING 1) SELECT count(*) FROM d"
        )
        chunks.append(Chunk(table=table, sql=sql))
    return tuple(chunks)
