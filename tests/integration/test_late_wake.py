"""The dispatcher's wait for the next due time (``Dispatcher._sleep``): one timed wait to
the due time (never a claim before it, never an empty cycle on a wake-up that came too
soon), ended at once by a wake-up, and the garbage collector's full pass run on idle time
before it. Mechanism checks (counts and orderings), not timings."""

from __future__ import annotations

import gc
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.clock import SystemClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.null import NullChannel
from duly.delivery.rendering import Renderer
from duly.engine import dispatch
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries

RULES = """
timezone: UTC
rules:
  - name: tick
    subject: tick
    if: "status == 'open'"
    to: [owner]
    template: tick
    steps:
      - name: at
        at: "due_at"
"""


def make(db_url: str, tmp: Path, clock: Any) -> tuple[Engine, Dispatcher]:
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "tick.email.txt").write_text("Tick {{ subject.key }}\n")
    rf = load_rules_text(RULES, path=str(tmp / "duly.yaml"), templates_dir=str(tmp / "templates"))
    engine = Engine(rf, make_engine(db_url), clock=clock)
    engine.put_recipient(Recipient("r1", name="R", email="r1@example.test"))
    disp = Dispatcher(engine, {"email": NullChannel("email")}, Renderer(rf.templates_dir))
    return engine, disp


class RecordingEvent(threading.Event):
    """A real Event that notes the timeouts it was asked to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_late_a_row_is_claimed_at_its_due_time_never_before_and_without_an_empty_cycle(
    db_url: str, tmp_path: Path
) -> None:
    engine, disp = make(db_url, tmp_path, SystemClock())
    claims: list[tuple[datetime, int]] = []  # (the claim's now, rows it took)
    real_claim = disp.store.claim_due

    def claim_due(conn: Any, now: datetime, *a: Any, **k: Any) -> Any:
        got = real_claim(conn, now, *a, **k)
        claims.append((now, len(got)))
        return got

    disp.store.claim_due = claim_due  # type: ignore[method-assign]
    due = datetime.now(UTC) + timedelta(seconds=1.0)
    engine.upsert_subject(
        SubjectInput("tick", "T1", {"status": "open", "due_at": due.isoformat()}, {"owner": "r1"})
    )
    th = threading.Thread(target=disp.run_forever, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 20
        sent: list[Any] = []
        while not sent and time.monotonic() < deadline:
            time.sleep(0.02)
            with engine.db.connect() as c:
                sent = c.execute(
                    sa.select(deliveries.c.due_at, deliveries.c.sent_at).where(
                        deliveries.c.state == "sent"
                    )
                ).all()
    finally:
        disp.stop()
        th.join(10)
    assert sent, "nothing was sent"
    ((due_at, sent_at),) = sent
    assert sent_at >= due_at
    # the first cycle (at start) found nothing due (unless a loaded machine started the
    # thread after the due time); the next claimed the row, at or after its due time: the
    # wake-up did not come early and cost no empty cycle
    taking = [(now, n) for now, n in claims if n]
    assert len(taking) == 1 and taking[0][0] >= due_at
    assert claims.index(taking[0]) <= 1, claims


def test_late_the_sleep_is_one_timed_wait_to_the_due_time(sqlite_url: str, tmp_path: Path) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    disp._wake = RecordingEvent()
    start = engine.clock.now()
    nxt = start + timedelta(seconds=0.2)
    disp._sleep(nxt, 30.0)  # too short for an idle collection
    (asked,) = disp._wake.timeouts  # the whole way, in one wait
    assert asked is not None and 0.1 < asked <= 0.2
    assert disp._sleep_until is not None and disp._sleep_until >= nxt - timedelta(seconds=0.001)
    assert disp.idle_collections == 0


def test_late_a_wake_up_during_the_sleep_ends_it_at_once(sqlite_url: str, tmp_path: Path) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    nxt = engine.clock.now() + timedelta(seconds=20)
    th = threading.Thread(target=disp._sleep, args=(nxt, 30.0), daemon=True)
    th.start()
    time.sleep(0.05)
    disp.wake()
    th.join(10)
    assert not th.is_alive()
    assert engine.clock.now() < nxt


def _build_up_collections() -> list[list[int]]:
    """Objects that survive two collections of the middle generation (gc.get_count()[2])."""
    keep: list[list[int]] = []
    while gc.get_count()[2] < 2:
        keep.extend([i] for i in range(1000))
    return keep


@pytest.fixture
def collector() -> Any:
    was = gc.isenabled()
    gc.enable()
    gc.collect()
    yield
    if not was:
        gc.disable()


def test_late_a_full_collection_runs_before_a_long_sleep_when_one_is_coming(
    sqlite_url: str, tmp_path: Path, collector: None
) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    keep = _build_up_collections()
    disp._sleep(engine.clock.now() + timedelta(seconds=dispatch.IDLE_GC_GAP + 0.1), 30.0)
    assert disp.idle_collections == 1
    assert gc.get_count()[2] < 2  # the full pass resets it
    del keep


def test_late_no_collection_before_a_short_sleep_nor_twice_in_a_row(
    sqlite_url: str, tmp_path: Path, collector: None
) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    keep = _build_up_collections()
    disp._sleep(engine.clock.now() + timedelta(seconds=0.01), 30.0)
    assert disp.idle_collections == 0  # too short to hide a full pass
    disp._sleep(engine.clock.now() + timedelta(seconds=dispatch.IDLE_GC_GAP + 0.05), 30.0)
    assert disp.idle_collections == 1
    keep += _build_up_collections()
    disp._sleep(engine.clock.now() + timedelta(seconds=dispatch.IDLE_GC_GAP + 0.05), 30.0)
    assert disp.idle_collections == 1  # at most one every IDLE_GC_EVERY seconds
    del keep


def test_late_no_collection_before_a_sleep_shorter_than_twice_the_last_one(
    sqlite_url: str, tmp_path: Path, collector: None
) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    keep = _build_up_collections()
    disp._gc_took = dispatch.IDLE_GC_GAP  # the last full pass took this long
    disp._sleep(engine.clock.now() + timedelta(seconds=1.5 * dispatch.IDLE_GC_GAP), 30.0)
    assert disp.idle_collections == 0
    del keep


def test_late_no_collection_when_the_collector_is_off(sqlite_url: str, tmp_path: Path) -> None:
    engine, disp = make(sqlite_url, tmp_path, SystemClock())
    was = gc.isenabled()
    gc.enable()
    gc.collect()
    try:
        keep = _build_up_collections()
        gc.disable()
        disp._sleep(engine.clock.now() + timedelta(seconds=dispatch.IDLE_GC_GAP + 0.05), 30.0)
        assert disp.idle_collections == 0
        del keep
    finally:
        if was:
            gc.enable()
