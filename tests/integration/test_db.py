"""Connections: SQLite settings and locking, instants, constraints, URLs, test fixtures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from duly.store.db import (
    current_revision,
    head_revision,
    is_postgres,
    make_engine,
    migrate,
    redact_url,
    write_transaction,
)
from duly.store.tables import deliveries, delivery_log, workers

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def delivery(**overrides: Any) -> dict[str, Any]:
    """A minimal valid deliveries row; identity columns not given default to ""."""
    row: dict[str, Any] = {
        "rule": "invoice-due",
        "step": "first",
        "occurrence": "0",
        "subject": "invoice/42",
        "recipient": "ana",
        "channel": "email",
        "state": "pending",
        "category": "reminder",
        "planned_at": T0,
        "due_at": T0,
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def sqlite_path(engine: Engine) -> str:
    assert engine.url.database
    return engine.url.database


# --- SQLite connection settings and locking ------------------------------------------------


def test_sqlite_pragmas_are_set_on_every_connection(sqlite_engine: Engine) -> None:
    for _ in range(2):  # a pooled connection and a brand-new one
        with sqlite_engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "busy_timeout": 30_000,
            "foreign_keys": 1,
            "synchronous": 1,  # NORMAL
        }
        sqlite_engine.dispose()


def test_write_transaction_takes_the_write_lock_at_begin(sqlite_engine: Engine) -> None:
    other = sqlite3.connect(sqlite_path(sqlite_engine), timeout=0.1, isolation_level=None)
    try:
        with write_transaction(sqlite_engine):
            # Nothing written yet, and still no other writer can start.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_plain_transaction_does_not_block_writers(sqlite_engine: Engine) -> None:
    # Reads begin DEFERRED: under WAL a reader never keeps a writer out.
    other = sqlite3.connect(sqlite_path(sqlite_engine), timeout=0.1, isolation_level=None)
    try:
        with sqlite_engine.begin() as conn:
            conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_transactions_are_real_transactions(sqlite_engine: Engine) -> None:
    # Without the BEGIN hook the sqlite3 module would autocommit DDL and SAVEPOINTs would
    # escape the transaction; here a rollback undoes both.
    with sqlite_engine.connect() as conn:
        with conn.begin():
            conn.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
            with conn.begin_nested():
                conn.execute(deliveries.insert(), delivery())
            conn.rollback()
        names = sa.inspect(conn).get_table_names()
        count = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar()
    assert "scratch" not in names
    assert count == 0


def test_memory_database_is_one_database_shared_by_threads() -> None:
    engine = make_engine("sqlite:///:memory:")
    try:
        assert isinstance(engine.pool, StaticPool)
        migrate(engine)
        errors: list[BaseException] = []

        def insert() -> None:
            try:
                with write_transaction(engine) as conn:
                    conn.execute(deliveries.insert(), delivery())
            except BaseException as exc:  # asserted below
                errors.append(exc)

        thread = threading.Thread(target=insert)
        thread.start()
        thread.join(timeout=10)

        assert errors == []
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


# --- both backends -------------------------------------------------------------------------


def test_write_transaction_commits_or_rolls_back(db_engine: Engine) -> None:
    with write_transaction(db_engine) as conn:
        conn.execute(deliveries.insert(), delivery(rule="kept"))
    with pytest.raises(RuntimeError), write_transaction(db_engine) as conn:
        conn.execute(deliveries.insert(), delivery(rule="rolled-back"))
        raise RuntimeError("boom")

    with db_engine.connect() as conn:
        rules = conn.execute(sa.select(deliveries.c.rule)).scalars().all()
    assert rules == ["kept"]


def test_an_aware_instant_round_trips_as_utc(db_engine: Engine) -> None:
    # 01:30:15.123456 in Berlin on the morning clocks go forward is still CET: 00:30:15 UTC.
    local = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
    with write_transaction(db_engine) as conn:
        conn.execute(workers.insert(), {"id": "w1", "started_at": local, "heartbeat_at": T0})

    with db_engine.connect() as conn:
        back = conn.execute(sa.select(workers.c.started_at)).scalar_one()
        raw = conn.exec_driver_sql("SELECT started_at FROM workers").scalar_one()

    assert back == local
    assert back.tzinfo is UTC
    assert (back.hour, back.minute, back.microsecond) == (0, 30, 123456)
    # stored as naive UTC (SQLite hands back its text, PostgreSQL a naive datetime)
    assert str(raw) == "2026-03-29 00:30:15.123456"


def test_a_naive_datetime_is_refused(db_engine: Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime") as info:
        with write_transaction(db_engine) as conn:
            conn.execute(
                workers.insert(),
                {"id": "w1", "started_at": datetime(2026, 1, 5, 9, 0), "heartbeat_at": T0},
            )
    assert isinstance(info.value.orig, ValueError)


def test_a_delivery_identity_is_stored_once(db_engine: Engine) -> None:
    with write_transaction(db_engine) as conn:
        conn.execute(deliveries.insert(), delivery())
        # any identity column differing makes another delivery
        conn.execute(deliveries.insert(), delivery(channel="sms"))
        # "" (no step) is a value like any other, not a NULL that escapes the constraint
        conn.execute(deliveries.insert(), delivery(step=""))

    for duplicate in (delivery(), delivery(step="")):
        with pytest.raises(sa.exc.IntegrityError), write_transaction(db_engine) as conn:
            conn.execute(deliveries.insert(), duplicate)


def test_foreign_keys_are_enforced_and_cascade(db_engine: Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), write_transaction(db_engine) as conn:
        conn.execute(delivery_log.insert(), {"delivery_id": 999, "at": T0, "kind": "attempt"})

    with write_transaction(db_engine) as conn:
        delivery_id = conn.execute(
            deliveries.insert().returning(deliveries.c.id), delivery()
        ).scalar_one()
        conn.execute(
            delivery_log.insert(), {"delivery_id": delivery_id, "at": T0, "kind": "attempt"}
        )
    with write_transaction(db_engine) as conn:
        conn.execute(deliveries.delete())
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(delivery_log)).scalar() == 0


def test_fixture_databases_are_migrated_to_head(db_engine: Engine) -> None:
    assert current_revision(db_engine) == head_revision()
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar() == 0


# --- PostgreSQL ----------------------------------------------------------------------------


def test_postgres_sessions_are_utc_and_named(pg_db_url: str) -> None:
    engine = make_engine(pg_db_url)
    try:
        assert is_postgres(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "duly"
    finally:
        engine.dispose()


def test_each_test_gets_a_database_of_its_own(pg_db_url: str, pg_template: str) -> None:
    name = make_url(pg_db_url).database
    assert name is not None and name.startswith("duly_t_")
    assert name != pg_template


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db.example/duly",
        "postgres://u:pw@db.example/duly",
        "postgresql+psycopg://u:pw@db.example/duly",
    ],
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    engine = make_engine(url)  # does not connect
    try:
        assert engine.dialect.name == "postgresql"
        assert engine.dialect.driver == "psycopg"
        assert is_postgres(engine)
        assert engine.pool._pre_ping
    finally:
        engine.dispose()


def test_sqlite_engine_is_not_postgres(sqlite_engine: Engine) -> None:
    assert not is_postgres(sqlite_engine)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_refused_with_the_url_redacted(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///") as info:
        make_engine(url.replace("u@", "u:secret@"))
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://duly:s3cr%40t@db.example:5432/duly",
            "postgresql+psycopg://duly:***@db.example:5432/duly",
        ),
        ("postgresql://duly@db.example/duly", "postgresql://duly@db.example/duly"),
        (
            "postgresql://db.example/duly?user=duly&password=s3cret&sslmode=require",
            "postgresql://db.example/duly?password=***&sslmode=require&user=duly",
        ),
        ("sqlite:///var/lib/duly/duly.db", "sqlite:///var/lib/duly/duly.db"),
        ("weird://user:s3cret@host:notaport", "weird://user:***@host:notaport"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_accepts_a_parsed_url() -> None:
    assert redact_url(make_url("postgresql://u:pw@h/db")) == "postgresql://u:***@h/db"


# --- the PostgreSQL fixtures without a server configured -----------------------------------


def run_a_postgres_test(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DULY_TEST_DATABASE_URL", "CI")}
    env.update(env_overrides)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            f"{Path(__file__)}::test_postgres_sessions_are_utc_and_named",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "returncode", "summary", "message"),
    [
        pytest.param(
            {}, 0, "1 skipped", "PostgreSQL tests need DULY_TEST_DATABASE_URL", id="skip-locally"
        ),
        pytest.param(
            {"CI": "true"}, 1, "1 error", "in CI the PostgreSQL tests must run", id="fail-in-ci"
        ),
    ],
)
def test_postgres_tests_without_a_url(
    env: dict[str, str], returncode: int, summary: str, message: str
) -> None:
    result = run_a_postgres_test(env)
    assert result.returncode == returncode, result.stdout + result.stderr
    assert summary in result.stdout
    assert message in result.stdout
