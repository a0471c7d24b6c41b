"""Database connections and schema migrations.

One engine factory for both backends, so every caller (server, worker, CLI, tests, simulate)
talks to the database the same way:

- SQLite (the embedded default): WAL, a 30 s busy timeout, ``synchronous=NORMAL`` and foreign
  keys on every connection. SQLAlchemy, not the ``sqlite3`` module, emits ``BEGIN``, so
  transactions (and DDL) behave as documented and a writer can ask for ``BEGIN IMMEDIATE``
  through :func:`write_transaction`.
- PostgreSQL: psycopg 3, sessions in UTC, a pool of 10 (+5) used most-recent-first, and a
  pre-ping on checkout (workers outlive database restarts) unless the connection was checked
  in under 2 s ago and its socket is quiet (see ``PING_AFTER_IDLE_S``).

Migrations are Alembic scripts shipped inside the package (``duly/store/migrations``);
:func:`migrate` runs them without an ``alembic.ini`` in the working directory.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

# Connection, Engine and SQLAlchemyError are re-exported: the handles callers outside the
# store pass around (without importing SQLAlchemy) and the one database failure they catch.
__all__ = [
    "DEFAULT_URL",
    "Connection",
    "Engine",
    "SQLAlchemyError",
    "MIGRATIONS_DIR",
    "PostgresDriverMissing",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_postgres",
    "make_engine",
    "migrate",
    "pending_writes",
    "redact_url",
    "write_transaction",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///duly.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# SQLite pragmas applied to every new DBAPI connection.
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option read by the SQLite "begin" hook: which BEGIN to emit. Set by
# write_transaction(); anything else gets a plain (deferred) BEGIN.
_SQLITE_BEGIN_OPTION = "duly_sqlite_begin"
_SQLITE_BEGIN_MODES = {"DEFERRED", "IMMEDIATE", "EXCLUSIVE"}


POSTGRES_DRIVER_MISSING = (
    "a PostgreSQL database needs the psycopg driver, which is not installed: "
    "pip install 'duly[postgres]'"
)


class PostgresDriverMissing(ValueError):
    """A PostgreSQL URL was given but psycopg (the ``postgres`` extra) is not installed."""


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for a database URL (``sqlite:///…`` or ``postgresql://…``).

    A bare ``postgresql://`` (or ``postgres://``) URL is given the psycopg 3 driver.
    ``sqlite:///:memory:`` gives one shared connection (StaticPool) usable from any thread,
    so a simulation's components all see the same in-memory database; being one connection,
    it takes one transaction at a time.

    SQLite engines must not be switched to ``isolation_level="AUTOCOMMIT"``: SQLAlchemy
    documents that as incompatible with emitting BEGIN from the "begin" event, as done here.
    """
    parsed = _normalise_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(parsed, echo=echo)
    if backend == "postgresql":
        return _make_postgres_engine(parsed, echo=echo)
    raise ValueError(
        f"unsupported database URL {redact_url(url)!r}: "
        "use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def _normalise_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(
            f"not a database URL: {redact_url(url)!r} "
            "(expected sqlite:///PATH or postgresql://USER@HOST/DB)"
        ) from exc
    # Heroku-style "postgres://" and a driverless "postgresql://" both mean psycopg 3 here:
    # SQLAlchemy's default PostgreSQL driver is psycopg2, which duly does not install.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory")


def _make_sqlite_engine(url: URL, *, echo: bool) -> Engine:
    kwargs: dict[str, Any] = {"echo": echo}
    if _is_memory_sqlite(url):
        # Every new connection to ":memory:" is a new empty database, so keep exactly one.
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = sa.create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    # Stop the sqlite3 module from issuing BEGIN itself (it only does so before DML, and never
    # before DDL or SELECT): _sqlite_on_begin emits it, so SQLAlchemy's transaction is
    # SQLite's transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers never block the writer and the writer never blocks readers. A no-op
        # ("memory") for in-memory databases.
        _use_wal(cursor)
        # NORMAL is durable against application crashes in WAL mode; only a power loss can
        # drop the last commits, and it cannot corrupt the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
        # SQLite leaves foreign keys off by default, per connection.
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays so: later connections find it done). Switching
    needs the file to itself and SQLite answers "database is locked" at once, without its
    busy handler, when another connection is opening a new file at the same moment (three
    threads migrating one new database saw it): try again for up to the busy timeout."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
    if mode not in _SQLITE_BEGIN_MODES:
        raise ValueError(f"{_SQLITE_BEGIN_OPTION} must be one of {sorted(_SQLITE_BEGIN_MODES)}")
    conn.exec_driver_sql(f"BEGIN {mode}")


