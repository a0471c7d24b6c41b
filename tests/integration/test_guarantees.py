"""Delivery guarantees under faults, on a real database and a real SMTP server (aiosmtpd):
a dispatcher loop that survives database errors, leases renewed while a slow relay takes its
time, outcomes written per send, rows retaken after a crash recorded as possibly sent, a
final write that lost its row refused and logged, breaker probes that spend no attempt, a
stop that gives back what it has not sent.

The same scenarios with real processes (kill -9, a PostgreSQL restart, relay outages) are
in bench/faults.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.clock import SystemClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.smtp import SmtpChannel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.runtime import Runtime, retake_dead_local_claims
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine, write_transaction
from duly.store.tables import deliveries, delivery_log, workers
from fakes.smtp_server import smtp_server  # tests/ is on sys.path (conftest.py)

RULES = """
timezone: UTC
channels:
  email: {type: smtp, url: "smtp://127.0.0.1:1", from: "billing@acme.test"}
rules:
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: plain
"""


class Sink:
    """An SMTP server's handler: counts arrivals per Message-ID; can be slowed down, made
    to hold a message until released, or answer 451."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.delay = 0.0
        self.hold: threading.Event | None = None  # set: DATA waits until it is set
        self.holding = threading.Event()  # a DATA is waiting on `hold`
        self.refuse = False
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        if self.refuse:
            return "451 4.3.0 try again later"
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None and not self.hold.is_set():
            self.holding.set()
            while not self.hold.is_set():
                await asyncio.sleep(0.01)
        msg = message_from_bytes(envelope.content)
        with self.lock:
            self.ids.append(str(msg["Message-ID"]))
        return "250 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.ids)

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in Counter(self.ids).values())


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    try:
        with smtp_server(sink) as (_, port):
            yield sink, port
    finally:
        if sink.hold is not None:
            sink.hold.set()


def build(
    db_url: str,
    tmp: Path,
    port: int,
    *,
    owner: str | None = None,
    rules: str = RULES,
    **kw: Any,
) -> tuple[Engine, Dispatcher]:
    tdir = tmp / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "plain.email.txt").write_text("Subject: receipt {{ subject.key }}\nPaid, thanks.\n")
    rf = load_rules_text(rules, path=str(tmp / "duly.yaml"), templates_dir=str(tdir))
    engine = Engine(rf, make_engine(db_url), clock=SystemClock())
    chan = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_="billing@acme.test")
    disp = Dispatcher(engine, {"email": chan}, Renderer(rf.templates_dir), owner=owner, **kw)
    return engine, disp


def plan(engine: Engine, n: int, prefix: str = "INV") -> None:
    engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
    engine.upsert_subjects(
        [
            SubjectInput("invoice", f"{prefix}-{i}", {"status": "paid"}, {"customer": "c1"})
            for i in range(n)
        ]
    )


def api(rt: Runtime, *, key: bool = True) -> Any:
    """A TestClient on the API of ``rt`` (no UI), with a fresh API key unless ``key`` is
    False (health and metrics need none)."""
    from fastapi.testclient import TestClient

    from duly.api.keys import KeyStore
    from duly.app import create_app

    headers = {}
    if key:
        token = KeyStore(rt.db).create("test", datetime.now(UTC))[0]
        headers["Authorization"] = f"Bearer {token}"
    return TestClient(create_app(rt, ui=False), headers=headers)


def states(engine: Engine) -> Counter[str]:
    with engine.db.connect() as c:
        return Counter(c.execute(sa.select(deliveries.c.state)).scalars())


def history(engine: Engine, did: int) -> list[dict[str, Any]]:
    with engine.db.connect() as c:
        q = sa.select(delivery_log).where(delivery_log.c.delivery_id == did)
        return [dict(r) for r in c.execute(q.order_by(delivery_log.c.id)).mappings()]


