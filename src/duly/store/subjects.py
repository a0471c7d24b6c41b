"""Subjects, events, one-off reminders and the problems planning found.

The queries of :class:`SubjectQueries` are part of :class:`duly.store.store.Store`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from duly.core.model import HOLD_INDEFINITE, Subject
from duly.store.driver import fetch
from duly.store.rows import (
    StoreBase,
    SubjectRecord,
    _chunks,
    _subject_from_row,
    instants,
    read_instant,
    read_json,
)
from duly.store.search import subject_search_text
from duly.store.tables import deliveries, events, reminders, subject_errors, subjects

__all__ = ["SubjectQueries", "count_subjects", "live_subjects_of_kind"]


# Built once: the upsert path runs this per request, and a statement built per call costs
# more in SQLAlchemy's construction and cache-key work than the query itself.
_SUBJECTS_BY_KEYS = select(subjects).where(
    subjects.c.kind == bindparam("kind"), subjects.c.key.in_(bindparam("keys", expanding=True))
)
_SUBJECTS_FOR_UPDATE = _SUBJECTS_BY_KEYS.with_for_update()

# One subject, by driver-level SQL (duly.store.driver): every single upsert reads and
# writes one, and SQLAlchemy's per-statement work cost more than SQLite's.
_ONE_COLS = (
    "id",
    "kind",
    "key",
    "attributes",
    "recipients",
    "revision",
    "hold_until",
    "acknowledged",
    "deleted_at",
)
_ONE = f"SELECT {', '.join(_ONE_COLS)} FROM subjects WHERE kind = ? AND key = ?"
_ONE_PG = _ONE.replace("?", "%s")
_ONE_PG_FOR_UPDATE = _ONE_PG + " FOR UPDATE"
_SAVE_COLS = (
    "attributes",
    "recipients",
    "revision",
    "hold_until",
    "acknowledged",
    "deleted_at",
    "updated_at",
    "search",
)
_UPDATE_ONE = f"UPDATE subjects SET {', '.join(c + ' = ?' for c in _SAVE_COLS)} WHERE id = ?"
_UPDATE_ONE_PG = _UPDATE_ONE.replace("?", "%s")
_INSERT_COLS = ("kind", "key", "created_at", *_SAVE_COLS)
_INSERT_ONE = (
    f"INSERT INTO subjects ({', '.join(_INSERT_COLS)}) "
    f"VALUES ({', '.join(['?'] * len(_INSERT_COLS))})"
)
_INSERT_ONE_PG = _INSERT_ONE.replace("?", "%s")
_JSON_COLS = frozenset({"attributes", "recipients", "acknowledged"})
_TIME_COLS = frozenset({"hold_until", "deleted_at", "updated_at", "created_at"})


class SubjectQueries(StoreBase):
    """Subjects, events, reminders, problems."""

    # ------------------------------------------------------------------ subjects

    def get_subjects(
        self, conn: Connection, refs: Sequence[tuple[str, str]], *, for_update: bool = False
    ) -> dict[tuple[str, str], SubjectRecord]:
        """Stored subjects (deleted ones included, flagged) by (kind, key)."""
        out: dict[tuple[str, str], SubjectRecord] = {}
        if len(refs) == 1:
            ((kind, key),) = refs
            if self.postgres:
                sql = _ONE_PG_FOR_UPDATE if for_update else _ONE_PG
            else:
                sql = _ONE
            for t in fetch(conn, sql, (kind, key)):
                r = dict(zip(_ONE_COLS, t, strict=True))
                for c in _JSON_COLS:
                    r[c] = read_json(r[c])
                r["hold_until"] = read_instant(r["hold_until"])
                r["deleted_at"] = read_instant(r["deleted_at"])
                out[(r["kind"], r["key"])] = _subject_from_row(r)  # type: ignore[arg-type]
            return out
        by_kind: dict[str, list[str]] = {}
        for kind, key in refs:
            by_kind.setdefault(kind, []).append(key)
        q = _SUBJECTS_FOR_UPDATE if for_update and self.postgres else _SUBJECTS_BY_KEYS
        for kind, keys in by_kind.items():
            for chunk in _chunks(sorted(set(keys)), 500):
                for r in conn.execute(q, {"kind": kind, "keys": list(chunk)}).mappings():
                    out[(r["kind"], r["key"])] = _subject_from_row(r)
        return out

    def save_subjects(
        self, conn: Connection, items: Sequence[tuple[SubjectRecord | None, Subject]], now: datetime
    ) -> None:
        """Write the new state of each subject (insert when it has no stored row)."""
        new_rows = []
        upd_rows = []
        for old, s in items:
            values = {
                "attributes": s.attributes,
                "recipients": {k: list(v) for k, v in s.recipients.items()},
                "revision": s.revision,
                "hold_until": s.hold_until,
                "acknowledged": sorted(s.acknowledged),
                "deleted_at": None,
                "updated_at": now,
                "search": subject_search_text(s.kind, s.key, s.attributes, s.recipients),
            }
            if old is None:
                new_rows.append({"kind": s.kind, "key": s.key, "created_at": now, **values})
            else:
                upd_rows.append({"_id": old.id, **values})
        if len(new_rows) == 1:
            self._write_one(
                conn, _INSERT_ONE_PG if self.postgres else _INSERT_ONE, _INSERT_COLS, new_rows[0]
            )
        elif new_rows:
            self._insert_raw(
                conn,
                "subjects",
                tuple(new_rows[0]),
                new_rows,
                times=_TIME_COLS,
                json_cols=_JSON_COLS,
            )
        if len(upd_rows) == 1:
            sql = _UPDATE_ONE_PG if self.postgres else _UPDATE_ONE
            self._write_one(conn, sql, (*_SAVE_COLS, "_id"), upd_rows[0])
        elif upd_rows:
            conn.execute(
                update(subjects)
                .where(subjects.c.id == bindparam("_id"))
                .values({k: bindparam(k) for k in upd_rows[0] if k != "_id"}),
                upd_rows,
            )

    def _write_one(
        self, conn: Connection, sql: str, cols: Sequence[str], row: dict[str, Any]
    ) -> None:
        """``save_subjects``' insert or update of one subject: ``row``'s ``cols`` in order,
        converted as the table's types would (instants naive UTC, in the SQLite dialect's
        text on SQLite; JSON as text)."""
        instant = instants(not self.postgres)
        params: list[Any] = []
        for c in cols:
            v = row[c]
            if c in _TIME_COLS:
                v = instant(v)
            elif c in _JSON_COLS and v is not None:
                v = json.dumps(v)
            params.append(v)
        fetch(conn, sql, params)

    def mark_subject_deleted(self, conn: Connection, record: SubjectRecord, now: datetime) -> None:
        """Keep the row as a tombstone: its revision count continues if the subject returns."""
        conn.execute(
            update(subjects)
            .where(subjects.c.id == record.id)
            .values(deleted_at=now, updated_at=now, hold_until=None, search=None)
        )

    def release_held_until_cleared(
        self, conn: Connection, ref: str, at: datetime, now: datetime
    ) -> int:
        """spec: Hold. The pending deliveries of subject ``ref`` that wait for the end of an
        indefinite hold (due at :data:`~duly.core.model.HOLD_INDEFINITE`) become due
        at ``at``, or at their own planned time when that is later. Returns how many moved;
        idempotent (a second call finds none)."""
        held = (
            deliveries.c.subject == ref,
            deliveries.c.state == "pending",
            deliveries.c.due_at == HOLD_INDEFINITE,
        )
        later = conn.execute(
            update(deliveries)
            .where(*held, deliveries.c.planned_at > at)
            .values(due_at=deliveries.c.planned_at, updated_at=now)
        ).rowcount
        rest = conn.execute(
            update(deliveries).where(*held).values(due_at=at, updated_at=now)
        ).rowcount
        return int(later or 0) + int(rest or 0)

    def record_problems(self, conn: Connection, problems: Sequence[Any], now: datetime) -> None:
        """Append the planner's problems (subject, rule, field, message) to
        ``subject_errors``, all recorded at ``now``; none is no write."""
        if problems:
            conn.execute(
                insert(subject_errors),
                [
                    {
                        "subject": p.subject,
                        "rule": p.rule,
                        "field": p.field,
                        "message": p.message,
                        "at": now,
                    }
                    for p in problems
                ],
            )

    # ------------------------------------------------------------------ events

    def add_event(
        self,
        conn: Connection,
        eid: str,
        name: str,
        subject: str,
        data: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Store an event once. Returns False when its id was seen before (idempotency)."""
        if conn.execute(select(events.c.id).where(events.c.id == eid)).first() is not None:
            return False
        conn.execute(
            insert(events).values(id=eid, name=name, subject=subject, data=data, received_at=now)
        )
        return True

    def get_events(self, conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored events by id (``id``, ``name``, ``subject``, ``data`` never None, ``at``:
        when received); unknown ids are absent from the result."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            for r in conn.execute(select(events).where(events.c.id.in_(chunk))).mappings():
                out[r["id"]] = {
                    "id": r["id"],
                    "name": r["name"],
                    "subject": r["subject"],
                    "data": r["data"] or {},
                    "at": r["received_at"],
                }
        return out

    def get_reminders(self, conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """One-off reminders by id (deleted ones are absent)."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            q = select(reminders).where(reminders.c.id.in_(chunk), reminders.c.deleted_at.is_(None))
            for r in conn.execute(q).mappings():
                out[int(r["id"])] = dict(r)
        return out

    def subject_problems(self, conn: Connection, ref: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest ``limit`` problems recorded for subject ``ref`` ("KIND/KEY"), newest
        first."""
        q = (
            select(subject_errors)
            .where(subject_errors.c.subject == ref)
            .order_by(subject_errors.c.id.desc())
            .limit(limit)
        )
        return [dict(r) for r in conn.execute(q).mappings()]

    # ------------------------------------------------------------------ one-off reminders

    def add_reminder(
        self,
        conn: Connection,
        *,
        title: str,
        message: str,
        send_at: datetime,
        channels: Sequence[str],
        recipients: Sequence[str],
        subject: str | None,
        category: str,
        now: datetime,
    ) -> int:
        """Store a new one-off reminder; returns its id (ids only ever grow). Its
        deliveries are planned by the caller."""
        rid = conn.execute(
            insert(reminders)
            .values(
                title=title,
                message=message,
                send_at=send_at,
                channels=list(channels),
                recipients=list(recipients),
                subject=subject,
                category=category,
                created_at=now,
                updated_at=now,
            )
            .returning(reminders.c.id)
        ).scalar_one()
        return int(rid)

    def update_reminder(
        self,
        conn: Connection,
        rid: int,
        *,
        title: str,
        message: str,
        send_at: datetime,
        channels: Sequence[str],
        recipients: Sequence[str],
        subject: str | None,
        category: str,
        now: datetime,
    ) -> None:
        """Replace every field of reminder ``rid`` (the caller checked it exists and was not
        sent)."""
        conn.execute(
            update(reminders)
            .where(reminders.c.id == rid)
            .values(
                title=title,
                message=message,
                send_at=send_at,
                channels=list(channels),
                recipients=list(recipients),
                subject=subject,
                category=category,
                updated_at=now,
            )
        )

    def mark_reminder_deleted(self, conn: Connection, rid: int, now: datetime) -> None:
        """Keep reminder ``rid`` as a tombstone (deleted at ``now``): it is absent from
        every read after."""
        conn.execute(
            update(reminders).where(reminders.c.id == rid).values(deleted_at=now, updated_at=now)
        )

    def reminder_exists(self, conn: Connection, rid: int) -> bool:
        """Is there a reminder ``rid`` that was not deleted?"""
        q = select(reminders.c.id).where(reminders.c.id == rid, reminders.c.deleted_at.is_(None))
        return conn.execute(q).first() is not None


# --------------------------------------------------------------------------- reads without a Store


def live_subjects_of_kind(conn: Connection, kind: str) -> Iterator[dict[str, Any]]:
    """The subjects of ``kind`` that are not deleted, by key, one at a time (the caller
    stops reading when it has enough): each as ``kind``, ``key``, ``attributes`` and
    ``recipients`` (role → ids), the last two never None."""
    q = (
        select(subjects.c.kind, subjects.c.key, subjects.c.attributes, subjects.c.recipients)
        .where(subjects.c.kind == kind, subjects.c.deleted_at.is_(None))
        .order_by(subjects.c.key)
    )
    for k, key, attrs, recips in conn.execute(q):
        yield {"kind": k, "key": key, "attributes": attrs or {}, "recipients": recips or {}}


def count_subjects(conn: Connection) -> int:
    """How many subject rows there are, deleted ones (tombstones) included."""
    return int(conn.execute(select(func.count()).select_from(subjects)).scalar() or 0)
