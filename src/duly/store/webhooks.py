"""The webhook outbox's queries: every statement on ``webhook_events`` and ``webhook_attempts``.

:mod:`duly.delivery.webhooks.outbox` decides what an event holds and when it is sent; this module
only stores and reads it. Every function runs in the caller's connection and transaction
(the caller chooses ``write_transaction`` or ``connect``) and returns plain data. The same
SQL runs on SQLite and PostgreSQL (``FOR UPDATE SKIP LOCKED`` only on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from duly.store.tables import webhook_attempts, webhook_events

__all__ = [
    "Attempt",
    "Claimed",
    "add_action_event",
    "add_events",
    "attempts_of_events",
    "claim_due_events",
    "delete_finished_events_before",
    "event_by_id",
    "events_page",
    "next_pending_due",
    "record_attempt",
    "retry_failed_event",
]

# An error text kept in the database is cut to this many characters.
ERROR_MAX = 1000


@dataclass(frozen=True, slots=True)
class Claimed:
    """An event a sender holds until its lease runs out."""

    id: int
    msg_id: str
    type: str
    url: str
    secret_env: str | None
    payload: Any
    attempt: int  # the number of the attempt about to be made (1 for the first)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one HTTP attempt and what follows from it."""

    state: str  # sent | failed | pending (retry at next_at)
    status_code: int | None
    error: str | None
    duration_ms: int
    next_at: datetime | None = None


# --------------------------------------------------------------------------- writing


def add_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert new event rows (columns of ``webhook_events``) in one statement, inside the
    caller's transaction: they exist exactly when it commits."""
    conn.execute(insert(webhook_events), [dict(r) for r in rows])


def add_action_event(conn: Connection, row: Mapping[str, Any]) -> int:
    """Insert one event row inside the caller's transaction; returns its new id."""
    ev = webhook_events
    return int(conn.execute(insert(ev).returning(ev.c.id), dict(row)).scalar_one())


# --------------------------------------------------------------------------- the sender's


def claim_due_events(
    conn: Connection, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[Claimed]:
    """Take up to ``limit`` pending events due by ``now``, oldest first, for ``lease``;
    returned in id order.

    The claim is a conditional UPDATE (pending and still due): when two senders pick the
    same rows, the database lets one win each row and the other's UPDATE matches nothing
    ("another process got there first"). It moves ``next_at`` to the lease's end, so an
    event whose sender died is taken again after it. On PostgreSQL the candidates are read
    with ``FOR UPDATE SKIP LOCKED`` so senders do not queue on each other's rows."""
    ev = webhook_events
    q = (
        select(ev.c.id)
        .where(ev.c.state == "pending", ev.c.next_at <= now)
        .order_by(ev.c.next_at, ev.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    rows = conn.execute(
        update(ev)
        .where(ev.c.id.in_(ids), ev.c.state == "pending", ev.c.next_at <= now)
        .values(lease_owner=owner, next_at=now + lease)
        .returning(
            ev.c.id, ev.c.msg_id, ev.c.type, ev.c.url, ev.c.secret_env, ev.c.payload, ev.c.attempts
        )
    ).all()
    claimed = [Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6] + 1) for r in rows]
    return sorted(claimed, key=lambda c: c.id)


def record_attempt(
    conn: Connection, event: Claimed, result: Attempt, owner: str, now: datetime
) -> bool:
    """Append the attempt and move the event on (sent, failed, or pending until
    ``result.next_at``). The attempt is always kept; the event is updated only while
    ``owner`` still holds it — False means its lease ran out and another sender took it.
    Error texts are cut to ERROR_MAX characters."""
    conn.execute(
        insert(webhook_attempts),
        {
            "event_id": event.id,
            "attempt": event.attempt,
            "at": now,
            "status_code": result.status_code,
            "error": result.error[:ERROR_MAX] if result.error else None,
            "duration_ms": result.duration_ms,
        },
    )
    values: dict[str, Any] = {
        "state": result.state,
        "attempts": event.attempt,
        "lease_owner": None,
        "last_status": result.status_code,
        "last_error": result.error[:ERROR_MAX] if result.error else None,
    }
    if result.state == "sent":
        values["sent_at"] = now
    if result.state == "pending":
        assert result.next_at is not None
        values["next_at"] = result.next_at
    ev = webhook_events
    res = conn.execute(
        update(ev)
        .where(ev.c.id == event.id, ev.c.state == "pending", ev.c.lease_owner == owner)
        .values(**values)
    )
    return res.rowcount == 1


def next_pending_due(conn: Connection) -> datetime | None:
    """When the earliest pending event is due (or its lease runs out); None if none."""
    ev = webhook_events
    return conn.execute(select(func.min(ev.c.next_at)).where(ev.c.state == "pending")).scalar()


# --------------------------------------------------------------------------- the operator's


def events_page(
    conn: Connection,
    *,
    state: str | None = None,
    type: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Event rows (every column, URL as stored) newest first by id, at most ``limit``,
    optionally of one state or type, with ids below ``before_id`` (a cursor)."""
    ev = webhook_events
    conds = []
    if state is not None:
        conds.append(ev.c.state == state)
    if type is not None:
        conds.append(ev.c.type == type)
    if before_id is not None:
        conds.append(ev.c.id < before_id)
    q = select(ev).where(*conds).order_by(ev.c.id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def event_by_id(conn: Connection, event_id: int) -> dict[str, Any] | None:
    """One event row (every column, URL as stored), or None."""
    r = conn.execute(select(webhook_events).where(webhook_events.c.id == event_id)).mappings()
    row = r.first()
    return dict(row) if row is not None else None


def attempts_of_events(
    conn: Connection, event_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """The attempts of some events, oldest first: ``{event id: [{attempt, at, status_code,
    error, duration_ms}]}``, with an empty list for an event without attempts."""
    wa = webhook_attempts
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in event_ids}
    if not event_ids:
        return out
    q = select(wa).where(wa.c.event_id.in_(list(event_ids))).order_by(wa.c.event_id, wa.c.id)
    for r in conn.execute(q).mappings():
        out[r["event_id"]].append(
            {
                "attempt": r["attempt"],
                "at": r["at"],
                "status_code": r["status_code"],
                "error": r["error"],
                "duration_ms": r["duration_ms"],
            }
        )
    return out


def retry_failed_event(conn: Connection, event_id: int, now: datetime) -> bool:
    """Make a failed event pending and due now (its attempts so far are kept and it gets a
    full set of retries again). False if there is no failed event with that id."""
    ev = webhook_events
    res = conn.execute(
        update(ev)
        .where(ev.c.id == event_id, ev.c.state == "failed")
        .values(state="pending", next_at=now, attempts=0, lease_owner=None)
    )
    return res.rowcount == 1


def delete_finished_events_before(conn: Connection, before: datetime) -> int:
    """Delete sent and failed events created before ``before`` (their attempts go with
    them, by the foreign key). Pending ones are kept whatever their age. Returns how many
    were deleted."""
    ev = webhook_events
    res = conn.execute(
        delete(ev).where(ev.c.state.in_(("sent", "failed")), ev.c.created_at < before)
    )
    return int(res.rowcount)
