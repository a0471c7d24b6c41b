"""PostgreSQL connections: the pre-ping skipped for a connection just used, recovery when the
backend is gone anyway, the cached cursor description, and NOTIFY only for work due soon.

Real PostgreSQL (DULY_TEST_DATABASE_URL); skipped without it, like every PostgreSQL test.
"""

from __future__ import annotations

import inspect
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store import db as dbmod
from duly.store.db import make_engine
from duly.store.notify import CHANNEL, NOTIFY_HORIZON

RULES = """
timezone: UTC
rules:
  - name: nudge
    subject: job
    to: [owner]
    steps:
      - name: first
        at: "due_at"
        template: plain
"""


def _pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pings that reach the server (SQLAlchemy's own, which it still runs)."""
    n = [0]
    real = dbmod._full_ping

    def counted(dialect: Any, dbapi_connection: Any) -> bool:
        n[0] += 1
        return real(dialect, dbapi_connection)

    monkeypatch.setattr(dbmod, "_full_ping", counted)
    return n


def _backend_pid(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_connection_just_checked_in_is_not_pinged_again(
    pg_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_db_url)
    try:
        pings = _pings(monkeypatch)
        with engine.connect() as c:
            first = _backend_pid(c)
        for _ in range(5):
            with engine.connect() as c:
                assert _backend_pid(c) == first
        assert pings[0] == 0
        # idle longer than PING_AFTER_IDLE_S: pinged as before
        pool_conn = engine.pool._pool.queue[0]  # type: ignore[attr-defined]
        setattr(pool_conn.dbapi_connection, dbmod._IDLE_SINCE, time.monotonic() - 60)
        with engine.connect() as c:
            assert _backend_pid(c) == first
        assert pings[0] == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["terminate", "terminate-all"])
def test_a_backend_ended_just_after_checkin_is_replaced_not_used(
    pg_db_url: str, pg_admin: sa.engine.Engine, how: str
) -> None:
    """pg_terminate_backend (what a restart does to every session): the next checkout, well
    within PING_AFTER_IDLE_S, finds the socket readable, pings, and gets a new connection;
    the caller never sees the dead one."""
    engine = make_engine(pg_db_url)
    try:
        conns = [engine.connect() for _ in range(3)]
        pids = [_backend_pid(c) for c in conns]
        for c in conns:
            c.close()
        with pg_admin.connect() as admin:
            victims = pids if how == "terminate-all" else pids[-1:]
            for pid in victims:
                admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            # the backends are gone once they no longer show
            for _ in range(100):
                left = admin.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"),
                    {"p": victims},
                ).scalar_one()
                if not left:
                    break
                time.sleep(0.02)
        for _ in range(6):  # every pooled connection, twice over
            with engine.begin() as c:
                assert c.exec_driver_sql("SELECT 1").scalar_one() == 1
                assert _backend_pid(c) not in victims
    finally:
        engine.dispose()


def test_socket_quiet_sees_a_closed_backend(pg_db_url: str, pg_admin: sa.engine.Engine) -> None:
    url = pg_db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        conn.rollback()
        assert dbmod._socket_quiet(conn)
        pid = conn.info.backend_pid
        with pg_admin.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        deadline = time.monotonic() + 5
        while dbmod._socket_quiet(conn) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not dbmod._socket_quiet(conn)


def test_cached_descriptions_follow_each_result(pg_db_url: str) -> None:
    engine = make_engine(pg_db_url)
    try:
        for _ in range(3):
            with engine.connect() as c:
                r = c.exec_driver_sql("SELECT 1 AS a, 'x'::text AS b")
                assert list(r.keys()) == ["a", "b"]
                assert r.cursor.description[1].type_code == 25  # text
                assert r.one() == (1, "x")
                r = c.exec_driver_sql("SELECT 'x'::text AS a, 2 AS b, now() AS c")
                assert list(r.keys()) == ["a", "b", "c"]
                assert [d.type_code for d in r.cursor.description] == [25, 23, 1184]
                assert r.one()[:2] == ("x", 2)
                r = c.exec_driver_sql("SELECT 1::int8 AS a")
                assert r.cursor.description[0].name == "a"
                assert r.cursor.description[0].type_code == 20
                assert c.exec_driver_sql("SELECT").cursor.description == []
                assert not c.exec_driver_sql("SET LOCAL work_mem = '4MB'").returns_rows
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ NOTIFY


