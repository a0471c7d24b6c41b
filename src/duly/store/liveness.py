"""Who is alive: the database answers, and each serving process beats in ``workers``.

A dispatcher's process writes its row in ``workers`` every heartbeat (the dashboard of any
process lists the others), drops it when it stops, and forgets processes silent for long.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, text, update
from sqlalchemy.engine import Connection

from duly.store.tables import workers

__all__ = ["forget_worker", "ping", "record_heartbeat"]


def ping(conn: Connection) -> None:
    """Run ``SELECT 1``: returns when the database answers, raises when it does not."""
    conn.execute(text("SELECT 1"))


def record_heartbeat(
    conn: Connection,
    owner: str,
    host: str,
    started: datetime,
    now: datetime,
    forget_before: datetime,
) -> None:
    """Write ``owner``'s row in ``workers`` (its heartbeat is ``now``; created with ``host``,
    cut to 200 characters, and ``started`` when it has none), and delete the rows of
    processes whose last heartbeat is older than ``forget_before``. Idempotent."""
    n = conn.execute(update(workers).where(workers.c.id == owner).values(heartbeat_at=now)).rowcount
    if not n:
        conn.execute(
            insert(workers).values(
                id=owner,
                host=host[:200],
                started_at=started,
                heartbeat_at=now,
            )
        )
    conn.execute(delete(workers).where(workers.c.heartbeat_at < forget_before))


def forget_worker(conn: Connection, owner: str) -> None:
    """Delete ``owner``'s row in ``workers`` (a process that stops); none is no error."""
    conn.execute(delete(workers).where(workers.c.id == owner))
