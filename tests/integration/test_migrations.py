"""The migrations produce exactly the declared schema, on both backends, and run both ways."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from duly.store import tables
from duly.store.db import (
    MIGRATIONS_DIR,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    migrate,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that has never been migrated (a SQLite file that does not exist yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("pg_empty_db_url"))


@pytest.fixture
def empty_engine(empty_url: str) -> Iterator[Engine]:
    engine = make_engine(empty_url)
    yield engine
    engine.dispose()


def schema_diff(engine: Engine, metadata: sa.MetaData = tables.metadata) -> list[Any]:
    """What Alembic autogenerate would change to turn the database into `metadata`."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_migrated_schema_equals_declared_tables(empty_engine: Engine) -> None:
    migrate(empty_engine)

    assert schema_diff(empty_engine) == []
    assert table_names(empty_engine) == set(tables.metadata.tables) | {"alembic_version"}


def test_schema_comparison_notices_drift(empty_engine: Engine) -> None:
    # Guards the test above against passing vacuously: a changed type, a missing index and
    # an extra column are all reported.
    migrate(empty_engine)
    drifted = sa.MetaData(naming_convention=tables.NAMING)
    for table in tables.metadata.tables.values():
        table.to_metadata(drifted)
    deliveries = drifted.tables["deliveries"]
    deliveries.c.rule.type = sa.String(100)
    deliveries.indexes.discard(
        next(i for i in deliveries.indexes if i.name == "ix_deliveries_subject")
    )
    deliveries.append_column(sa.Column("extra", sa.Integer))

    kinds = {_diff_kind(d) for d in schema_diff(empty_engine, drifted)}

    assert kinds == {"modify_type", "remove_index", "add_column"}


def _diff_kind(diff: Any) -> str:
    # compare_metadata gives ("add_column", …) tuples, and lists of them for column changes.
    return str(diff[0][0] if isinstance(diff, list) else diff[0])


def test_upgrade_downgrade_upgrade(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None

    migrate(empty_engine)
    assert current_revision(empty_engine) == head_revision()

    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    assert table_names(empty_engine) == {"alembic_version"}

    migrate(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []


def test_migrate_twice_is_a_no_op(empty_url: str) -> None:
    migrate(empty_url)  # from a URL: migrate makes and disposes its own engine
    migrate(empty_url)

    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_concurrent_migrations_take_turns(empty_url: str) -> None:
    # Several `duly worker` processes may start at once and each migrate: the later ones
    # must wait for the first and then find nothing to do, not fail on CREATE TABLE.
    # Processes, not threads: that is the real case, and Alembic is one-at-a-time per process.
    code = "import sys; from duly.store.db import migrate; migrate(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    failures = [p.stderr.read() for p in procs if p.wait(timeout=120) != 0 and p.stderr]
    for p in procs:
        if p.stderr:
            p.stderr.close()

    assert failures == []
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) == head_revision()
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_migrate_is_safe_from_threads(tmp_path: Path) -> None:
    """Three threads migrating one new SQLite file, 15 times over: opening a new file at
    the same moment once answered "database is locked" about one time in ten."""
    errors: list[BaseException] = []
    for n in range(15):
        url = f"sqlite:///{tmp_path / f'threads-{n}.db'}"

        def run(url: str = url) -> None:
            try:
                migrate(url)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    assert errors == []


def test_migrations_need_no_alembic_ini_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini, no migrations folder here
    migrate("sqlite:///relative.db")

    assert (tmp_path / "relative.db").exists()
    engine = make_engine("sqlite:///relative.db")
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_migrate_leaves_the_pool_with_foreign_keys_on(tmp_path: Path) -> None:
    # env.py turns SQLite foreign keys off while migrating; the pooled connection it used
    # must come back with them on.
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}")
    try:
        migrate(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


REBUILD_DELIVERIES = '''
"""test: rebuild deliveries the SQLite way (copy, drop, rename)"""
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", recreate="always") as batch:
        batch.add_column(sa.Column("extra", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", recreate="always") as batch:
        batch.drop_column("extra")
'''


def test_sqlite_table_rebuild_keeps_child_rows(tmp_path: Path) -> None:
    # A later migration that alters `deliveries` on SQLite rebuilds it, dropping the old
    # table. With foreign keys on, that DROP would cascade and delete the delivery_log.
    engine = make_engine(f"sqlite:///{tmp_path / 'rebuild.db'}")
    try:
        migrate(engine)
        with engine.begin() as conn:
            delivery_id = conn.execute(
                tables.deliveries.insert().returning(tables.deliveries.c.id),
                {
                    "rule": "r",
                    "occurrence": "0",
                    "state": "sent",
                    "category": "reminder",
                    "planned_at": T0,
                    "due_at": T0,
                    "created_at": T0,
                    "updated_at": T0,
                },
            ).scalar_one()
            conn.execute(
                tables.delivery_log.insert(),
                {"delivery_id": delivery_id, "at": T0, "kind": "outcome", "outcome": "sent"},
            )

        extra_versions = tmp_path / "versions"
        extra_versions.mkdir()
        (extra_versions / "9001_rebuild.py").write_text(
            REBUILD_DELIVERIES.format(head=head_revision())
        )
        with engine.connect() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.set_main_option("path_separator", "os")
            config.set_main_option(
                "version_locations",
                f"{MIGRATIONS_DIR / 'versions'}{os.pathsep}{extra_versions}",
            )
            config.attributes["connection"] = conn
            command.upgrade(config, "9001")

        assert current_revision(engine) == "9001"
        with engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(tables.delivery_log)).scalar()
                == 1
            )
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            # the rebuilt table still enforces the relationship
            assert conn.exec_driver_sql("PRAGMA foreign_key_list(delivery_log)").fetchall()
    finally:
        engine.dispose()