def test_the_horizon_is_well_beyond_a_dispatchers_longest_sleep() -> None:
    max_sleep = inspect.signature(Dispatcher.run_forever).parameters["max_sleep"].default
    assert timedelta(seconds=max_sleep) * 5 <= NOTIFY_HORIZON


def _engine(pg_db_url: str, tmp_path: Path, clock: Any) -> Engine:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "plain.email.txt").write_text("Subject: x\nHello\n")
    rf = load_rules_text(
        RULES, path=str(tmp_path / "duly.yaml"), templates_dir=str(tmp_path / "templates")
    )
    engine = Engine(rf, make_engine(pg_db_url), clock=clock)
    engine.put_recipient(Recipient("u1", name="U", email="u@example.test"))
    return engine


def _listen(pg_db_url: str) -> tuple[list[str], threading.Event, threading.Thread]:
    url = pg_db_url.replace("postgresql+psycopg://", "postgresql://")
    got: list[str] = []
    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            ready.set()
            while not stop.is_set():
                for n in conn.notifies(timeout=0.1):
                    got.append(n.payload)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    return got, stop, t


@pytest.mark.parametrize("clock_at", [None, datetime(2031, 6, 1, 12, 0, tzinfo=UTC)])
def test_notify_only_for_work_due_within_the_horizon(
    pg_db_url: str, tmp_path: Path, clock_at: datetime | None
) -> None:
    """The horizon is measured on the engine's clock (a virtual clock years ahead too)."""
    clock = VirtualClock(clock_at) if clock_at else None
    engine = _engine(pg_db_url, tmp_path, clock)
    got, stop, t = _listen(pg_db_url)
    try:
        now = engine.clock.now()
        soon = now + timedelta(seconds=30)
        later = now + NOTIFY_HORIZON + timedelta(minutes=1)

        def put(key: str, due: datetime) -> None:
            res = engine.upsert_subject(SubjectInput(
                kind="job", key=key, attributes={"due_at": due.isoformat()},
                recipients={"owner": "u1"},
            ))  # fmt: skip
            assert res.first_due == due

        put("far", later)
        put("near", soon)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything else would have arrived by now
        assert got == [soon.isoformat()]
        # just inside the horizon: notified
        inside = now + NOTIFY_HORIZON - timedelta(minutes=1)
        put("inside", inside)
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got[1:] == [inside.isoformat()]
    finally:
        stop.set()
        t.join(5)
        engine.db.dispose()


def test_upserts_go_on_at_once_after_every_session_is_terminated(
    pg_db_url: str, pg_admin: sa.engine.Engine, tmp_path: Path
) -> None:
    """What a database restart does to a serving process's pool: every backend ends. The next
    upsert, right after, is answered and committed (no error surfaces to the caller)."""
    engine = _engine(pg_db_url, tmp_path, None)
    dbname = sa.engine.make_url(pg_db_url).database
    try:
        due = engine.clock.now() + timedelta(days=1)

        def put(key: str) -> None:
            engine.upsert_subject(SubjectInput(
                kind="job", key=key, attributes={"due_at": due.isoformat()},
                recipients={"owner": "u1"},
            ))  # fmt: skip

        # several connections in the pool, all used within PING_AFTER_IDLE_S
        threads = [threading.Thread(target=put, args=(f"a{i}",)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        with pg_admin.connect() as admin:
            admin.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": dbname},
            )
            for _ in range(100):
                left = admin.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": dbname},
                ).scalar_one()
                if not left:
                    break
                time.sleep(0.02)
        for i in range(6):
            put(f"b{i}")
        with engine.db.connect() as c:
            keys = c.exec_driver_sql("SELECT key FROM subjects ORDER BY key").scalars().all()
        assert keys == [*(f"a{i}" for i in range(4)), *(f"b{i}" for i in range(6))]
    finally:
        engine.db.dispose()
