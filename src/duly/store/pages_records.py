"""Read models of the records the UI and the API show one by one or page through:
reminders, subjects, recipients (with their deliveries, suppressions and counts).

Every function takes an open connection (the caller decides the transaction), reads only,
and returns plain dicts, lists and tuples. Lists are LIMITed and paged by a key (keyset
paging), never by OFFSET; counts for a page are one grouped query for the whole page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.core.model import LATE_AFTER, REMINDER_RULE
from duly.store.tables import deliveries, recipients, reminders, subjects, suppressions

__all__ = [
    "REMINDER_RULE",
    "every_reminder_delivery",
    "first_recipient_ids",
    "has_sent_on",
    "live_reminder",
    "pending_count_of_recipient",
    "pending_per_recipient",
    "pending_per_subject",
    "recent_deliveries_of_recipient",
    "recent_subject_refs",
    "recipients_page",
    "reminder_counts",
    "reminder_deliveries",
    "reminders_of_subject",
    "reminders_page",
    "stored_subject_kinds",
    "subject_history",
    "subject_plan",
    "subject_times",
    "subjects_page",
    "suppressions_of_addresses",
    "upcoming_deliveries_of_recipient",
]

# The reserved rule of one-off reminders, as duly.engine.service.REMINDER_RULE (the store
# may not import the engine): a reminder's deliveries have it, step "" and occurrence = id.


def _rows(conn: Connection, q: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(q).mappings()]


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own % _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --------------------------------------------------------------------------- reminders


def reminder_counts(
    conn: Connection, ids: Iterable[int], now: datetime
) -> dict[int, dict[str, int]]:
    """Counts per reminder (total, pending, sent, overdue, failed), as the API's
    ``_reminder_out``: cancelled rows are not counted; pending includes sending; overdue is
    a pending or sending row more than ``LATE_AFTER`` past its due time. Every id of ``ids`` is in the answer (all
    zero when it has no deliveries). One grouped query for all ``ids``."""
    ids = [int(i) for i in ids]
    out = {i: {"total": 0, "pending": 0, "sent": 0, "overdue": 0, "failed": 0} for i in ids}
    if not ids:
        return out
    live = deliveries.c.state != "cancelled"
    waiting = deliveries.c.state.in_(("pending", "sending"))

    def count(cond: Any) -> Any:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    q = (
        sa.select(
            deliveries.c.occurrence,
            count(live),
            count(waiting),
            count(deliveries.c.state == "sent"),
            count(sa.and_(waiting, deliveries.c.due_at < now - LATE_AFTER)),
            count(deliveries.c.state == "failed"),
        )
        # rule, step, occurrence lead the identity's unique index
        .where(
            deliveries.c.rule == REMINDER_RULE,
            deliveries.c.step == "",
            deliveries.c.occurrence.in_([str(i) for i in ids]),
        )
        .group_by(deliveries.c.occurrence)
    )
    for occ, total, pending, sent, overdue, failed in conn.execute(q):
        try:
            rid = int(occ)
        except ValueError:
            continue
        if rid in out:
            out[rid] = {
                "total": int(total or 0),
                "pending": int(pending or 0),
                "sent": int(sent or 0),
                "overdue": int(overdue or 0),
                "failed": int(failed or 0),
            }
    return out


def live_reminder(conn: Connection, rid: int) -> dict[str, Any] | None:
    """Reminder ``rid`` (every column), or None when there is none or it was deleted."""
    r = (
        conn.execute(
            sa.select(reminders).where(reminders.c.id == rid, reminders.c.deleted_at.is_(None))
        )
        .mappings()
        .first()
    )
    return dict(r) if r is not None else None


def reminder_deliveries(conn: Connection, rid: int, limit: int) -> list[dict[str, Any]]:
    """The deliveries (every column) of reminder ``rid`` by (recipient, channel, id), at
    most ``limit``."""
    q = (
        sa.select(deliveries)
        .where(
            deliveries.c.rule == REMINDER_RULE,
            deliveries.c.step == "",
            deliveries.c.occurrence == str(int(rid)),
        )
        .order_by(deliveries.c.recipient, deliveries.c.channel, deliveries.c.id)
        .limit(limit)
    )
    return _rows(conn, q)


def every_reminder_delivery(conn: Connection, rid: int) -> list[dict[str, Any]]:
    """Every delivery (every column) of reminder ``rid`` by id — unbounded: a reminder has
    at most (recipients × channels) of them, both bounded when it is made."""
    q = (
        sa.select(deliveries)
        .where(deliveries.c.rule == REMINDER_RULE, deliveries.c.occurrence == str(rid))
        .order_by(deliveries.c.id)
    )
    return _rows(conn, q)


def reminders_page(conn: Connection, after: int | None, limit: int) -> list[dict[str, Any]]:
    """Reminders not deleted (every column), newest id first, ids below ``after``, at most
    ``limit``."""
    q = sa.select(reminders).where(reminders.c.deleted_at.is_(None))
    if after is not None:
        q = q.where(reminders.c.id < after)
    q = q.order_by(reminders.c.id.desc()).limit(limit)
    return _rows(conn, q)


def reminders_of_subject(conn: Connection, ref: str, limit: int) -> list[dict[str, Any]]:
    """The reminders (not deleted, every column) about subject ``ref`` (KIND/KEY), latest
    send time first (then newest id), at most ``limit``."""
    q = (
        sa.select(reminders)
        .where(reminders.c.subject == ref, reminders.c.deleted_at.is_(None))
        .order_by(reminders.c.send_at.desc(), reminders.c.id.desc())
        .limit(limit)
    )
    return _rows(conn, q)


def first_recipient_ids(conn: Connection, limit: int = 8) -> list[str]:
    """The first ``limit`` recipient ids in id order (examples for a form)."""
    q = sa.select(recipients.c.id).order_by(recipients.c.id).limit(limit)
    return [i for (i,) in conn.execute(q)]


# --------------------------------------------------------------------------- subjects


def subjects_page(
    conn: Connection,
    *,
    kind: str = "",
    key: str = "",
    deleted: bool = False,
    after: int | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Subjects (id, kind, key, revision, hold_until, deleted_at, updated_at), newest id
    first, at most ``limit``: of ``kind`` if given, whose key contains ``key`` (any case,
    taken literally) if given, deleted ones only when ``deleted``, ids below ``after``."""
    q = sa.select(
        subjects.c.id,
        subjects.c.kind,
        subjects.c.key,
        subjects.c.revision,
        subjects.c.hold_until,
        subjects.c.deleted_at,
        subjects.c.updated_at,
    )
    if kind:
        q = q.where(subjects.c.kind == kind)
    if key:
        q = q.where(subjects.c.key.ilike(_like(key), escape="\\"))
    if not deleted:
        q = q.where(subjects.c.deleted_at.is_(None))
    if after is not None:
        q = q.where(subjects.c.id < after)
    q = q.order_by(subjects.c.id.desc()).limit(limit)
    return _rows(conn, q)


