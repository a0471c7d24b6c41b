"""Fixed SQL run straight on the DB-API cursor of a SQLAlchemy connection's transaction.

The single upsert runs a handful of small statements per request, and SQLAlchemy's
per-statement work (execution context, result set-up, per-column processing) costs several
times what SQLite spends running one; ``exec_driver_sql`` still pays most of it. The
statements here are plain SQL with the driver's placeholders (``?`` on SQLite, ``%s`` on
PostgreSQL) whose values the caller converts as the table's types would. They run in the
caller's transaction; a driver error is raised as SQLAlchemy raises it (``sqlalchemy.exc``
classes: ``is_duplicate`` and every handler see the same), a lost PostgreSQL connection is
invalidated as SQLAlchemy would, and the engine's ``before_cursor_execute`` listeners still
see each statement (the benches count them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

__all__ = ["fetch", "placeholders"]


def placeholders(postgres: bool, n: int) -> str:
    """``?, ?, …`` (SQLite) or ``%s, %s, …`` (PostgreSQL), ``n`` of them."""
    return ", ".join(["%s" if postgres else "?"] * n)


def fetch(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` with positional ``params`` in ``conn``'s transaction; its rows (none for
    a statement without a result). Outside a transaction it goes through SQLAlchemy,
    which begins one as for any statement."""
    if not conn.in_transaction():
        res = conn.exec_driver_sql(sql, tuple(params))
        return [tuple(r) for r in res] if res.returns_rows else []
    dbapi = conn.connection
    cur = dbapi.cursor()
    try:
        listeners = conn.dispatch.before_cursor_execute
        if listeners:
            for fn in listeners:
                fn(conn, cur, sql, params, None, False)
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []
    except conn.dialect.loaded_dbapi.Error as e:
        dialect = conn.dialect
        if dialect.is_disconnect(e, dbapi, cur):  # type: ignore[arg-type]
            conn.invalidate(e)
        raise sa_exc.DBAPIError.instance(
            sql, params, e, dialect.loaded_dbapi.Error, dialect=dialect, ismulti=False
        ) from e
    finally:
        cur.close()