def drain(disp: Dispatcher, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while disp.run_once() and time.monotonic() < end:
        pass


def wait_for(cond: Any, seconds: float = 20.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


# ---------------------------------------------------------------------- the loop survives


class Flaky:
    """Fault injection at the store's edge: the named methods raise the way a database
    restart does (OperationalError) the first ``times`` calls, then work."""

    def __init__(self, store: Any, methods: tuple[str, ...], times: int) -> None:
        self._store, self._methods, self.left = store, methods, dict.fromkeys(methods, times)

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name not in self._methods:
            return real

        def call(*a: Any, **kw: Any) -> Any:
            if self.left[name] > 0:
                self.left[name] -= 1
                raise sa.exc.OperationalError("SELECT 1", {}, Exception("terminating connection"))
            return real(*a, **kw)

        return call


@pytest.mark.parametrize(
    "methods",
    [("next_due",), ("claim_due",), ("finish",), ("get_subjects",)],
    ids=lambda m: m[0],
)
def test_the_loop_survives_database_errors_in_every_stage(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], methods: tuple[str, ...]
) -> None:
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port)
    plan(engine, 5)
    engine.store = Flaky(engine.store, methods, times=2)  # type: ignore[assignment]
    t = threading.Thread(target=disp.run_forever, kwargs={"max_sleep": 0.2}, daemon=True)
    t.start()
    try:
        wait_for(lambda: sink.count() >= 5, 30)
        time.sleep(0.3)
        assert t.is_alive(), "the dispatcher thread died"
    finally:
        disp.stop()
        t.join(10)
    assert sink.count() == 5 and sink.duplicates() == 0
    assert states(engine) == {"sent": 5}
    assert disp.stats.errors >= 1 and disp.last_error is not None


def test_a_stage_failing_for_one_row_leaves_the_others_alone(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], caplog: pytest.LogCaptureFixture
) -> None:
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port)
    plan(engine, 4)
    real = disp._decide
    calls = {"n": 0}

    def decide(w: Any, now: datetime, cycle: Any) -> str:
        calls["n"] += 1
        if w.row.identity.subject == "invoice/INV-2":
            raise RuntimeError("a bug reached by one row")
        return real(w, now, cycle)

    disp._decide = decide  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "duly.dispatcher"):
        drain(disp)
    assert sink.count() == 3
    with engine.db.connect() as c:
        bad = (
            c.execute(sa.select(deliveries).where(deliveries.c.subject == "invoice/INV-2"))
            .mappings()
            .one()
        )
    assert bad["state"] == "pending" and "a bug reached by one row" in bad["last_error"]
    assert bad["due_at"] > datetime.now(UTC) + timedelta(seconds=30)  # waits, then again
    assert any("deciding what to do failed" in r.message for r in caplog.records)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_keeper_restarts_a_dispatcher_thread_that_ended(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port)
    monkeypatch.setattr("duly.engine.runtime.HEARTBEAT_SECONDS", 0.5)
    real = disp.run_forever
    runs = {"n": 0}

    def run_forever(max_sleep: float = 0.2) -> None:
        runs["n"] += 1
        if runs["n"] == 1:
            raise SystemExit("the thread ends (what no except Exception catches)")
        real(max_sleep=0.2)

    disp.run_forever = run_forever  # type: ignore[method-assign]
    rt = Runtime(engine.rules, engine.db, engine, disp)
    rt.start()
    try:
        wait_for(lambda: rt.restarts == 1 and rt.dispatcher_alive(), 10)
        plan(engine, 3)
        wait_for(lambda: sink.count() == 3, 20)
    finally:
        rt.stop(10)


