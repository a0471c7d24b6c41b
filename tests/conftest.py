"""Fixtures shared by every test: migrated databases on both backends.

The ones to use:

``db_url`` / ``db_engine``
    Parametrized over ``sqlite`` and ``postgres``: a test that takes either runs once per
    backend (ids ``[sqlite]`` / ``[postgres]``) against a fresh database migrated to head.
    This is how the one store test suite runs on both backends.
``sqlite_url``
    A fresh migrated SQLite file in the test's ``tmp_path``.
``pg_db_url``
    A fresh migrated PostgreSQL database of its own, dropped after the test.
``pg_empty_db_url``
    A fresh PostgreSQL database with nothing in it (for migration tests).
``pg_url`` / ``pg_template``
    The server from ``$DULY_TEST_DATABASE_URL`` (used only to create and drop databases)
    and the template database the per-test databases are cloned from.

PostgreSQL tests are marked ``postgres`` (deselect with ``-m "not postgres"``). Without
``DULY_TEST_DATABASE_URL`` they skip, except under ``CI=true``, where they fail: CI must never
pass by silently skipping them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from duly.store.db import MIGRATIONS_DIR, make_engine, migrate

PG_URL_ENV = "DULY_TEST_DATABASE_URL"
PG_SKIP_REASON = (
    "PostgreSQL tests need DULY_TEST_DATABASE_URL, "
    "e.g. postgresql+psycopg://root@127.0.0.1:5432/test"
)

TEMPLATE_DB = "duly_test_template"
# Per-test databases are named duly_t_<unix time>_<random>: random so parallel runs never
# collide, timestamped so a later run can tell a crashed run's leftovers from live ones.
TEST_DB_PREFIX = "duly_t_"
# Older than this, a per-test database belongs to a run that died without cleaning up (a
# test times out after 300 s). Generous, so a test paused in a debugger keeps its database.
ORPHAN_AGE_SECONDS = 6 * 3600
# Serialises template (re)builds between concurrent pytest processes on one server.
TEMPLATE_LOCK_KEY = 0x6475_6C74  # "dult"

# Fixtures that need a PostgreSQL server; a test using any of them is marked `postgres`.
PG_FIXTURES = frozenset({"pg_url", "pg_template", "pg_db_url", "pg_empty_db_url"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server's URL from $DULY_TEST_DATABASE_URL (its database is only used to run
    CREATE/DROP DATABASE; tests get databases of their own)."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(
                f"{PG_URL_ENV} is not set, but CI=true: in CI the PostgreSQL tests must run, "
                f"never skip. Start a PostgreSQL and set {PG_URL_ENV}, "
                "e.g. postgresql+psycopg://root@127.0.0.1:5432/test",
                pytrace=False,
            )
        pytest.skip(PG_SKIP_REASON)
    return _database_url(url, make_url(url).database or "postgres")


@pytest.fixture(scope="session")
def pg_admin(pg_url: str) -> Iterator[Engine]:
    """Autocommit connections to the server's maintenance database, for CREATE/DROP
    DATABASE (which cannot run inside a transaction). No pool: nothing lingers."""
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_url: str, pg_admin: Engine) -> str:
    """The name of a database migrated to head that per-test databases are cloned from.

    Built once and then reused while the migrations are unchanged: the database's comment
    holds a hash of the migrations folder, written only after a successful build. So a build
    that crashed halfway, or a template from older migrations, is dropped and rebuilt; and
    concurrent pytest processes (xdist workers, two terminals) take turns on an advisory lock
    and then share one template instead of dropping it under each other's feet.
    """
    fingerprint = _migrations_fingerprint()
    # one template per set of migrations: checkouts at different revisions (a developer's
    # tree and a CI clone on one machine) never rebuild each other's template mid-run
    template = f"{TEMPLATE_DB}_{fingerprint[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": TEMPLATE_LOCK_KEY})
        try:
            _drop_orphaned_test_databases(conn)
            built_from = conn.execute(
                sa.text(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = :name"
                ),
                {"name": template},
            ).scalar()
            if built_from != fingerprint:
                _drop_database(conn, template)
                conn.exec_driver_sql(f'CREATE DATABASE "{template}" TEMPLATE template0')
                migrate(_database_url(pg_url, template))  # disposes its engine
                # CREATE DATABASE … TEMPLATE fails while anyone is connected to the template;
                # refusing connections keeps a stray one from breaking every clone.
                conn.exec_driver_sql(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS false')
                conn.exec_driver_sql(f"COMMENT ON DATABASE \"{template}\" IS '{fingerprint}'")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": TEMPLATE_LOCK_KEY})
    return template


@pytest.fixture
def pg_db_url(pg_url: str, pg_admin: Engine, pg_template: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated to head; dropped afterwards."""
    with _temporary_database(pg_admin, template=pg_template) as name:
        yield _database_url(pg_url, name)


