"""Alembic environment for duly.

Run through :func:`duly.store.db.migrate` (which hands over a connection in
``config.attributes["connection"]``), or with the Alembic CLI for writing new revisions::

    alembic -c src/duly/store/migrations/alembic.ini -x url=sqlite:///dev.db upgrade head
    alembic -c src/duly/store/migrations/alembic.ini -x url=sqlite:///dev.db \\
        revision --autogenerate -m "what changed"

Without ``-x url=…`` the CLI uses ``$DULY_DATABASE_URL``, then ``sqlite:///duly.db``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from logging.config import fileConfig

from alembic import context
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from duly.store import db
from duly.store.tables import metadata

config = context.config
target_metadata = metadata

# Arbitrary constant shared by every duly process: the PostgreSQL advisory lock that makes
# concurrent migrate() calls take turns instead of racing to CREATE the same tables.
MIGRATION_LOCK_KEY = 0x6475_6C79  # "duly"


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Foreign keys off while migrating SQLite, checked before commit.

    Batch mode alters a SQLite table by copying it and dropping the original; with foreign
    keys on, dropping ``deliveries`` would cascade-delete every ``delivery_log`` row. This is
    what the SQLite manual prescribes for table rebuilds. The pragma is a no-op inside a
    transaction, so it goes straight to the driver before the migration transaction begins.
    """
    assert not connection.in_transaction(), "migrations need a connection outside a transaction"
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        raw.execute("PRAGMA foreign_keys = ON")
        if raw.execute("PRAGMA foreign_keys").fetchone() != (1,):
            # Never hand a connection without foreign keys back to the pool.
            connection.invalidate()


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"migration left rows violating foreign keys: {problems[:10]}")


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite and not event.contains(connection.engine, "begin", db._sqlite_on_begin):
        # The transactional DDL, write lock and foreign-key handling below rely on the
        # BEGIN that duly's engine emits; a plain engine's sqlite3 would autocommit DDL.
        raise RuntimeError("migrate SQLite through an engine from duly.store.db.make_engine()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        compare_type=True,
        # duly's SQLite engine emits BEGIN itself (see db.make_engine), which makes SQLite's
        # DDL transactional as well: a failed migration rolls back completely.
        transactional_ddl=True if sqlite else None,
    )
    if sqlite:
        # Take the write lock when the transaction begins, so a second migrator waits (busy
        # timeout) and then finds the work done, rather than failing on "database is locked".
        connection.execution_options(duly_sqlite_begin="IMMEDIATE")
        with _sqlite_foreign_keys_off(connection), context.begin_transaction():
            context.run_migrations()
            _check_sqlite_foreign_keys(connection)
    else:
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Released at commit; the version table is read only after it is held.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            context.run_migrations()


def _cli_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("DULY_DATABASE_URL")
        or db.DEFAULT_URL
    )


if context.is_offline_mode():
    # SQL script output (alembic upgrade --sql): no connection, no locks.
    context.configure(
        url=_cli_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=_cli_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    # Alembic CLI. Only here configure logging from the ini: called from duly, the
    # application owns logging.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = db.make_engine(_cli_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()
