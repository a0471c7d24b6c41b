"""Waking dispatchers across processes: PostgreSQL ``NOTIFY``/``LISTEN`` on ``duly_planned``.

A transaction that made deliveries pending notifies (delivered when it commits); every
serving process listens on a connection of its own and wakes its dispatcher. SQLite has
no such channel: one process holds the database, and wakes its dispatcher in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

__all__ = ["CHANNEL", "listen_planned", "notify_planned"]

log = logging.getLogger(__name__)

CHANNEL = "duly_planned"


def notify_planned(conn: Connection, due: datetime | None) -> None:
    """Queue a ``duly_planned`` notification, sent when the caller's transaction commits
    (PostgreSQL only). Its payload is ``due`` in ISO form — the earliest due time planned,
    so a dispatcher asleep until before it may sleep on — or "" when not known."""
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
