"""The store of a ``duly simulate`` run: a private, in-memory SQLite database.

A simulation runs the production engine and dispatcher, so it needs the real schema; it
gets its own database, which lives as long as the returned engine and is never shared.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from duly.store.tables import metadata

__all__ = ["in_memory_database"]


def in_memory_database() -> Engine:
    """A new in-memory SQLite database with every table created (no migrations: the schema
    is built from the table definitions). One connection serves every thread (a static
    pool, same-thread check off), so the dispatcher's threads see the same data; the
    database is gone once the engine is disposed. Each call returns a fresh, empty one."""
    db = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    metadata.create_all(db)
    return db