def test_a_stalled_loop_stops_beating_and_lets_its_rows_go(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send stuck beyond every bound: the process reports its dispatcher stopped, writes
    no heartbeat and renews no lease, so another process retakes the row."""
    sink, port = smtp
    sink.hold = threading.Event()
    monkeypatch.setattr("duly.engine.runtime.HEARTBEAT_SECONDS", 0.3)
    engine, disp = build(db_url, tmp_path, port, lease=timedelta(seconds=3), stall_after=1.0)
    rt = Runtime(engine.rules, engine.db, engine, disp)
    rt.start()
    try:
        plan(engine, 1)
        assert sink.holding.wait(10)
        wait_for(lambda: not rt.dispatcher_alive(), 5)
        with engine.db.connect() as c:
            lease_until = c.execute(sa.select(deliveries.c.lease_until)).scalar_one()
        time.sleep(1.0)
        with engine.db.connect() as c:
            assert c.execute(sa.select(deliveries.c.lease_until)).scalar_one() == lease_until
            beat = c.execute(
                sa.select(workers.c.heartbeat_at).where(workers.c.id == disp.owner)
            ).scalar()
        assert beat is None or beat < datetime.now(UTC) - timedelta(seconds=0.9)

        with api(rt, key=False) as client:
            r = client.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["dispatcher"] == "stopped"
            assert "duly_dispatcher_up 0.0" in client.get("/metrics").text
        # the lease runs out; another dispatcher takes the row over (its send is held at
        # the relay too until the first one's send is let through)
        _, other = build(db_url, tmp_path, port)
        wait_for(lambda: datetime.now(UTC) > lease_until, 5)
        t = threading.Thread(target=drain, args=(other,), daemon=True)
        t.start()

        def retaken() -> bool:
            with engine.db.connect() as c:
                return c.execute(sa.select(deliveries.c.lease_owner)).scalar() == other.owner

        wait_for(retaken, 10)
        sink.hold.set()
        t.join(10)
    finally:
        sink.hold.set()
        rt.stop(10)
    with engine.db.connect() as c:
        (state, attempts) = c.execute(sa.select(deliveries.c.state, deliveries.c.attempts)).one()
    assert state == "sent"
    assert attempts == 2  # the stalled send (outcome unknown) and the one that went out
    # both sends reached the relay: the duplicate is the one send in flight, and it is
    # on record as possibly sent
    assert sink.count() == 2 and other.stats.retaken == 1 and disp.stats.lost_lease == 1


# ---------------------------------------------------------------------- leases that hold


def test_a_slow_relay_never_makes_another_process_resend(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message takes 1.2 s; a batch of 6 takes 7 s, more than twice the 3 s lease. The
    lease is renewed while the sends go on: the second process never takes a row over."""
    sink, port = smtp
    sink.delay = 1.2
    engine, d1 = build(db_url, tmp_path, port, lease=timedelta(seconds=3), owner="w1")
    _, d2 = build(db_url, tmp_path, port, lease=timedelta(seconds=3), owner="w2")
    plan(engine, 6)
    rt = Runtime(engine.rules, engine.db, engine, d1)
    monkeypatch.setattr("duly.engine.runtime.HEARTBEAT_SECONDS", 0.5)
    rt.start()
    stop = threading.Event()

    def other() -> None:
        while not stop.is_set():
            d2.run_once()
            stop.wait(0.2)

    t = threading.Thread(target=other, daemon=True)
    t.start()
    try:
        wait_for(lambda: states(engine).get("sent", 0) == 6, 30)
    finally:
        stop.set()
        t.join(10)
        rt.stop(10)
    assert sink.count() == 6 and sink.duplicates() == 0
    with engine.db.connect() as c:
        assert set(c.execute(sa.select(deliveries.c.attempts)).scalars()) == {1}
        outcomes = c.execute(
            sa.select(delivery_log.c.outcome).where(delivery_log.c.kind == "outcome")
        ).scalars()
        assert Counter(outcomes) == {"sent": 6}
    assert d2.stats.sent == 0 and d2.stats.retaken == 0


# ---------------------------------------------------------------------- outcomes per send


def test_each_outcome_is_recorded_as_soon_as_its_send_is_answered(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    """Three messages, sent one at a time; the third is held at the relay. The first two
    are already recorded `sent` while it waits, so a crash now would repeat only it."""
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port, send_workers=1)
    plan(engine, 3)
    real_send = disp.channels["email"].send
    sent = {"n": 0}

    def send(msg: Any) -> Any:
        sent["n"] += 1
        if sent["n"] == 3:
            sink.hold = threading.Event()
        return real_send(msg)

    disp.channels["email"].send = send  # type: ignore[method-assign]
    t = threading.Thread(target=drain, args=(disp,), daemon=True)
    t.start()
    try:
        wait_for(lambda: sink.holding.is_set(), 10)
        assert states(engine) == {"sent": 2, "sending": 1}
    finally:
        if sink.hold is not None:
            sink.hold.set()
        t.join(10)
    assert states(engine) == {"sent": 3}


def test_a_row_retaken_after_a_crash_records_that_it_may_have_gone_out(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port)
    plan(engine, 1)
    with write_transaction(engine.db) as conn:  # a worker claims, sends, dies unrecorded
        (claimed,) = engine.store.claim_due(
            conn, datetime.now(UTC), "dead:1:x", timedelta(seconds=3), 10
        )
    assert disp.run_once() == 0  # its lease still holds
    time.sleep(3.1)
    assert disp.run_once() == 1
    assert sink.count() == 1
    log = history(engine, claimed.id)
    unknown = [lg for lg in log if lg["outcome"] == "unknown"]
    assert len(unknown) == 1 and unknown[0]["kind"] == "attempt"
    assert "may have gone out" in unknown[0]["error"] and "dead:1:x" in unknown[0]["error"]
    assert [lg["attempt"] for lg in log if lg["kind"] == "attempt"] == [1, 2]
    with engine.db.connect() as c:
        row = c.execute(sa.select(deliveries)).mappings().one()
    assert row["state"] == "sent" and row["attempts"] == 2
    assert disp.stats.retaken == 1


def test_a_final_write_for_a_row_another_process_retook_is_refused_and_logged(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], caplog: pytest.LogCaptureFixture
) -> None:
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port, send_workers=1)
    plan(engine, 1)
    sink.hold = threading.Event()
    t = threading.Thread(target=drain, args=(disp,), daemon=True)
    with caplog.at_level(logging.ERROR, "duly.dispatcher"):
        t.start()
        assert sink.holding.wait(10)
        with write_transaction(engine.db) as c:  # its lease ran out; another took the row
            c.execute(sa.update(deliveries).values(lease_owner="thief"))
        sink.hold.set()
        t.join(10)
    with engine.db.connect() as c:
        row = c.execute(sa.select(deliveries)).mappings().one()
    assert row["state"] == "sending" and row["lease_owner"] == "thief"
    assert history(engine, row["id"]) == []  # no log row contradicts the delivery
    assert disp.stats.lost_lease == 1
    (rec,) = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert "invoice/INV-0" in rec.getMessage() and "Message-ID" in rec.getMessage()


