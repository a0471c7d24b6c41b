"""The queries of running a rule by hand (``duly run``, duly.engine.manual), and the dry run's
throwaway view of the database (:func:`sandbox`).

Each query takes the caller's open connection (the caller decides the transaction) and
returns plain data: delivery ids, subject refs, :class:`DeliveryRow` s, dicts of columns.
Lists of deliveries come in the dispatcher's order (priority descending, then due time,
then id) unless said otherwise.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from duly.store.db import is_postgres, make_engine
from duly.store.rows import claimed_rows
from duly.store.store import DeliveryRow
from duly.store.tables import deliveries

__all__ = [
    "claim_pending_deliveries",
    "deliveries_by_id",
    "delivery_ids_of_occurrence",
    "due_delivery_ids",
    "follow_up_delivery_ids",
    "highest_delivery_id",
    "sandbox",
    "subjects_set_by",
]


def highest_delivery_id(conn: Connection) -> int:
    """The largest delivery id there is (0 when there is none). Ids only grow, so every
    delivery planned after this call has a larger id: a mark for
    :func:`follow_up_delivery_ids`."""
    return conn.execute(sa.select(sa.func.max(deliveries.c.id))).scalar() or 0


def due_delivery_ids(conn: Connection, rule: str, subject: str | None, now: datetime) -> list[int]:
    """The ids of ``rule``'s pending deliveries due by ``now`` (only those about
    ``subject`` when given), in the dispatcher's order. Reads only; locks nothing."""
    d = deliveries.c
    q = sa.select(d.id).where(d.rule == rule, d.state == "pending", d.due_at <= now)
    if subject is not None:
        q = q.where(d.subject == subject)
    q = q.order_by(d.priority.desc(), d.due_at, d.id)
    return list(conn.execute(q).scalars())


def follow_up_delivery_ids(
    conn: Connection, subjects: Sequence[str], above: int, now: datetime
) -> list[int]:
    """The ids of deliveries planned since the mark ``above`` (see
    :func:`highest_delivery_id`) about one of ``subjects``, pending and due by ``now``, in
    the dispatcher's order. Reads only; locks nothing."""
    d = deliveries.c
    q = (
        sa.select(d.id)
        .where(
            d.id > above,
            d.subject.in_(list(subjects)),
            d.state == "pending",
            d.due_at <= now,
        )
        .order_by(d.priority.desc(), d.due_at, d.id)
    )
    return list(conn.execute(q).scalars())


def subjects_set_by(conn: Connection, ids: Sequence[int]) -> list[str]:
    """The distinct subjects (``KIND/KEY``) of the deliveries among ``ids`` whose outcome is
    ``set`` (their ``set`` actions changed those subjects), in no particular order; [] for
    no ids."""
    if not ids:
        return []
    d = deliveries.c
    q = sa.select(d.subject).where(d.id.in_(list(ids)), d.state == "set").distinct()
    return [s for (s,) in conn.execute(q) if s]


def claim_pending_deliveries(
    conn: Connection, ids: Sequence[int], owner: str, now: datetime, lease: timedelta
) -> list[DeliveryRow]:
    """Claim for ``owner`` those of ``ids`` that are still pending, as ``Store.claim_due``
    claims due rows: state ``sending``, leased until ``now + lease``. On PostgreSQL rows
    another transaction has locked are skipped (``FOR UPDATE SKIP LOCKED``), so rows another
    dispatcher is taking are left to it. Returns the claimed rows in the dispatcher's order;
    call it in a write transaction."""
    d = deliveries.c
    q = sa.select(d.id).where(d.id.in_(list(ids)), d.state == "pending")
    if is_postgres(conn):
        q = q.with_for_update(skip_locked=True)
    free = list(conn.execute(q).scalars())
    if not free:
        return []
    res = conn.execute(
        sa.update(deliveries)
        .where(d.id.in_(free))
        .values(state="sending", lease_owner=owner, lease_until=now + lease, updated_at=now)
        .returning(
            d.id,
            d.rule,
            d.step,
            d.occurrence,
            d.subject,
            d.recipient,
            d.channel,
            d.category,
            d.priority,
            d.planned_at,
            d.due_at,
            d.deadline_at,
            d.attempts,
            d.changes,
            d.message_id,
        )
    ).mappings()
    return claimed_rows(res, now, lease)