# Connections a process keeps open / may open beyond them (SQLAlchemy's defaults are 5 and
# 10). At most 15 either way, but an overflow connection is closed when it is checked in,
# so 8 requests in flight on one process opened and closed a backend (a fork and a login on
# the server) for every few upserts. Most recently used first (LIFO): the connections in
# use stay few and warm, so the pre-ping below is rarely needed.
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 5


def _make_postgres_engine(url: URL, *, echo: bool) -> Engine:
    connect_args: dict[str, Any] = {}
    if "application_name" not in url.query:
        # Shows up in pg_stat_activity, which is where one looks for a stuck worker.
        connect_args["application_name"] = "duly"
    if "options" not in url.query:
        # Instants are stored as naive UTC (tables.UTCDateTime). A UTC session makes any
        # now()/CURRENT_TIMESTAMP in SQL agree with them, whatever the server's TimeZone.
        connect_args["options"] = "-c TimeZone=UTC"
    try:
        connect_args["cursor_factory"] = _description_cached_cursor()
        engine = sa.create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            pool_size=POOL_SIZE,
            max_overflow=POOL_MAX_OVERFLOW,
            pool_use_lifo=True,
            connect_args=connect_args,
        )
    except ModuleNotFoundError as exc:
        if url.get_driver_name() != "psycopg" or not (exc.name or "").startswith("psycopg"):
            raise
        raise PostgresDriverMissing(POSTGRES_DRIVER_MISSING) from None
    _ping_only_when_idle(engine)
    event.listen(engine, "checkin", _pg_on_checkin)
    return engine


# --- PostgreSQL connections: the pre-ping and the cursor ---------------------------------
#
# The pool pings a connection on every checkout (a ``;`` round trip, one of a single
# upsert's ten, and ~3 % of its CPU) so that a process outlives a database restart. A
# connection checked in less than PING_AFTER_IDLE_S ago whose socket has nothing to read is
# not pinged: a backend that ended (a restart, pg_terminate_backend, the server's
# idle_session_timeout) sends its FATAL message and closes the socket, which makes the
# socket readable at once; a readable or older connection is pinged as before (SQLAlchemy's
# own pre-ping: the connection, and the pool with it, invalidated when the ping fails).
PING_AFTER_IDLE_S = 2.0
_IDLE_SINCE = "_duly_idle_since"  # attribute set on the psycopg connection at checkin


def _ping_only_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    def do_ping(dbapi_connection: Any) -> bool:
        since = getattr(dbapi_connection, _IDLE_SINCE, None)
        if (
            since is not None
            and time.monotonic() - since < PING_AFTER_IDLE_S
            and _socket_quiet(dbapi_connection)
        ):
            return True
        return _full_ping(dialect, dbapi_connection)

    dialect.do_ping = do_ping  # type: ignore[method-assign]


def _full_ping(dialect: Any, dbapi_connection: Any) -> bool:
    """SQLAlchemy's ping: a round trip (raises, or returns False, on a dead connection)."""
    return bool(type(dialect).do_ping(dialect, dbapi_connection))


def _socket_quiet(dbapi_connection: Any) -> bool:
    """True when the connection looks alive without asking the server: libpq says OK, no
    transaction is open, and the socket has nothing to read (no FATAL message, no EOF)."""
    from psycopg import pq

    try:
        pgconn = dbapi_connection.pgconn
        if (
            pgconn.status != pq.ConnStatus.OK
            or pgconn.transaction_status != pq.TransactionStatus.IDLE
        ):
            return False
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
    except Exception:  # closed, no socket: let the real ping decide
        return False


