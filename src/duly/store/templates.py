"""Database templates' queries: every statement on the ``templates`` table, and the subjects a
save is checked with.

:mod:`duly.delivery.templates` keeps the versioning rules, the override cache and the checks; this
module reads and appends rows. Rows are only ever added (a save is a new version), never
updated or deleted. Each function runs in the caller's connection and transaction and returns
plain data; the same SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import subjects, templates

__all__ = [
    "HistoryRow",
    "TemplateRow",
    "add_template_version",
    "latest_template_version",
    "lock_template_name",
    "newest_subject_refs",
    "newest_template_parts",
    "template_history",
    "template_parts_as_of",
    "templates_stamp",
]


@dataclass(frozen=True, slots=True)
class TemplateRow:
    """One stored part of a template: the body of ``name``'s ``channel``.``ext`` at
    ``version`` (``body`` is None when it was not asked for)."""

    name: str
    channel: str
    ext: str
    version: int
    author: str | None
    created_at: datetime
    body: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One part a version changed."""

    version: int
    author: str | None
    created_at: datetime
    channel: str
    ext: str


def templates_stamp(conn: Connection) -> tuple[int, int]:
    """``(count, max id)`` of the table (0 for an empty one). Rows are only ever added, so
    the count changes on every save; max(id) alone would not do on PostgreSQL, where ids
    are taken at insert but become visible at commit."""
    count, top = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.max(templates.c.id), 0))
    ).one()
    return (int(count), int(top))


def newest_template_parts(conn: Connection, *, with_body: bool = True) -> list[TemplateRow]:
    """The newest row of every (name, channel, ext): what overrides the files, in no
    particular order; bodies only ``with_body``. Served by the unique index on (name,
    channel, ext, version)."""
    newest = (
        sa.select(
            templates.c.name,
            templates.c.channel,
            templates.c.ext,
            sa.func.max(templates.c.version).label("version"),
        )
        .group_by(templates.c.name, templates.c.channel, templates.c.ext)
        .subquery()
    )
    cols: list[Any] = [
        templates.c.name,
        templates.c.channel,
        templates.c.ext,
        templates.c.version,
        templates.c.author,
        templates.c.created_at,
    ]
    if with_body:
        cols.append(templates.c.body)
    q = sa.select(*cols).join(
        newest,
        sa.and_(
            templates.c.name == newest.c.name,
            templates.c.channel == newest.c.channel,
            templates.c.ext == newest.c.ext,
            templates.c.version == newest.c.version,
        ),
    )
    return [TemplateRow(*r) for r in conn.execute(q)]


def template_history(conn: Connection, name: str) -> list[HistoryRow]:
    """Every part every version of ``name`` changed, ordered by version, channel, ext."""
    q = (
        sa.select(
            templates.c.version,
            templates.c.author,
            templates.c.created_at,
            templates.c.channel,
            templates.c.ext,
        )
        .where(templates.c.name == name)
        .order_by(templates.c.version, templates.c.channel, templates.c.ext)
    )
    return [HistoryRow(*r) for r in conn.execute(q)]


def template_parts_as_of(
    conn: Connection, name: str, version: int | None
) -> dict[tuple[str, str], TemplateRow]:
    """Each stored part of ``name`` at its newest row with version <= ``version`` (the
    newest rows: None), by ``(channel, ext)``, bodies included."""
    cond = [templates.c.name == name]
    if version is not None:
        cond.append(templates.c.version <= version)
    t = templates.c
    q = (
        sa.select(t.name, t.channel, t.ext, t.version, t.author, t.created_at, t.body)
        .where(*cond)
        .order_by(t.version)
    )
    out: dict[tuple[str, str], TemplateRow] = {}
    for r in conn.execute(q):
        out[(r.channel, r.ext)] = TemplateRow(*r)  # ordered by version: the last one wins
    return out


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_template_name(conn: Connection, name: str) -> None:
    """Make the caller's write transaction the only writer of ``name`` until it ends
    (version numbers are per name). PostgreSQL: a transaction-level advisory lock keyed on
    the name; SQLite: nothing to do, the write transaction already holds the database's
    write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(name))))


def latest_template_version(conn: Connection, name: str) -> int | None:
    """The highest version of ``name``; None if it was never saved."""
    top = conn.execute(
        sa.select(sa.func.max(templates.c.version)).where(templates.c.name == name)
    ).scalar()
    return int(top) if top is not None else None


def add_template_version(
    conn: Connection,
    name: str,
    version: int,
    parts: Mapping[tuple[str, str], str],
    *,
    author: str | None,
    now: datetime,
) -> None:
    """Insert version ``version`` of ``name``: one row per ``(channel, ext): body`` of
    ``parts``, in (channel, ext) order. The unique index on (name, channel, ext, version)
    refuses a version stored twice."""
    conn.execute(
        sa.insert(templates),
        [
            {
                "name": name,
                "channel": c,
                "ext": e,
                "version": version,
                "body": b,
                "author": author,
                "created_at": now,
            }
            for (c, e), b in sorted(parts.items())
        ],
    )


def newest_subject_refs(conn: Connection, kinds: Sequence[str], n: int) -> list[tuple[str, str]]:
    """``(kind, key)`` of the ``n`` newest subjects (by id, newest first) of ``kinds`` that
    are not deleted. Served by the primary key filtered on kind; a few rows at most."""
    q = (
        sa.select(subjects.c.kind, subjects.c.key)
        .where(subjects.c.kind.in_(list(kinds)), subjects.c.deleted_at.is_(None))
        .order_by(subjects.c.id.desc())
        .limit(n)
    )
    return [(r.kind, r.key) for r in conn.execute(q)]
