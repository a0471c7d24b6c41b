"""The query behind acknowledge (and preference) links: the generated secret that signs
them, kept in the ``settings`` table so every process signs with the same one
(:func:`duly.delivery.ack.load_secret` reads ``DULY_SECRET_KEY`` first and comes here without it).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from duly.store.db import write_transaction
from duly.store.tables import settings

__all__ = ["SECRET_SETTING", "kept_ack_secret"]

# The key of the generated secret in the settings table.
SECRET_SETTING = "ack_secret"


def _read(db: Engine) -> str | None:
    c = settings.c
    with db.connect() as conn:
        got = conn.execute(sa.select(c.value).where(c.key == SECRET_SETTING)).scalar()
    return str(got) if got else None


def kept_ack_secret(db: Engine, candidate: str, now: datetime) -> str | None:
    """The secret kept in the database; when there is none yet, ``candidate`` is stored
    (created at ``now``) and returned. Once for every process: the first to store one wins
    (the primary key decides), and a process that loses the race returns the winner's.
    None when the database has no ``settings`` table (it was not migrated).

    Runs its own short transactions (a read, then when needed a write transaction and a
    second read), so it takes the engine rather than a connection."""
    try:
        got = _read(db)
        if got:
            return got
        try:
            with write_transaction(db) as conn:
                conn.execute(
                    sa.insert(settings).values(key=SECRET_SETTING, value=candidate, created_at=now)
                )
        except sa.exc.IntegrityError:
            pass  # another process stored one first: use it
        return _read(db)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        return None  # no settings table yet: the database was not migrated