@pytest.fixture(scope="session")
def pg_database(pg_url: str, pg_admin: Engine, pg_template: str) -> Any:
    """For fixtures of any scope: ``with pg_database() as url:`` a PostgreSQL database of
    its own, migrated to head, dropped on exit."""

    @contextmanager
    def make() -> Iterator[str]:
        with _temporary_database(pg_admin, template=pg_template) as name:
            yield _database_url(pg_url, name)

    return make


@pytest.fixture
def pg_empty_db_url(pg_url: str, pg_admin: Engine) -> Iterator[str]:
    """A PostgreSQL database of this test's own with no tables at all; dropped afterwards."""
    with _temporary_database(pg_admin, template="template0") as name:
        yield _database_url(pg_url, name)


def _database_url(server_url: str, database: str) -> str:
    """The server URL pointing at another database (with psycopg 3 as the driver)."""
    url = make_url(server_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.set(database=database).render_as_string(hide_password=False)


def _migrations_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS_DIR.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@contextmanager
def _temporary_database(admin: Engine, *, template: str) -> Iterator[str]:
    """CREATE DATABASE duly_t_… from a template; DROP it on exit."""
    name = f"{TEST_DB_PREFIX}{int(time.time())}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield name
    finally:
        with admin.connect() as conn:
            _drop_database(conn, name)


def _drop_database(conn: Connection, name: str) -> None:
    """DROP DATABASE IF EXISTS, first ending any sessions still connected to it (an engine
    a test forgot to dispose, a worker thread, a killed run's backends)."""
    for attempt in range(5):
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        try:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            return
        except sa.exc.OperationalError as exc:
            # 55006 object_in_use: a session connected between the terminate and the drop.
            if getattr(exc.orig, "sqlstate", None) != "55006" or attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))


def _drop_orphaned_test_databases(conn: Connection) -> None:
    names = conn.execute(
        sa.text("SELECT datname FROM pg_database WHERE datname LIKE :pattern"),
        {"pattern": TEST_DB_PREFIX.replace("_", r"\_") + "%"},
    ).scalars()
    cutoff = time.time() - ORPHAN_AGE_SECONDS
    for name in list(names):
        created = name.removeprefix(TEST_DB_PREFIX).split("_", 1)[0]
        if created.isdigit() and int(created) < cutoff:
            _drop_database(conn, name)


# --- SQLite --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; sqlite_url copies it per test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
    finally:
        # Closing the last connection checkpoints the WAL into the main file.
        engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite file of this test's own, migrated to head."""
    path = tmp_path / "duly.db"
    shutil.copyfile(sqlite_template, path)
    # Normally checkpointed away on close; if not, the WAL holds committed pages too.
    wal = sqlite_template.with_name(sqlite_template.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, path.with_name(path.name + "-wal"))
    return f"sqlite:///{path}"


# --- both ----------------------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database migrated to head, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_db_url"))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """make_engine(db_url), disposed after the test."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()