def pending_per_subject(conn: Connection, refs: Sequence[str]) -> dict[str, int]:
    """Pending deliveries per subject of ``refs`` (KIND/KEY); subjects with none are absent.
    One grouped query."""
    if not refs:
        return {}
    q = (
        sa.select(deliveries.c.subject, sa.func.count())
        .where(deliveries.c.subject.in_(list(refs)), deliveries.c.state == "pending")
        .group_by(deliveries.c.subject)
    )
    return {s: int(n) for s, n in conn.execute(q)}


def stored_subject_kinds(conn: Connection, limit: int = 100) -> list[str]:
    """Distinct kinds of the stored subjects (deleted ones too), at most ``limit``, in no
    particular order."""
    return list(conn.execute(sa.select(subjects.c.kind).distinct().limit(limit)).scalars().all())


def subject_times(conn: Connection, sid: int) -> tuple[datetime, datetime] | None:
    """(created_at, updated_at) of the subject with row id ``sid``, None if there is none."""
    row = conn.execute(
        sa.select(subjects.c.created_at, subjects.c.updated_at).where(subjects.c.id == sid)
    ).first()
    return (row.created_at, row.updated_at) if row is not None else None


_WAITING = ("pending", "sending")


def subject_plan(conn: Connection, ref: str, limit: int) -> list[dict[str, Any]]:
    """The pending and sending deliveries (every column) of subject ``ref``, soonest first
    by (due_at, id), at most ``limit``."""
    return _rows(
        conn,
        sa.select(deliveries)
        .where(deliveries.c.subject == ref, deliveries.c.state.in_(_WAITING))
        .order_by(deliveries.c.due_at, deliveries.c.id)
        .limit(limit),
    )


def subject_history(conn: Connection, ref: str, limit: int) -> list[dict[str, Any]]:
    """The deliveries (every column) of subject ``ref`` that are neither pending nor
    sending, latest first by (due_at, id), at most ``limit``."""
    return _rows(
        conn,
        sa.select(deliveries)
        .where(deliveries.c.subject == ref, deliveries.c.state.not_in(_WAITING))
        .order_by(deliveries.c.due_at.desc(), deliveries.c.id.desc())
        .limit(limit),
    )


