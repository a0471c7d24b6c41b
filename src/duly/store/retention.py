"""Retention's queries: finding, counting and pruning old delivery records and subject errors.

:mod:`duly.engine.retention` decides what is old (the cut-offs) and walks the chunks; this module
holds every statement it runs. Each function works in the caller's connection (a read, or a
short write transaction the caller opens) and returns plain numbers and tuples.

A record of ``state`` is *aged* for a ``cutoff`` when both its ``due_at`` and its
``updated_at`` lie before it. Records of a state pruned ``whole`` (skipped, cancelled) lose
their row and their log; the others (sent, failed, set) keep their identity row and lose its
content (:data:`CONTENT`) and their log rows older than the cut-off. Every query is built
from the same predicates, so a dry run counts exactly what a prune does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import deliveries, delivery_log, subject_errors

__all__ = [
    "CONTENT",
    "ChunkPruned",
    "PruneCount",
    "count_prunable",
    "count_subject_errors_before",
    "delete_subject_errors",
    "prunable_deliveries",
    "prune_deliveries",
    "release_prune_lock",
    "subject_error_ids_before",
    "try_prune_lock",
]

# The content a kept identity row loses.
CONTENT = ("title", "body_text", "body_html", "to_address", "receipt", "last_error", "changes")

# An advisory-lock key (PostgreSQL): one prune at a time across processes ("dulyprun").
PRUNE_LOCK_KEY = 0x6475_6C79_7072_756E


# --------------------------------------------------------------------------- predicates


def _aged(state: str, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Records of ``state`` older than ``cutoff`` (served by ix_deliveries_state_due)."""
    d = deliveries.c
    return sa.and_(d.state == state, d.due_at < cutoff, d.updated_at < cutoff)


def _has_content() -> sa.ColumnElement[bool]:
    return sa.or_(*(deliveries.c[c].is_not(None) for c in CONTENT))


def _has_old_log(cutoff: datetime) -> sa.ColumnElement[bool]:
    """The delivery still has log rows older than ``cutoff`` (ix_delivery_log_delivery_id)."""
    return sa.exists().where(
        delivery_log.c.delivery_id == deliveries.c.id, delivery_log.c.at < cutoff
    )


def _needs_work(state: str, cutoff: datetime, whole: bool) -> sa.ColumnElement[bool]:
    """An old record the prune would change: any old row of a state deleted whole; a kept
    identity row only while it still has content or old log rows (so a daily prune does
    not rewrite the rows it already pruned)."""
    if whole:
        return _aged(state, cutoff)
    return sa.and_(_aged(state, cutoff), sa.or_(_has_content(), _has_old_log(cutoff)))


def _rowcount(res: Any) -> int:
    n = res.rowcount
    return n if n and n > 0 else 0


# --------------------------------------------------------------------------- deliveries


@dataclass(frozen=True, slots=True)
class PruneCount:
    """What a prune of one outcome would do now (a dry run)."""

    rows: int  # whole rows deleted (``whole``), else 0
    content: int  # identity rows whose content is cleared (not ``whole``), else 0
    log_rows: int
    oldest: datetime | None  # the earliest and latest ``updated_at`` of the affected rows
    newest: datetime | None


def count_prunable(conn: Connection, state: str, cutoff: datetime, whole: bool) -> PruneCount:
    """Count, without changing anything, what :func:`prune_deliveries` would do to every
    aged record of ``state``: rows deleted (``whole``: with their whole log) or rows whose
    content would be cleared and log rows older than ``cutoff`` deleted. A read only."""
    d, lg = deliveries.c, delivery_log.c
    work = _needs_work(state, cutoff, whole)
    n, lo, hi = conn.execute(
        sa.select(sa.func.count(), sa.func.min(d.updated_at), sa.func.max(d.updated_at))
        .select_from(deliveries)
        .where(work)
    ).one()
    logs = sa.select(sa.func.count()).select_from(
        delivery_log.join(deliveries, d.id == lg.delivery_id)
    )
    if whole:
        # the whole log of a deleted row goes with it
        return PruneCount(n, 0, conn.execute(logs.where(work)).scalar_one(), lo, hi)
    content = conn.execute(
        sa.select(sa.func.count())
        .select_from(deliveries)
        .where(_aged(state, cutoff), _has_content())
    ).scalar_one()
    log_rows = conn.execute(logs.where(_aged(state, cutoff), lg.at < cutoff)).scalar_one()
    return PruneCount(0, content, log_rows, lo, hi)


