"""The queries behind the people who sign in to the web UI: users, their sessions, and the
sign-in attempts counted against the limits.

Every function takes an open connection inside the caller's transaction (the caller decides
where a transaction begins and ends) and returns plain data: a user is a dict of its
``users`` columns, password hash included (:mod:`duly.web.users` hashes, checks and turns it
into a ``User``). A session row is named by the SHA-256 of its cookie's token, computed by
the caller; the token itself is never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.core.errors import InvalidInput
from duly.store.db import is_postgres
from duly.store.tables import sign_in_attempts, ui_sessions, users

__all__ = [
    "add_user",
    "count_sessions",
    "count_admins",
    "count_users",
    "count_sign_in_attempt",
    "delete_user",
    "end_session",
    "expire_sessions",
    "forget_sign_in_attempts",
    "record_sign_in",
    "session_user",
    "start_session",
    "touch_session",
    "update_user",
    "user_by_id",
    "user_by_name",
    "users_by_name",
]


# --------------------------------------------------------------------------- users


def add_user(conn: Connection, username: str, password_hash: str, role: str, now: datetime) -> None:
    """Insert a user created at ``now``. Raises InvalidInput (field ``username``) when the
    name is taken (the unique index decides, so two concurrent creations cannot both win);
    the caller's transaction is then rolled back by the exception."""
    try:
        conn.execute(
            sa.insert(users).values(
                username=username,
                password_hash=password_hash,
                role=role,
                created_at=now,
                updated_at=now,
            )
        )
    except sa.exc.IntegrityError:
        raise InvalidInput(f"there is already a user {username!r}", field="username") from None


def count_users(conn: Connection) -> int:
    """How many users exist."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() or 0)


def count_admins(conn: Connection, *, lock: bool = False) -> int:
    """How many users have the role admin (read in the caller's transaction: after a
    change, it says whether one is left). With ``lock``, on PostgreSQL the admins' rows are
    locked until the transaction ends, so two transactions that each demote or delete a
    different admin take turns and the second sees the first's change (SQLite's write
    transaction already holds the database's lock)."""
    if lock and is_postgres(conn):
        ids = sa.select(users.c.id).where(users.c.role == "admin").with_for_update()
        return len(conn.execute(ids).all())
    q = sa.select(sa.func.count()).select_from(users).where(users.c.role == "admin")
    return int(conn.execute(q).scalar() or 0)


def user_by_id(conn: Connection, uid: int) -> dict[str, Any] | None:
    """The user with this id (all columns, password hash included), or None."""
    r = conn.execute(sa.select(users).where(users.c.id == uid)).mappings().first()
    return dict(r) if r is not None else None


def user_by_name(conn: Connection, username: str) -> dict[str, Any] | None:
    """The user with exactly this username (all columns, password hash included), or None."""
    r = conn.execute(sa.select(users).where(users.c.username == username)).mappings().first()
    return dict(r) if r is not None else None


def users_by_name(conn: Connection) -> list[dict[str, Any]]:
    """Every user (all columns), ordered by username."""
    return [dict(r) for r in conn.execute(sa.select(users).order_by(users.c.username)).mappings()]


def record_sign_in(conn: Connection, uid: int, values: dict[str, Any]) -> None:
    """Write the columns in ``values`` (``last_login_at``, and ``password_hash`` when the
    hash was upgraded) on the user ``uid`` after a successful sign-in."""
    conn.execute(sa.update(users).where(users.c.id == uid).values(**values))


def update_user(
    conn: Connection,
    username: str,
    now: datetime,
    *,
    end_sessions: bool = False,
    **values: object,
) -> bool:
    """Set ``values`` (and ``updated_at=now``) on the user named ``username``; with
    ``end_sessions``, delete every session of theirs in the same transaction. False when
    there is no such user (nothing written)."""
    n = conn.execute(
        sa.update(users).where(users.c.username == username).values(updated_at=now, **values)
    ).rowcount
    if n and end_sessions:
        uid = sa.select(users.c.id).where(users.c.username == username).scalar_subquery()
        conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.user_id == uid))
    return bool(n)


def delete_user(conn: Connection, username: str) -> bool:
    """Delete the user named ``username`` and their sessions; False when there was none."""
    uid = sa.select(users.c.id).where(users.c.username == username).scalar_subquery()
    conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.user_id == uid))
    return bool(conn.execute(sa.delete(users).where(users.c.username == username)).rowcount)


# --------------------------------------------------------------------------- sessions


