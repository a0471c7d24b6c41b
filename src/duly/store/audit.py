"""The audit trail: the queries of the ``audit_log`` table, and the way a surface attaches
an audit row to the transaction of the action it describes.

An :class:`Entry` says who (``actor``: a username, ``"api key NAME"`` or ``"cli"``) did what
(``action``, ``summary`` in words) to which object (``object_kind``, ``object_id``), with the
state before and after where it matters. Sizes are bounded here, whatever the caller passes:
the summary is cut at :data:`MAX_SUMMARY` characters, and a before/after whose JSON is over
:data:`MAX_STATE` characters is replaced by its size and SHA-256 (``{"truncated": true, …}``).

:func:`recorded` wraps an action::

    with audit.recorded(db, entry, clock.now):
        engine.send_now(did)   # one write transaction

The row is written on the connection of the first write transaction that commits inside the
block (:data:`duly.store.db.pending_writes`), just before it commits: the action and its
audit row commit together or not at all. When the block raises, nothing is written; when it
ends without any write transaction having committed (nothing changed, or the action's id is
known only afterwards), the row is written in a transaction of its own.

Every query function takes an open connection inside the caller's transaction and returns
plain data (dicts of the table's columns, ``before``/``after`` parsed back from JSON).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from duly.store.db import pending_writes, write_transaction
from duly.store.tables import audit_log, deliveries

__all__ = [
    "MAX_STATE",
    "MAX_SUMMARY",
    "OBJECT_KINDS",
    "Entry",
    "add_entry",
    "entries_of_object",
    "entries_of_subject",
    "entries_page",
    "record",
    "recorded",
    "state_json",
]

MAX_SUMMARY = 500  # characters of a summary
MAX_STATE = 4000  # characters of the JSON of a before or an after
MAX_ACTOR = 220
MAX_ACTION = 40
MAX_OBJECT_ID = 400

# what an entry can be about
OBJECT_KINDS = (
    "delivery",
    "subject",
    "recipient",
    "address",
    "reminder",
    "template",
    "user",
    "key",
    "rules",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One action, as the audit trail keeps it. ``subject`` is the KIND/KEY the object
    belongs to (a delivery's is looked up when not given), so the subject's history shows
    it."""

    actor: str
    action: str
    object_kind: str
    object_id: str
    summary: str
    subject: str | None = None
    before: Any = None
    after: Any = None
    request_id: str | None = None


def _cut(text: str | None, size: int) -> str:
    text = str(text or "")
    return text if len(text) <= size else text[: size - 1] + "…"


def state_json(value: Any) -> str | None:
    """The JSON kept for a before/after: None for None; when longer than ``MAX_STATE``
    characters, an object with the full JSON's size and SHA-256 instead."""
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) <= MAX_STATE:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return json.dumps({"truncated": True, "chars": len(text), "sha256": digest})


def _parse(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_entry(conn: Connection, entry: Entry, at: datetime) -> int:
    """Insert ``entry`` at ``at`` (bounded as the module says); returns its id. A delivery's
    subject, when the entry does not name one, is read from the delivery in the same
    transaction."""
    subject = entry.subject
    if subject is None and entry.object_kind == "delivery" and entry.object_id.isdigit():
        subject = conn.execute(
            sa.select(deliveries.c.subject).where(deliveries.c.id == int(entry.object_id))
        ).scalar()
    values = {
        "at": at,
        "actor": _cut(entry.actor, MAX_ACTOR) or "-",
        "action": _cut(entry.action, MAX_ACTION),
        "object_kind": _cut(entry.object_kind, 20),
        "object_id": _cut(entry.object_id, MAX_OBJECT_ID),
        "subject": _cut(subject, 301) or None,
        "summary": _cut(entry.summary, MAX_SUMMARY),
        "before": state_json(entry.before),
        "after": state_json(entry.after),
        "request_id": _cut(entry.request_id, 64) or None,
    }
    return int(conn.execute(sa.insert(audit_log).values(**values)).inserted_primary_key[0])


def _rows(conn: Connection, q: Any) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute(q).mappings():
        d = dict(r)
        d["before"], d["after"] = _parse(d["before"]), _parse(d["after"])
        out.append(d)
    return out


def entries_of_object(conn: Connection, kind: str, oid: str, limit: int) -> list[dict[str, Any]]:
    """The entries about one object, newest first, at most ``limit`` (by the
    ``(object_kind, object_id)`` index)."""
    q = (
        sa.select(audit_log)
        .where(audit_log.c.object_kind == kind, audit_log.c.object_id == oid)
        .order_by(audit_log.c.id.desc())
        .limit(limit)
    )
    return _rows(conn, q)


def entries_of_subject(conn: Connection, ref: str, limit: int) -> list[dict[str, Any]]:
    """The entries about a subject and the objects that belong to it (its deliveries, its
    one-off reminders), newest first, at most ``limit``."""
    q = (
        sa.select(audit_log)
        .where(audit_log.c.subject == ref)
        .order_by(audit_log.c.id.desc())
        .limit(limit)
    )
    return _rows(conn, q)


def entries_page(
    conn: Connection,
    *,
    actor: str = "",
    object_kind: str = "",
    object_id: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Entries matching every filter given (``actor``, ``object_kind``, ``object_id``
    exactly; ``subject`` matches ``object_id`` too, so "invoice/INV-1" finds the actions on
    its deliveries; ``start`` <= at < ``end``), newest first, with an id below ``before_id``
    (keyset paging), at most ``limit``."""
    q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if actor:
        q = q.where(audit_log.c.actor == actor)
    if object_kind:
        q = q.where(audit_log.c.object_kind == object_kind)
    if object_id:
        q = q.where(sa.or_(audit_log.c.object_id == object_id, audit_log.c.subject == object_id))
    if start is not None:
        q = q.where(audit_log.c.at >= start)
    if end is not None:
        q = q.where(audit_log.c.at < end)
    if before_id is not None:
        q = q.where(audit_log.c.id < before_id)
    return _rows(conn, q)


@contextmanager
def recorded(db: Engine, entry: Entry, now: Callable[[], datetime]) -> Iterator[None]:
    """Attach ``entry`` to the next write transaction that commits inside the block (see
    the module's docstring)."""
    pending = pending_writes.get()
    token = None
    if pending is None:
        pending = []
        token = pending_writes.set(pending)

    def write(conn: Connection) -> None:
        add_entry(conn, entry, now())

    pending.append(write)
    try:
        yield
        if write in pending:  # no write transaction took it
            pending.remove(write)
            record(db, entry, now())
    finally:
        if write in pending:
            pending.remove(write)
        if token is not None:
            pending_writes.reset(token)


def record(db: Engine, entry: Entry, at: datetime) -> int:
    """Write ``entry`` in a transaction of its own (for an action whose transaction it could
    not join); returns its id."""
    with write_transaction(db) as conn:
        return add_entry(conn, entry, at)
