"""Waking dispatchers across processes: PostgreSQL ``NOTIFY``/``LISTEN`` on ``duly_planned``.

A transaction that made deliveries pending notifies (delivered when it commits); every
serving process listens on a connection of its own and wakes its dispatcher. SQLite has
no such channel: one process holds the database, and wakes its dispatcher in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

__all__ = ["CHANNEL", "NOTIFY_HORIZON", "listen_planned", "notify_planned"]

log = logging.getLogger(__name__)

CHANNEL = "duly_planned"


# A dispatcher never sleeps longer than its ``max_sleep`` (30 s: Dispatcher.run_forever)
# before it reads the next due time again, and a notification for a due time after its
# wake-up is dropped on arrival (Dispatcher.wake_for). So work due more than this far ahead
# needs no notification: whichever dispatcher sleeps now has read the database again, this
# transaction's rows included, well before then. Ten times max_sleep leaves the transaction
# minutes to commit. (tests/integration/test_pg_notify.py keeps the two in step.)
NOTIFY_HORIZON = timedelta(minutes=5)


def notify_planned(conn: Connection, due: datetime | None, now: datetime | None = None) -> None:
    """Queue a ``duly_planned`` notification, sent when the caller's transaction commits
    (PostgreSQL only). Its payload is ``due`` in ISO form — the earliest due time planned,
    so a dispatcher asleep until before it may sleep on — or "" when not known.

    With ``now`` (the engine's clock) and ``due`` more than :data:`NOTIFY_HORIZON` after it,
    nothing is sent: no dispatcher is asleep that long (a statement, a round trip and the
    wake-ups of every listening process saved on each upsert planned ahead)."""
    if due is not None and now is not None and due - now > NOTIFY_HORIZON:
        return
    payload = "" if due is None else due.isoformat()
    conn.execute(text("SELECT pg_notify('duly_planned', :p)"), {"p": payload})


def listen_planned(db: Engine, on_notify: Callable[[str], None], stop: threading.Event) -> None:
    """LISTEN duly_planned on a dedicated autocommit connection (not from ``db``'s pool)
    until ``stop`` is set, calling ``on_notify`` with each payload. A lost connection is
    logged and opened again a second later; ``stop`` is looked at every 5 s at most."""
    import psycopg

    url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("LISTEN duly_planned")
                for n in conn.notifies(timeout=5.0):
                    on_notify(n.payload)
                    if stop.is_set():
                        return
        except Exception:
            log.warning("LISTEN connection lost; reconnecting", exc_info=True)
            stop.wait(1.0)