def recent_subject_refs(conn: Connection, kinds: Sequence[str], limit: int) -> list[str]:
    """KIND/KEY of the newest subjects (by id) of ``kinds`` not deleted, at most ``limit``."""
    if not kinds:
        return []
    q = (
        sa.select(subjects.c.kind, subjects.c.key)
        .where(subjects.c.kind.in_(list(kinds)), subjects.c.deleted_at.is_(None))
        .order_by(subjects.c.id.desc())
        .limit(limit)
    )
    return [f"{k}/{key}" for k, key in conn.execute(q)]


# --------------------------------------------------------------------------- recipients


def _state_is(state: str) -> Any:
    """``deliveries.state = state`` written so that no index is used for it: the planner
    then reads one recipient's rows by ``ix_deliveries_recipient`` instead of walking every
    pending (or sent) row of every recipient by the state indexes (SQLite, without
    statistics, prefers those)."""
    return (deliveries.c.state + "") == state


def recipients_page(
    conn: Connection, search: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Recipients (id, name, email, phone, timezone, locale, addresses) by id, ids after
    ``after``, at most ``limit``; with ``search``, those whose id, name, email or phone
    contains it (any case, taken literally)."""
    c = recipients.c
    stmt = sa.select(c.id, c.name, c.email, c.phone, c.timezone, c.locale, c.addresses)
    if search:
        pat = _like(search)
        stmt = stmt.where(
            sa.or_(*(col.ilike(pat, escape="\\") for col in (c.id, c.name, c.email, c.phone)))
        )
    if after:
        stmt = stmt.where(c.id > after)
    stmt = stmt.order_by(c.id).limit(limit)
    return _rows(conn, stmt)


def pending_per_recipient(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    """Pending deliveries per recipient of ``ids``; recipients with none are absent. One
    grouped query by ix_deliveries_recipient."""
    if not ids:
        return {}
    d = deliveries.c
    return {
        rid: int(n)
        for rid, n in conn.execute(
            sa.select(d.recipient, sa.func.count())
            .where(d.recipient.in_(list(ids)), _state_is("pending"))
            .group_by(d.recipient)
        )
    }


def has_sent_on(conn: Connection, rid: str, channels: Sequence[str]) -> bool:
    """Whether recipient ``rid`` has any sent delivery on one of ``channels`` (one row
    looked up by ix_deliveries_recipient)."""
    d = deliveries.c
    found = conn.execute(
        sa.select(d.id)
        .where(d.recipient == rid, d.channel.in_(list(channels)), _state_is("sent"))
        .limit(1)
    ).first()
    return found is not None


_RECIPIENT_COLS = (
    deliveries.c.id,
    deliveries.c.rule,
    deliveries.c.step,
    deliveries.c.subject,
    deliveries.c.channel,
    deliveries.c.state,
    deliveries.c.reason,
    deliveries.c.category,
    deliveries.c.due_at,
    deliveries.c.sent_at,
    deliveries.c.updated_at,
    deliveries.c.title,
)


def recent_deliveries_of_recipient(conn: Connection, rid: str, limit: int) -> list[dict[str, Any]]:
    """Recipient ``rid``'s deliveries that are not pending, last changed first (then newest
    id), at most ``limit`` (no message bodies)."""
    d = deliveries.c
    return _rows(
        conn,
        sa.select(*_RECIPIENT_COLS)
        .where(d.recipient == rid, (d.state + "") != "pending")
        .order_by(d.updated_at.desc(), d.id.desc())
        .limit(limit),
    )


def upcoming_deliveries_of_recipient(
    conn: Connection, rid: str, limit: int
) -> list[dict[str, Any]]:
    """Recipient ``rid``'s pending deliveries, soonest first by (due_at, id), at most
    ``limit`` (no message bodies)."""
    d = deliveries.c
    return _rows(
        conn,
        sa.select(*_RECIPIENT_COLS)
        .where(d.recipient == rid, _state_is("pending"))
        .order_by(d.due_at, d.id)
        .limit(limit),
    )


def pending_count_of_recipient(conn: Connection, rid: str) -> int:
    """How many pending deliveries recipient ``rid`` has."""
    d = deliveries.c
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(d.recipient == rid, _state_is("pending"))
        ).scalar_one()
    )


def suppressions_of_addresses(
    conn: Connection, addresses: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """Suppressions (every column, cleared ones too) of ``addresses`` (lower-cased, as
    stored): active ones first, then newest id first, at most ``limit``."""
    s = suppressions.c
    return _rows(
        conn,
        sa.select(suppressions)
        .where(s.address.in_(list(addresses)))
        .order_by(s.cleared_at.is_(None).desc(), s.id.desc())
        .limit(limit),
    )
