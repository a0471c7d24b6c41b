"""Retention (duly.engine.retention) on SQLite and PostgreSQL: what a prune keeps, clears and
deletes, that a dry run counts exactly that and changes nothing, that a sent identity is never
sent again after its record is pruned, chunking, and the daily maintenance thread."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from duly.core.clock import VirtualClock
from duly.core.model import Recipient, parse_duration
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.outbox import OutboxChannel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.retention import Maintenance, PruneReport, cutoffs, prune, retention_for
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries, delivery_log, subject_errors

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday

RULES = """
timezone: UTC
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - {name: due-soon, at: "due_at - 3d", template: plain}
      - {name: overdue, at: "due_at + 1d", template: plain}
  - name: invoice-alerts
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - {name: early, at: "due_at - 4d", template: broken}
  - name: close-stale
    subject: invoice
    if: "status == 'sent'"
    steps:
      - {name: close, at: "due_at + 30d", set: {status: closed}}
"""


@pytest.fixture
def tmpl(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "plain.email.txt").write_text("Subject: {{ step.name }} {{ subject.key }}\nHello\n")
    (d / "broken.email.txt").write_text("Subject: x\n{{ attributes.nope.deeper }}\n")
    return tmp_path


def make(db_url: str, tmp: Path, clock: VirtualClock, rules: str = RULES) -> tuple[Engine, Any]:
    rf = load_rules_text(rules, path=str(tmp / "duly.yaml"), templates_dir=str(tmp / "templates"))
    engine = Engine(rf, make_engine(db_url), clock=clock)
    disp = Dispatcher(
        engine, {"email": OutboxChannel("email")}, Renderer(rf.templates_dir), send_workers=1
    )
    return engine, disp


def inv(key: str, due: datetime | str, who: str = "c1", status: str = "sent") -> SubjectInput:
    due_at = due if isinstance(due, str) else due.isoformat()
    return SubjectInput("invoice", key, {"status": status, "due_at": due_at}, {"customer": who})


def snapshot(db: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with db.connect() as c:
        for t in (deliveries, delivery_log, subject_errors):
            out[t.name] = [tuple(r) for r in c.execute(sa.select(t).order_by(t.c.id))]
    return out


def states(db: sa.Engine) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(subject, rule, step) → the row."""
    with db.connect() as c:
        return {
            (r["subject"], r["rule"], r["step"]): dict(r)
            for r in c.execute(sa.select(deliveries)).mappings()
        }


def log_count(db: sa.Engine, did: int) -> int:
    with db.connect() as c:
        return c.execute(
            sa.select(sa.func.count()).where(delivery_log.c.delivery_id == did)
        ).scalar_one()


def summary(r: PruneReport) -> dict[str, tuple[int, int, int, Any, Any]]:
    return {
        s.state: (s.rows_deleted, s.content_cleared, s.log_rows_deleted, s.oldest, s.newest)
        for s in r.states
    }


def history(engine: Engine, disp: Dispatcher, clock: VirtualClock) -> None:
    """A quarter of activity: sent, failed (render error), skipped (past, no address),
    cancelled (subject deleted), set, a subject error, and one delivery still pending."""
    engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
    engine.put_recipient(Recipient("c2", name="Bob"))  # no address: skipped
    engine.upsert_subjects(
        [
            inv("INV-1", T0 + timedelta(days=5)),  # sent twice, failed once, closed (set)
            inv("INV-2", T0 - timedelta(days=10)),  # its messages: skipped (past)
            inv("INV-3", T0 + timedelta(days=4), who="c2"),  # skipped (no_address)
            inv("INV-4", T0 + timedelta(days=9)),  # deleted: cancelled
            inv("INV-5", T0 + timedelta(days=400)),  # still pending a year on
            inv("INV-6", "not a date"),  # a subject error
        ]
    )
    engine.delete_subject("invoice", "INV-4")
    for day in (1, 2, 6, 20, 35):
        clock.set(T0 + timedelta(days=day))
        while disp.run_once():
            pass