def prunable_deliveries(
    conn: Connection,
    state: str,
    cutoff: datetime,
    whole: bool,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[tuple[int, datetime]]:
    """Up to ``limit`` ``(id, due_at)`` of aged records of ``state`` a prune would still
    change, in ``(due_at, id)`` order after the keyset ``after`` (so rows found not to need
    work are never scanned twice in one prune). A plain read: it blocks no writer."""
    d = deliveries.c
    q = (
        sa.select(d.id, d.due_at)
        .where(_needs_work(state, cutoff, whole))
        .order_by(d.due_at, d.id)
        .limit(limit)
    )
    if after is not None:
        q = q.where(sa.or_(d.due_at > after[0], sa.and_(d.due_at == after[0], d.id > after[1])))
    return [(r[0], r[1]) for r in conn.execute(q).all()]


@dataclass(frozen=True, slots=True)
class ChunkPruned:
    """What one :func:`prune_deliveries` did."""

    updated_at: list[datetime] = field(default_factory=list)  # of the rows still aged
    rows_deleted: int = 0
    content_cleared: int = 0
    log_rows_deleted: int = 0


def prune_deliveries(
    conn: Connection, state: str, cutoff: datetime, whole: bool, ids: Sequence[int]
) -> ChunkPruned:
    """Prune the records ``ids`` of ``state`` in the caller's write transaction. Each is
    checked again first: a row retried or re-planned since it was found is left alone.
    ``whole``: the rows and all their log rows are deleted; else their content becomes SQL
    NULL and their log rows older than ``cutoff`` are deleted. Idempotent."""
    d, lg = deliveries.c, delivery_log.c
    still = conn.execute(
        sa.select(d.id, d.updated_at).where(d.id.in_(list(ids)), _aged(state, cutoff))
    ).all()
    kept = [r[0] for r in still]
    seen = [r[1] for r in still]
    if kept and whole:
        logs = _rowcount(conn.execute(sa.delete(delivery_log).where(lg.delivery_id.in_(kept))))
        rows = _rowcount(conn.execute(sa.delete(deliveries).where(d.id.in_(kept))))
        return ChunkPruned(seen, rows_deleted=rows, log_rows_deleted=logs)
    if kept:
        logs = _rowcount(
            conn.execute(sa.delete(delivery_log).where(lg.delivery_id.in_(kept), lg.at < cutoff))
        )
        cleared = _rowcount(
            conn.execute(
                sa.update(deliveries)
                .where(d.id.in_(kept), _has_content())
                # SQL NULL, not JSON null, for the JSON column
                .values({c: sa.null() for c in CONTENT})
            )
        )
        return ChunkPruned(seen, content_cleared=cleared, log_rows_deleted=logs)
    return ChunkPruned(seen)


# --------------------------------------------------------------------------- subject errors


def count_subject_errors_before(conn: Connection, cutoff: datetime) -> int:
    """How many subject errors were recorded before ``cutoff``."""
    return int(
        conn.execute(sa.select(sa.func.count()).where(subject_errors.c.at < cutoff)).scalar_one()
    )


def subject_error_ids_before(
    conn: Connection, cutoff: datetime, *, after: int, limit: int
) -> list[int]:
    """Up to ``limit`` ids of subject errors recorded before ``cutoff``, above ``after``, in
    id order (ids grow with time, so old errors come first; there is no index on ``at``)."""
    e = subject_errors.c
    return list(
        conn.execute(
            sa.select(e.id).where(e.at < cutoff, e.id > after).order_by(e.id).limit(limit)
        ).scalars()
    )


def delete_subject_errors(conn: Connection, ids: Sequence[int]) -> int:
    """Delete these subject errors; returns how many were."""
    e = subject_errors.c
    return _rowcount(conn.execute(sa.delete(subject_errors).where(e.id.in_(list(ids)))))


# --------------------------------------------------------------------------- the prune lock


def try_prune_lock(conn: Connection) -> bool:
    """PostgreSQL only: take the session-level advisory lock that lets one process prune at
    a time, without waiting. True if this session now holds it. The caller commits (the
    lock outlives the transaction) and must :func:`release_prune_lock` on the same
    connection."""
    return bool(
        conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PRUNE_LOCK_KEY}).scalar()
    )


def release_prune_lock(conn: Connection) -> None:
    """PostgreSQL only: release the lock :func:`try_prune_lock` took on this connection."""
    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK_KEY})