# ---------------------------------------------------------------------- stop and restart


def test_stop_gives_back_what_was_claimed_but_not_sent(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    sink.delay = 0.5
    engine, disp = build(db_url, tmp_path, port, send_workers=2)
    plan(engine, 20)
    rt = Runtime(engine.rules, engine.db, engine, disp)
    rt.start()
    wait_for(lambda: sink.count() >= 2, 10)
    t0 = time.monotonic()
    rt.stop(10)
    assert time.monotonic() - t0 < 3  # the sends in flight, not the whole batch
    got = states(engine)
    assert got["sent"] == sink.count() and got["pending"] == 20 - sink.count()
    assert "sending" not in got
    with engine.db.connect() as c:
        pend = c.execute(
            sa.select(deliveries.c.attempts).where(deliveries.c.state == "pending")
        ).scalars()
        assert set(pend) == {0}  # no attempt spent


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_restarted_sqlite_server_retakes_its_dead_predecessors_claims_at_once(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    engine, disp = build(sqlite_url, tmp_path, port)
    plan(engine, 3)
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    with write_transaction(engine.db) as conn:  # killed -9 mid-send, its lease an hour long
        engine.store.claim_due(conn, datetime.now(UTC), dead, timedelta(hours=1), 10)
    rt = Runtime(engine.rules, engine.db, engine, disp)
    t0 = time.monotonic()
    rt.start()
    try:
        wait_for(lambda: sink.count() == 3, 10)
    finally:
        rt.stop(10)
    assert time.monotonic() - t0 < 10
    assert states(engine) == {"sent": 3}
    with engine.db.connect() as c:
        unknown = c.execute(
            sa.select(sa.func.count()).where(delivery_log.c.outcome == "unknown")
        ).scalar()
    assert unknown == 3


def test_claims_of_a_live_process_are_not_taken_early(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    engine, disp = build(sqlite_url, tmp_path, port)
    plan(engine, 2)
    me = f"{socket.gethostname()}:{os.getpid()}:cafe"  # alive: this test's own process
    other_host = "elsewhere:1:beef"  # another machine: its pid means nothing here
    with write_transaction(engine.db) as conn:
        engine.store.claim_due(conn, datetime.now(UTC), me, timedelta(hours=1), 1)
        engine.store.claim_due(conn, datetime.now(UTC), other_host, timedelta(hours=1), 1)
    assert retake_dead_local_claims(engine.db, engine, disp) == 0
    assert disp.run_once() == 0
    assert states(engine) == {"sending": 2}


def test_the_api_and_metrics_show_a_possibly_repeated_send(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:

    from duly.engine.metrics import Metrics

    sink, port = smtp
    engine, disp = build(sqlite_url, tmp_path, port)
    disp.metrics = Metrics()
    plan(engine, 2)
    with write_transaction(engine.db) as conn:
        (claimed, other) = engine.store.claim_due(
            conn, datetime.now(UTC), "dead:1:x", timedelta(seconds=3), 1
        ) + engine.store.claim_due(conn, datetime.now(UTC), disp.owner, timedelta(hours=1), 1)
    time.sleep(3.1)
    with write_transaction(engine.db) as conn:  # the second one: its sender recorded it
        engine.store.release(conn, [other.id], disp.owner, datetime.now(UTC))
    drain(disp)
    rt = Runtime(engine.rules, engine.db, engine, disp, metrics=disp.metrics)
    with api(rt) as c:
        got = c.get(f"/v1/deliveries/{claimed.id}").json()
        assert got["possibly_sent_before"] is True
        assert [a["outcome"] for a in got["attempt_log"]] == ["unknown", None]
        assert c.get(f"/v1/deliveries/{other.id}").json()["possibly_sent_before"] is False
        assert "duly_outcome_unknown_total 1.0" in c.get("/metrics").text


# ---------------------------------------------------------------------- isolation, stuck work

SCHEDULES = (
    RULES
    + """
  - name: broken-schedule
    cron: "5 4 * * *"
    to: ["id:c1"]
    template: plain
  - name: good-schedule
    cron: "* * * * *"
    to: ["id:c1"]
    template: plain
"""
)


def test_a_schedule_rule_that_cannot_be_planned_stops_nothing_else(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning one schedule rule fails (here: its time math raises, as croniter did for
    `0 0 30 2 *`). The other schedule rule is planned, an ordinary receipt goes out on time,
    and /readyz names the failing rule."""
    from duly.core.rules import timemath
    from duly.engine import service

    real = timemath.cron_next

    def cron_next(expr: str, *a: Any, **kw: Any) -> datetime:
        if expr == "5 4 * * *":
            raise RuntimeError("failed to find next date")
        return real(expr, *a, **kw)

    monkeypatch.setattr(service.timemath, "cron_next", cron_next)
    sink, port = smtp
    engine, disp = build(db_url, tmp_path, port, rules=SCHEDULES)
    plan(engine, 1)
    assert disp.run_once() == 1  # the receipt
    assert sink.count() == 1
    with engine.db.connect() as c:
        planned = set(c.execute(sa.select(deliveries.c.rule)).scalars())
    assert planned == {"receipt", "good-schedule"}
    assert "failed to find next date" in engine.schedule_errors["broken-schedule"][1]

    rt = Runtime(engine.rules, engine.db, engine, disp)
    with api(rt, key=False) as client:
        detail = client.get("/readyz").json()
    assert "failed to find next date" in detail["schedule_errors"]["broken-schedule"]["error"]


def test_an_operator_can_cancel_or_retry_a_delivery_left_sending_past_its_lease(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:

    sink, port = smtp
    engine, disp = build(sqlite_url, tmp_path, port)
    plan(engine, 2)
    with write_transaction(engine.db) as conn:
        a, b = engine.store.claim_due(conn, datetime.now(UTC), "w9:1:x", timedelta(seconds=3), 2)
    rt = Runtime(engine.rules, engine.db, engine, disp)
    with api(rt) as c:
        r = c.post(f"/v1/deliveries/{a.id}/cancel")
        assert r.status_code == 409 and "being sent by w9:1:x" in r.text
        time.sleep(3.1)
        assert c.post(f"/v1/deliveries/{a.id}/cancel").status_code == 200
        assert c.post(f"/v1/deliveries/{b.id}/retry").status_code == 200
        got_a = c.get(f"/v1/deliveries/{a.id}").json()
        got_b = c.get(f"/v1/deliveries/{b.id}").json()
    assert got_a["state"] == "cancelled" and got_a["possibly_sent_before"] is True
    assert got_b["state"] == "pending" and got_b["possibly_sent_before"] is True
    drain(disp)
    assert sink.count() == 1 and states(engine) == {"cancelled": 1, "sent": 1}


def test_a_slow_commit_never_lets_more_than_the_concurrency_go_out_unrecorded(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    """The first outcome write hangs (a slow fsync). Sends go on only while there is a free
    slot, and a slot frees when its outcome is written: so at most ``send_workers``
    messages are ever at the relay unrecorded — what a crash at that moment could repeat."""
    sink, port = smtp
    engine, disp = build(sqlite_url, tmp_path, port, send_workers=4)
    plan(engine, 20)
    gate = threading.Event()
    real = engine.store.finish
    calls = {"n": 0}

    def finish(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            gate.wait(10)
        return real(*a, **kw)

    engine.store.finish = finish  # type: ignore[method-assign]
    t = threading.Thread(target=drain, args=(disp,), daemon=True)
    t.start()
    try:
        wait_for(lambda: calls["n"] >= 1, 10)
        time.sleep(1.0)  # the relay is instant: anything allowed out is out by now
        assert sink.count() <= 4
    finally:
        gate.set()
        t.join(20)
    assert sink.count() == 20 and states(engine) == {"sent": 20}


def test_with_a_slow_relay_a_process_claims_only_what_it_can_send_soon(
    sqlite_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    """Each message takes 0.4 s. A process claims a few seconds of work at a time, not a
    batch of 200, so a second process shares the backlog instead of idling beside it."""
    sink, port = smtp
    sink.delay = 0.4
    engine, d1 = build(sqlite_url, tmp_path, port, send_workers=2, owner="w1")
    _, d2 = build(sqlite_url, tmp_path, port, send_workers=2, owner="w2")
    plan(engine, 40)
    ts = [threading.Thread(target=drain, args=(d, 60), daemon=True) for d in (d1, d2)]
    for t in ts:
        t.start()
        time.sleep(0.1)  # w1 claims first
    for t in ts:
        t.join(60)
    assert sink.count() == 40 and sink.duplicates() == 0
    assert d1.stats.sent >= 10 and d2.stats.sent >= 10, (d1.stats.sent, d2.stats.sent)
    assert d1.claim_limit() < 40  # it learned that sends are slow