def test_prune_keeps_sent_identities_deletes_never_sent_ones_and_a_dry_run_counts_it(
    db_url: str, tmpl: Path
) -> None:
    clock = VirtualClock(T0)
    engine, disp = make(db_url, tmpl, clock)
    history(engine, disp, clock)
    db = engine.db
    before = states(db)
    sent = before[("invoice/INV-1", "invoice-reminders", "due-soon")]
    assert sent["state"] == "sent" and sent["title"] == "due-soon INV-1"
    assert sent["body_text"] and sent["to_address"] == "alice@example.test"
    failed = before[("invoice/INV-1", "invoice-alerts", "early")]
    assert failed["state"] == "failed" and failed["last_error"]
    assert before[("invoice/INV-1", "close-stale", "close")]["state"] == "set"
    assert before[("invoice/INV-2", "invoice-reminders", "due-soon")]["state"] == "skipped"
    assert before[("invoice/INV-3", "invoice-reminders", "due-soon")]["reason"] == "no_address"
    assert before[("invoice/INV-4", "invoice-reminders", "due-soon")]["state"] == "cancelled"
    assert before[("invoice/INV-5", "invoice-reminders", "due-soon")]["state"] == "pending"

    # 100 days on: only sent records are past their retention (90 days)
    now = T0 + timedelta(days=100)
    snap = snapshot(db)
    dry = prune(db, engine.rules, now, dry_run=True)
    assert snapshot(db) == snap  # a dry run changes nothing
    real = prune(db, engine.rules, now, chunk=2)
    assert summary(real) == summary(dry)
    assert real.dry_run is False and real.complete
    got = summary(real)
    assert got["sent"][:3] == (0, 2, 4)  # 2 sent rows: each an attempt and an outcome
    assert got["sent"][3] == T0 + timedelta(days=2) and got["sent"][4] == T0 + timedelta(days=6)
    assert got["failed"][:3] == got["skipped"][:3] == got["cancelled"][:3] == (0, 0, 0)
    assert got["set"][:3] == (0, 0, 0)  # set rows of day 20 and 35: within 90 days
    after = states(db)
    kept = after[("invoice/INV-1", "invoice-reminders", "due-soon")]
    assert kept["id"] == sent["id"] and kept["state"] == "sent"
    for col in ("title", "body_text", "body_html", "to_address", "receipt", "last_error"):
        assert kept[col] is None, col
    assert kept["sent_at"] == sent["sent_at"] and kept["message_id"] == sent["message_id"]
    assert log_count(db, kept["id"]) == 0
    assert after[("invoice/INV-1", "invoice-alerts", "early")]["last_error"]  # 180 days
    assert prune(db, engine.rules, now).total == 0  # nothing twice

    # 200 days on: failed, skipped and cancelled too
    now = T0 + timedelta(days=200)
    snap = snapshot(db)
    dry = prune(db, engine.rules, now, dry_run=True)
    assert snapshot(db) == snap
    real = prune(db, engine.rules, now, chunk=3)
    assert summary(real) == summary(dry)
    assert real.subject_errors_deleted == dry.subject_errors_deleted == len(snap["subject_errors"])
    assert real.subject_errors_deleted > 0
    got = summary(real)
    assert got["sent"][:3] == (0, 0, 0)
    assert got["failed"][:3] == (0, 1, 2)  # an attempt and an outcome
    assert got["set"][:3] == (0, 3, 3)  # INV-1, INV-2 and INV-3 were closed
    # INV-2's three messages (past), INV-3's three (no address); INV-4's (deleted) but its
    # close, due on day 39
    assert got["skipped"][0] >= 6 and got["cancelled"][0] == 3
    after = states(db)
    assert ("invoice/INV-2", "invoice-reminders", "due-soon") not in after
    assert ("invoice/INV-4", "invoice-reminders", "due-soon") not in after
    assert after[("invoice/INV-1", "invoice-alerts", "early")]["last_error"] is None
    closed = after[("invoice/INV-1", "close-stale", "close")]
    assert closed["state"] == "set" and closed["changes"] is None
    pending = after[("invoice/INV-5", "invoice-reminders", "due-soon")]
    assert (
        pending["state"] == "pending"
        and pending == before[pending["subject"], pending["rule"], pending["step"]]
    )
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(subject_errors)).scalar() == 0
    assert prune(db, engine.rules, now).total == 0

    # A sent identity is never sent again; a deleted never-sent one is planned again.
    clock.set(now)
    engine.upsert_subjects(
        [inv("INV-1", T0 + timedelta(days=5)), inv("INV-2", now + timedelta(days=30))]
    )
    after = states(db)
    assert after[("invoice/INV-1", "invoice-reminders", "due-soon")]["id"] == sent["id"]
    assert not [
        r for r in after.values() if r["subject"] == "invoice/INV-1" and r["state"] == "pending"
    ]
    replanned = after[("invoice/INV-2", "invoice-reminders", "due-soon")]
    assert replanned["state"] == "pending"
    assert replanned["due_at"] == now + timedelta(days=27)
    engine.db.dispose()