def _pg_on_checkin(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    if dbapi_connection is not None:  # None: invalidated
        setattr(dbapi_connection, _IDLE_SINCE, time.monotonic())


_cursor_class: Any = None


def _description_cached_cursor() -> Any:
    """A psycopg cursor whose ``description`` reuses the Column objects of an earlier result
    with the same fields. psycopg builds a new Column per field for every result (a type
    lookup each), and SQLAlchemy reads the description of every statement: ~8 % of a single
    upsert's CPU. A Column holds only its field's name, type oid, modifier and size, so one
    made for an identical field is the same value."""
    global _cursor_class
    if _cursor_class is not None:
        return _cursor_class
    import psycopg

    cache: dict[tuple[Any, ...], list[Any]] = {}

    class Cursor(psycopg.Cursor):  # type: ignore[type-arg]
        @property
        def description(self) -> list[Any] | None:
            res = self.pgresult
            if res is None or not res.nfields:
                return super().description
            key = (self._encoding, *(
                (res.fname(i), res.ftype(i), res.fmod(i), res.fsize(i))
                for i in range(res.nfields)
            ))  # fmt: skip
            cols = cache.get(key)
            if cols is None:
                cols = super().description
                if cols is None:
                    return None
                if len(cache) < 10_000:  # bounded: statements are few, ad-hoc SQL rare
                    cache[key] = cols
            return list(cols)

    _cursor_class = Cursor
    return Cursor


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: commits on success, rolls back on an exception.

    On SQLite it starts with ``BEGIN IMMEDIATE``, taking the database's write lock up front
    (waiting up to the busy timeout for it). A deferred transaction that reads first and
    writes later can instead fail at once with "database is locked", because SQLite cannot
    wait for the lock without breaking the snapshot the transaction has already read. On
    PostgreSQL it is an ordinary transaction; row locks are taken by the statements.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn
            taken = list(pending_writes.get() or ())
            for write in taken:
                write(conn)
        if taken:  # committed with this transaction: done
            pending = pending_writes.get() or []
            pending[:] = [w for w in pending if w not in taken]


# Writes attached to the next write transaction this context commits (an audit row:
# duly.store.audit.recorded): run on its connection just before it commits, so they
# commit, or roll back, with the action they describe.
pending_writes: ContextVar[list[Callable[[Connection], None]] | None] = ContextVar(
    "duly_pending_writes", default=None
)


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


_PASSWORD_IN_QUERY = re.compile(r"(?i)([?&]password=)[^&#]*")
_PASSWORD_IN_NETLOC = re.compile(r"(://[^:/?#@]*:)[^@/?#]*(@)")


def redact_url(url: str | URL) -> str:
    """The URL with any password replaced by ``***``, for logs and error messages."""
    if isinstance(url, URL):
        text = url.render_as_string(hide_password=True)
    else:
        try:
            text = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
            # Not parseable as a database URL: still never print what looks like a password.
            text = _PASSWORD_IN_NETLOC.sub(r"\1***\2", url)
    # psycopg also accepts ?password=… in the query string.
    return _PASSWORD_IN_QUERY.sub(r"\1***", text)


# --- migrations --------------------------------------------------------------------------


# Alembic keeps the running migration's context in module globals, so two migrations in
# one process at once would trample each other. Across processes the database serialises
# them (see env.py).
_alembic_lock = threading.Lock()


def _alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        # env.py runs on this connection instead of creating an engine of its own.
        config.attributes["connection"] = connection
    return config


@contextmanager
def _migration_connection(url_or_engine: str | Engine) -> Iterator[Connection]:
    owns_engine = isinstance(url_or_engine, str)
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        if owns_engine:
            engine.dispose()


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Upgrade the database schema to ``revision`` (default: the latest).

    All pending migrations run in one transaction on both backends, so a failure leaves the
    schema as it was. Safe to call from several processes at once: they take turns (an
    advisory lock on PostgreSQL, the write lock on SQLite) and the later ones find nothing
    to do.
    """
    with _migration_connection(url_or_engine) as conn:
        log.info("migrating %s to %s", redact_url(conn.engine.url), revision)
        with _alembic_lock:
            command.upgrade(_alembic_config(conn), revision)


def downgrade(url_or_engine: str | Engine, revision: str) -> None:
    """Downgrade the database schema to ``revision`` (``"base"``: no tables at all)."""
    with _migration_connection(url_or_engine) as conn:
        log.info("downgrading %s to %s", redact_url(conn.engine.url), revision)
        with _alembic_lock:
            command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The latest revision shipped with this version of duly."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "no migrations found in " + str(MIGRATIONS_DIR)
    return head