def deliveries_by_id(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Every column of the deliveries among ``ids`` that exist, as a dict per row, keyed by
    id (ids with no row are left out)."""
    q = sa.select(deliveries).where(deliveries.c.id.in_(list(ids)))
    return {r["id"]: dict(r) for r in conn.execute(q).mappings()}


def delivery_ids_of_occurrence(conn: Connection, rule: str, occurrence: Any) -> list[int]:
    """The ids of every delivery of ``rule``'s ``occurrence`` (any state), by id."""
    q = (
        sa.select(deliveries.c.id)
        .where(deliveries.c.rule == rule, deliveries.c.occurrence == json.dumps(occurrence))
        .order_by(deliveries.c.id)
    )
    return list(conn.execute(q).scalars())


# --------------------------------------------------------------------------- dry runs


@contextmanager
def sandbox(db: sa.Engine) -> Iterator[sa.Engine]:
    """A throwaway view of ``db``: an engine whose writes are never seen by anyone and are
    gone when the block ends. On SQLite a copy in memory (an ``sqlite3`` backup: memory the
    size of the database file); on PostgreSQL one transaction on one connection, where each
    commit only releases a savepoint and the whole is rolled back at the end (the row locks
    it takes are held until then). One connection: use it from one thread."""
    if db.dialect.name == "sqlite":
        with _sqlite_copy(db) as box:
            yield box
    elif db.dialect.name == "postgresql":
        with _postgres_rollback(db) as box:
            yield box
    else:  # pragma: no cover - make_engine refuses other databases
        raise ValueError(f"no dry run on {db.dialect.name}")


@contextmanager
def _sqlite_copy(db: sa.Engine) -> Iterator[sa.Engine]:
    box = make_engine("sqlite://")  # in memory: one connection, the pragmas of every engine
    try:
        with db.connect() as src, box.connect() as dst:
            # one step (pages=-1): a consistent snapshot, read under WAL without blocking
            # writers
            src.connection.dbapi_connection.backup(dst.connection.dbapi_connection)  # type: ignore[union-attr]
        yield box
    finally:
        box.dispose()


@contextmanager
def _postgres_rollback(db: sa.Engine) -> Iterator[sa.Engine]:
    import psycopg

    class SavepointConnection(psycopg.Connection[Any]):
        """One transaction for the whole dry run: each transaction SQLAlchemy begins is a
        savepoint in it, each commit releases it, each rollback rolls back to it."""

        depth = 0

        def savepoint(self) -> None:
            self.depth += 1
            self.execute(f"SAVEPOINT duly_dry_run_{self.depth}")

        def commit(self) -> None:
            if self.depth:
                self.execute(f"RELEASE SAVEPOINT duly_dry_run_{self.depth}")
                self.depth -= 1

        def rollback(self) -> None:
            if self.depth:
                self.execute(f"ROLLBACK TO SAVEPOINT duly_dry_run_{self.depth}")
                self.execute(f"RELEASE SAVEPOINT duly_dry_run_{self.depth}")
                self.depth -= 1

        def discard(self) -> None:
            """End the one transaction: everything the dry run wrote is gone."""
            if not self.closed:
                super().rollback()
                self.close()

    url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    raw = SavepointConnection.connect(
        url, options="-c TimeZone=UTC", application_name=f"duly-dry-run@{socket.gethostname()}"
    )
    box = sa.create_engine(
        db.url,
        creator=lambda: raw,
        poolclass=sa.pool.StaticPool,
        pool_reset_on_return=None,  # the pool's own rollback would end the one transaction
    )
    event.listen(box, "begin", lambda conn: conn.connection.dbapi_connection.savepoint())
    try:
        yield box
    finally:
        raw.discard()
        box.dispose()