def test_pending_deliveries_are_never_pruned_however_old(db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, _ = make(db_url, tmpl, clock)
    engine.put_recipient(Recipient("c1", email="alice@example.test"))
    engine.upsert_subject(inv("INV-9", T0 + timedelta(days=5)))  # pending, due in 2 days
    # ... and the engine was down for two years
    report = prune(
        engine.db, engine.rules, T0 + timedelta(days=730), older_than=parse_duration("1d")
    )
    assert report.total == 0
    assert {r["state"] for r in states(engine.db).values()} == {"pending"}
    engine.db.dispose()


def test_older_than_overrides_every_retention(db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, disp = make(db_url, tmpl, clock)
    history(engine, disp, clock)
    now = T0 + timedelta(days=40)
    assert prune(engine.db, engine.rules, now, dry_run=True).total == 0
    report = prune(engine.db, engine.rules, now, older_than=parse_duration("1d"))
    got = summary(report)
    assert got["sent"][1] == 2 and got["failed"][1] == 1 and got["set"][1] == 3
    assert got["cancelled"][0] == 3 and report.subject_errors_deleted > 0
    cut = now - timedelta(days=1)
    left = states(engine.db).values()
    assert {r["state"] for r in left} == {"sent", "failed", "set", "pending", "cancelled"}
    # the one never-sent record left is not older than the cut-off: INV-4's close, due day 39
    (kept,) = [r for r in left if r["state"] == "cancelled"]
    assert kept["step"] == "close" and kept["due_at"] >= cut
    engine.db.dispose()


def test_retention_from_the_rule_file_and_its_defaults() -> None:
    rf = load_rules_text("rules: []\n", check_templates=False)
    days = {k: v.text for k, v in retention_for(rf).items()}
    assert days == {
        "sent": "90d",
        "set": "90d",
        "failed": "180d",
        "skipped": "180d",
        "cancelled": "180d",
    }
    rf = load_rules_text(
        "timezone: Europe/London\nretention: {sent: 1y, skipped: 30d}\nrules: []\n",
        check_templates=False,
    )
    days = {k: v.text for k, v in retention_for(rf).items()}
    assert days == {
        "sent": "1y",
        "set": "1y",
        "failed": "180d",
        "skipped": "30d",
        "cancelled": "30d",
    }
    # calendar units in the file's timezone: a year back from a summer noon is a summer noon
    cut = cutoffs(rf, datetime(2026, 7, 1, 11, 0, tzinfo=UTC))
    assert cut["sent"] == datetime(2025, 7, 1, 11, 0, tzinfo=UTC)
    assert cut["skipped"] == datetime(2026, 6, 1, 11, 0, tzinfo=UTC)


def test_maintenance_prunes_on_its_own_thread_and_stops_promptly(db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, disp = make(db_url, tmpl, clock)
    history(engine, disp, clock)
    clock.set(T0 + timedelta(days=100))
    m = Maintenance(
        engine.db, engine.rules, clock.now, first_after=timedelta(0), interval=timedelta(hours=1)
    )
    m.start()
    end = time.monotonic() + 20
    while m.runs == 0 and time.monotonic() < end:
        time.sleep(0.02)
    t0 = time.monotonic()
    m.stop()
    assert time.monotonic() - t0 < 5
    assert m._thread is not None and not m._thread.is_alive()
    assert m.last is not None and summary(m.last)["sent"][1] == 2
    engine.db.dispose()


@pytest.mark.postgres
def test_one_process_prunes_at_a_time_on_postgres(pg_db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, disp = make(pg_db_url, tmpl, clock)
    history(engine, disp, clock)
    clock.set(T0 + timedelta(days=100))
    m = Maintenance(engine.db, engine.rules, clock.now)
    other = make_engine(pg_db_url)
    with other.connect() as c:
        from duly.engine.retention import PRUNE_LOCK_KEY

        c.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PRUNE_LOCK_KEY})
        c.commit()
        assert m.run_once() is None  # another process is pruning
        c.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK_KEY})
        c.commit()
    report = m.run_once()
    assert report is not None and summary(report)["sent"][1] == 2
    other.dispose()
    engine.db.dispose()