def start_session(
    conn: Connection, sid: str, user_id: int, now: datetime, idle_cut: datetime, per_user: int
) -> None:
    """Insert the session ``sid`` of ``user_id`` (created and seen at ``now``), delete every
    session last seen at or before ``idle_cut``, and keep only the ``per_user`` most recently
    seen sessions of the user (ties: the newest created), deleting the others."""
    conn.execute(
        sa.insert(ui_sessions).values(id=sid, user_id=user_id, created_at=now, last_seen_at=now)
    )
    conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.last_seen_at <= idle_cut))
    keep = (
        sa.select(ui_sessions.c.id)
        .where(ui_sessions.c.user_id == user_id)
        .order_by(ui_sessions.c.last_seen_at.desc(), ui_sessions.c.created_at.desc())
        .limit(per_user)
    )
    conn.execute(
        sa.delete(ui_sessions).where(
            ui_sessions.c.user_id == user_id, ui_sessions.c.id.not_in(keep)
        )
    )


def session_user(conn: Connection, sid: str) -> tuple[dict[str, Any], datetime] | None:
    """The user of the session ``sid`` (all columns) and when the session was last seen, or
    None when there is no such session. Reads only: judging idleness is the caller's."""
    r = (
        conn.execute(
            sa.select(users, ui_sessions.c.last_seen_at)
            .join(ui_sessions, ui_sessions.c.user_id == users.c.id)
            .where(ui_sessions.c.id == sid)
        )
        .mappings()
        .first()
    )
    if r is None:
        return None
    user = {k: v for k, v in r.items() if k != "last_seen_at"}
    return user, r["last_seen_at"]


def touch_session(conn: Connection, sid: str, now: datetime) -> None:
    """Mark the session ``sid`` as seen at ``now`` (nothing when it is gone)."""
    conn.execute(sa.update(ui_sessions).where(ui_sessions.c.id == sid).values(last_seen_at=now))


def end_session(conn: Connection, sid: str) -> None:
    """Delete the session ``sid`` (idempotent)."""
    conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.id == sid))


def expire_sessions(conn: Connection, idle_cut: datetime) -> int:
    """Delete every session last seen at or before ``idle_cut``; returns how many."""
    return int(
        conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.last_seen_at <= idle_cut)).rowcount
    )


def count_sessions(conn: Connection) -> int:
    """How many sessions exist (live or idle but not yet deleted)."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(ui_sessions)).scalar() or 0)


# --------------------------------------------------------------------------- sign-in attempts


def count_sign_in_attempt(
    conn: Connection, keys: Sequence[tuple[str, int]], now: datetime, start: datetime
) -> tuple[list[int], float]:
    """Count an attempt at ``now`` against each ``(key, limit)`` over the window after
    ``start``: when every key has fewer than ``limit`` attempts in the window, insert one row
    per key and return ``(ids of the rows, 0.0)``; otherwise insert nothing and return
    ``([], seconds until the fullest key allows one again)``.

    Atomic when called in a write transaction (:func:`duly.store.db.write_transaction`): on
    SQLite it holds the database's write lock; on PostgreSQL it first takes a
    transaction-scoped advisory lock per key, in sorted order (no deadlock between attempts
    sharing keys; attempts on other keys are not held up)."""
    if is_postgres(conn):
        for key, _ in sorted(keys):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(key))))
    wait = 0.0
    for key, limit in keys:
        q = (
            sa.select(sign_in_attempts.c.at)
            .where(sign_in_attempts.c.key == key, sign_in_attempts.c.at > start)
            .order_by(sign_in_attempts.c.at.desc())
            .limit(limit)
        )
        times = conn.execute(q).scalars().all()
        if len(times) >= limit:  # free again when the limit-th latest leaves
            wait = max(wait, (times[-1] - start).total_seconds())
    if wait > 0:
        return [], wait
    insert = sa.insert(sign_in_attempts)
    ids = [
        int(conn.execute(insert.values(key=key, at=now)).inserted_primary_key[0]) for key, _ in keys
    ]
    return ids, 0.0


def forget_sign_in_attempts(conn: Connection, ids: Sequence[int], older_than: datetime) -> None:
    """Delete the attempt rows ``ids`` (an attempt that was not a failure), and every attempt
    made at or before ``older_than`` (housekeeping). Idempotent."""
    if ids:
        conn.execute(sa.delete(sign_in_attempts).where(sign_in_attempts.c.id.in_(list(ids))))
    conn.execute(sa.delete(sign_in_attempts).where(sign_in_attempts.c.at <= older_than))