def test_a_stop_ends_a_prune_between_chunks(db_url: str, tmpl: Path) -> None:
    import threading

    clock = VirtualClock(T0)
    engine, disp = make(db_url, tmpl, clock)
    history(engine, disp, clock)
    stop = threading.Event()
    stop.set()
    report = prune(engine.db, engine.rules, T0 + timedelta(days=300), stop=stop)
    assert not report.complete and report.total == 0
    assert "stopped before the end" in "\n".join(report.lines())
    engine.db.dispose()


# --------------------------------------------------------------------------- CLI


def cli_has(name: str) -> bool:
    from duly.cli import main

    return name in main.commands  # type: ignore[attr-defined]


@pytest.mark.skipif(not cli_has("prune"), reason="`duly prune` is wired into cli.py by a diff")
def test_duly_prune_prints_what_it_would_delete_then_deletes(
    sqlite_url: str, tmpl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duly.cli import main

    # records of 2026-01: long past their retention when the command runs (now)
    clock = VirtualClock(T0)
    engine, disp = make(sqlite_url, tmpl, clock)
    history(engine, disp, clock)
    engine.db.dispose()
    (tmpl / "duly.yaml").write_text(RULES)
    monkeypatch.setenv("DULY_RULES", str(tmpl / "duly.yaml"))
    monkeypatch.setenv("DULY_DATABASE_URL", sqlite_url)
    runner = CliRunner()
    res = runner.invoke(main, ["prune", "--help"])
    assert res.exit_code == 0
    for env in ("DULY_PRUNE_DRY_RUN", "DULY_PRUNE_OLDER_THAN", "DULY_DATABASE_URL"):
        assert env in res.output
    res = runner.invoke(main, ["prune", "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == [
        "state",
        "older",
        "than",
        "rows",
        "deleted",
        "content",
        "cleared",
        "log",
        "rows",
        "deleted",
    ]
    sent = next(x for x in lines if x.startswith("sent "))
    assert sent.split()[-3:] == ["0", "2", "4"]
    assert "would be deleted" in res.stdout
    res = runner.invoke(main, ["prune"])
    assert res.exit_code == 0, res.output
    assert "were deleted" in res.stdout
    res = runner.invoke(main, ["prune", "--dry-run"])
    assert "nothing to prune" in res.stdout
    res = runner.invoke(main, ["prune", "--older-than", "soon"])
    assert res.exit_code == 2 and "--older-than" in res.output
