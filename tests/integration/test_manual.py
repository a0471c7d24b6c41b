"""Running a rule by hand (duly.engine.manual) on SQLite and PostgreSQL: due
deliveries processed now by the real dispatcher, `set` actions and what they trigger, schedule
rules fired now, and dry runs that list all of it and change nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from duly.core.clock import VirtualClock
from duly.core.errors import InvalidInput, NotFound
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.base import Message, Receipt
from duly.delivery.channels.outbox import OutboxChannel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.manual import RunReport, run_rule, sandbox
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine, write_transaction
from duly.store.tables import deliveries, delivery_log, subjects

T0 = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)  # a Tuesday

RULES = """
timezone: UTC
groups:
  managers: [m1, m2]
rules:
  - name: stale-jobs
    subject: job
    if: "status == 'open'"
    steps:
      - name: close
        at: "last_activity_at + 90d"
        set: {status: CANCELLED, note: "closed: no activity for 90 days"}
  - name: job-closed
    subject: job
    on: {change: status, to: CANCELLED}
    category: transactional
    to: [contractor, creator]
    template: closed
  - name: job-due
    subject: job
    if: "status == 'open'"
    to: [contractor]
    steps: [{name: due, at: "due_at", template: due}]
  - name: office-hours
    subject: job
    to: [contractor]
    window: {hours: "09:00-17:00"}
    steps: [{name: nudge, at: "due_at", template: due}]
  - name: jobs-digest
    cron: "0 8 * * mon-fri"
    to: [group:managers]
    collect:
      open: {subject: job, if: "status == 'open'"}
    template: digest
"""


class Spy(OutboxChannel):
    """The outbox channel, counting sends: a dry run must never reach a real channel."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls = 0

    def send(self, message: Message) -> Receipt:
        self.calls += 1
        return super().send(message)


@pytest.fixture
def tmpl(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "closed.email.txt").write_text(
        "Subject: Job {{ subject.key }} closed: {{ attributes.note }}\nHello {{ recipient.name }}\n"
    )
    (d / "due.email.txt").write_text("Subject: Job {{ subject.key }} is due\nx\n")
    (d / "digest.email.txt").write_text(
        "Subject: {{ open|length }} open jobs\n{% for j in open %}{{ j.key }} {% endfor %}\n"
    )
    (tmp_path / "duly.yaml").write_text(RULES)
    return tmp_path


def make(db_url: str, tmp: Path, clock: VirtualClock) -> tuple[Engine, Dispatcher, Spy]:
    rf = load_rules_text(RULES, path=str(tmp / "duly.yaml"), templates_dir=str(tmp / "templates"))
    engine = Engine(rf, make_engine(db_url), clock=clock)
    spy = Spy("email")
    disp = Dispatcher(engine, {"email": spy}, Renderer(rf.templates_dir), send_workers=1)
    return engine, disp, spy


def people(engine: Engine) -> None:
    for rid, name in (("c1", "Carla"), ("u1", "Uma"), ("m1", "Mia"), ("m2", "Max")):
        engine.put_recipient(Recipient(rid, name=name, email=f"{rid}@example.test"))


def job(key: str, **attrs: Any) -> SubjectInput:
    return SubjectInput(
        "job", key, {"status": "open", **attrs}, {"contractor": "c1", "creator": "u1"}
    )


def snapshot(db: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with db.connect() as c:
        for t in (deliveries, delivery_log, subjects):
            out[t.name] = [tuple(r) for r in c.execute(sa.select(t).order_by(t.c.id))]
    return out


def brief(report: RunReport) -> list[tuple[Any, ...]]:
    return sorted(
        (i.rule, i.subject, i.recipient, i.outcome, i.title, i.follow_up) for i in report.items
    )


def test_stale_jobs_close_by_hand_and_a_dry_run_shows_what_would_close(
    db_url: str, tmpl: Path
) -> None:
    """U4.5: stale jobs are closed (status CANCELLED, with a note), the contractor and the
    creator are told; the dry run shows it all without closing anything."""
    clock = VirtualClock(T0)
    engine, disp, spy = make(db_url, tmpl, clock)
    people(engine)
    engine.upsert_subjects(
        [
            job("J1", last_activity_at=(T0 - timedelta(days=89)).isoformat()),  # due tomorrow
            job("J2", last_activity_at=(T0 - timedelta(days=60)).isoformat()),  # not yet
        ]
    )
    clock.set(T0 + timedelta(days=1, hours=1))
    before = snapshot(engine.db)

    dry = run_rule(disp, "stale-jobs", dry_run=True)
    assert snapshot(engine.db) == before  # nothing changed
    assert spy.calls == 0  # nothing sent
    assert dry.dry_run and dry.kind == "steps"
    assert brief(dry) == [
        (
            "job-closed",
            "job/J1",
            "c1",
            "sent",
            "Job J1 closed: closed: no activity for 90 days",
            True,
        ),
        (
            "job-closed",
            "job/J1",
            "u1",
            "sent",
            "Job J1 closed: closed: no activity for 90 days",
            True,
        ),
        ("stale-jobs", "job/J1", None, "set", None, False),
    ]
    (closing,) = [i for i in dry.items if i.outcome == "set"]
    assert closing.changes == {"status": "CANCELLED", "note": "closed: no activity for 90 days"}
    text = "\n".join(dry.lines())
    assert text.startswith("Dry run (nothing changed, nothing sent): rule stale-jobs")
    assert "would change    #" in text and '"status": "CANCELLED"' in text
    assert "would send" in text and "<c1@example.test>" in text and "[follow-up]" in text

    real = run_rule(disp, "stale-jobs")
    assert not real.dry_run
    assert brief(real) == brief(dry)  # what the dry run said is what happened
    assert spy.calls == 2
    assert engine.get_subject("job", "J1").attributes["status"] == "CANCELLED"  # type: ignore[union-attr]
    assert engine.get_subject("job", "J2").attributes["status"] == "open"  # type: ignore[union-attr]
    with engine.db.connect() as c:
        sent = c.execute(
            sa.select(deliveries.c.recipient).where(deliveries.c.state == "sent")
        ).scalars()
        assert sorted(sent) == ["c1", "u1"]

    again = run_rule(disp, "stale-jobs")
    assert again.items == [] and again.notes == ["nothing of this rule is due now"]
    engine.db.dispose()


def test_only_due_deliveries_of_the_rule_and_subject_run_and_deferrals_are_listed(
    db_url: str, tmpl: Path
) -> None:
    clock = VirtualClock(T0)
    engine, disp, spy = make(db_url, tmpl, clock)
    people(engine)
    due = (T0 + timedelta(hours=4, minutes=59)).isoformat()  # 16:59: office hours end at 17
    engine.upsert_subjects([job("J1", due_at=due), job("J2", due_at=due), job("J3", due_at=due)])
    engine.upsert_subject(job("J4", due_at=(T0 + timedelta(days=3)).isoformat()))  # later
    clock.set(T0 + timedelta(hours=5, minutes=5))  # 17:05: the office is closed

    only = run_rule(disp, "job-due", subject="job/J2")
    assert brief(only) == [("job-due", "job/J2", "c1", "sent", "Job J2 is due", False)]
    assert spy.calls == 1

    rest = run_rule(disp, "job-due", dry_run=True)
    assert [(i.subject, i.outcome) for i in rest.items] == [("job/J1", "sent"), ("job/J3", "sent")]
    assert spy.calls == 1

    windowed = run_rule(disp, "office-hours", subject="job/J1")
    (item,) = windowed.items
    assert item.outcome == "deferred"
    assert item.due_at == datetime(2026, 3, 4, 9, 0, tzinfo=UTC)  # the next opening
    assert "deferred" in "\n".join(windowed.lines())
    with engine.db.connect() as c:
        state = c.execute(
            sa.select(deliveries.c.state).where(deliveries.c.id == item.delivery_id)
        ).scalar()
    assert state == "pending"
    engine.db.dispose()


def test_a_schedule_rule_fires_an_occurrence_now(db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, disp, spy = make(db_url, tmpl, clock)
    people(engine)
    engine.upsert_subjects([job("J1"), job("J2"), job("J3", status="done")])
    nxt = engine.plan_schedules()  # the regular run: tomorrow 08:00
    assert nxt == datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
    clock.set(T0 + timedelta(minutes=7, seconds=30, microseconds=5))
    before = snapshot(engine.db)

    dry = run_rule(disp, "jobs-digest", dry_run=True)
    assert snapshot(engine.db) == before and spy.calls == 0
    assert dry.kind == "cron" and dry.recipients == ["m1", "m2"]
    assert dry.collected == {"open": "2 items: job/J1, job/J2"}
    assert brief(dry) == [
        ("jobs-digest", None, "m1", "sent", "2 open jobs", False),
        ("jobs-digest", None, "m2", "sent", "2 open jobs", False),
    ]
    text = "\n".join(dry.lines())
    assert "recipients: m1, m2" in text and "collected open: 2 items: job/J1, job/J2" in text

    real = run_rule(disp, "jobs-digest")
    assert brief(real) == brief(dry) and spy.calls == 2
    assert {i.occurrence for i in real.items} == {"2026-03-03T12:07:30Z"}  # now: a new identity
    with engine.db.connect() as c:
        rows = c.execute(
            sa.select(deliveries.c.occurrence, deliveries.c.state)
            .where(deliveries.c.rule == "jobs-digest")
            .order_by(deliveries.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ('"2026-03-04T08:00:00Z"', "pending"),  # the regular run is untouched
        ('"2026-03-04T08:00:00Z"', "pending"),
        ('"2026-03-03T12:07:30Z"', "sent"),
        ('"2026-03-03T12:07:30Z"', "sent"),
    ]
    twice = run_rule(disp, "jobs-digest")  # the same second: that occurrence ran already
    assert twice.items == [] and "fired already" in twice.notes[0]
    engine.db.dispose()


def test_bad_requests_are_refused_with_what_to_do(db_url: str, tmpl: Path) -> None:
    clock = VirtualClock(T0)
    engine, disp, _ = make(db_url, tmpl, clock)
    with pytest.raises(NotFound, match="no rule named 'nope'; the rules are: stale-jobs"):
        run_rule(disp, "nope")
    with pytest.raises(InvalidInput, match="schedule rule") as e:
        run_rule(disp, "jobs-digest", subject="job/J1")
    assert e.value.field == "subject"
    with pytest.raises(InvalidInput, match="watches subjects of kind 'job', not 'invoice'"):
        run_rule(disp, "job-due", subject="invoice/1")
    with pytest.raises(InvalidInput, match="KIND/KEY"):
        run_rule(disp, "job-due", subject="J1")
    engine.db.dispose()


def test_the_sandbox_keeps_every_write_to_itself(db_url: str) -> None:
    """What the dry run relies on: commits inside the sandbox, even failed transactions in
    it, never reach the database."""
    db = make_engine(db_url)
    with sandbox(db) as box:
        now = T0
        with write_transaction(box) as c:
            c.execute(
                sa.insert(subjects).values(
                    kind="job",
                    key="J9",
                    attributes={},
                    recipients={},
                    revision=1,
                    acknowledged=[],
                    created_at=now,
                    updated_at=now,
                )
            )
        with pytest.raises(sa.exc.IntegrityError):
            with write_transaction(box) as c:
                c.execute(
                    sa.insert(subjects).values(
                        kind="job",
                        key="J9",
                        attributes={},
                        recipients={},
                        revision=1,
                        acknowledged=[],
                        created_at=now,
                        updated_at=now,
                    )
                )
        with box.connect() as c:  # the first write is still there, the failed one is not
            assert c.execute(sa.select(sa.func.count()).select_from(subjects)).scalar() == 1
        with db.connect() as c:  # and nobody else sees either
            assert c.execute(sa.select(sa.func.count()).select_from(subjects)).scalar() == 0
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(subjects)).scalar() == 0
    db.dispose()


# --------------------------------------------------------------------------- CLI


def cli_has(name: str) -> bool:
    from duly.cli import main

    return name in main.commands  # type: ignore[attr-defined]


@pytest.mark.skipif(not cli_has("run"), reason="`duly run` is wired into cli.py by a diff")
def test_duly_run_by_hand_with_help_env_vars_and_a_log(
    sqlite_url: str, tmpl: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from duly.cli import main

    now = datetime.now(UTC)
    clock = VirtualClock(now - timedelta(hours=1))
    engine, _, _ = make(sqlite_url, tmpl, clock)
    people(engine)
    # planned an hour ago, due 30 minutes ago
    engine.upsert_subject(
        job("J1", last_activity_at=(now - timedelta(days=90, minutes=30)).isoformat())
    )
    engine.db.dispose()
    monkeypatch.setenv("DULY_RULES", str(tmpl / "duly.yaml"))
    monkeypatch.setenv("DULY_DATABASE_URL", sqlite_url)
    runner = CliRunner()

    res = runner.invoke(main, ["run", "--help"])
    assert res.exit_code == 0
    for env in ("DULY_RUN_RULE", "DULY_RUN_DRY_RUN", "DULY_RUN_SUBJECT", "DULY_DATABASE_URL"):
        assert env in res.output

    caplog.set_level(logging.INFO, logger="duly.run")
    res = runner.invoke(main, ["run", "stale-jobs", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would change" in res.stdout and "would send" in res.stdout
    assert "dry run: would change delivery" in caplog.text  # logged
    caplog.clear()
    with make_engine(sqlite_url).connect() as c:
        assert c.execute(sa.select(subjects.c.attributes)).scalar()["status"] == "open"

    monkeypatch.setenv("DULY_RUN_RULE", "stale-jobs")
    monkeypatch.setenv("DULY_RUN_SUBJECT", "job/J1")
    res = runner.invoke(main, ["run"])
    assert res.exit_code == 0, res.output
    assert "changed" in res.stdout and "run: changed delivery" in caplog.text
    assert "run: sent delivery" in caplog.text
    with make_engine(sqlite_url).connect() as c:
        status = c.execute(sa.select(subjects.c.attributes)).scalar()["status"]
    assert status == "CANCELLED"

    res = runner.invoke(main, ["run", "nope"])
    assert res.exit_code == 2 and "no rule named 'nope'" in res.output
    monkeypatch.delenv("DULY_RUN_SUBJECT")
    res = runner.invoke(main, ["run", "jobs-digest", "--subject", "job/J1"])
    assert res.exit_code == 2 and "--subject" in res.output


def test_a_dry_run_signs_acknowledge_links_without_making_the_secret(
    db_url: str, tmpl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acknowledge secret is generated on first use and stored: a dry run must not be
    that first use (it would write), so it signs its never-sent links with a throwaway one."""
    import inspect

    from duly.delivery.ack import SECRET_ENV, AckLinks
    from duly.store import tables

    if "ack_links" not in inspect.signature(Renderer).parameters or not hasattr(tables, "settings"):
        pytest.skip("Renderer(ack_links=...) and the settings table come with the wiring diff")
    monkeypatch.delenv(SECRET_ENV, raising=False)
    (tmpl / "templates" / "closed.email.txt").write_text(
        "Subject: Job {{ subject.key }} closed\nNot yours? {{ ack_link() }}\n"
    )
    clock = VirtualClock(T0)
    engine, _, spy = make(db_url, tmpl, clock)
    renderer = Renderer(  # type: ignore[call-arg]
        engine.rules.templates_dir, ack_links=AckLinks(db=engine.db, clock=clock)
    )
    disp = Dispatcher(engine, {"email": spy}, renderer, send_workers=1)
    people(engine)
    engine.upsert_subject(job("J1", last_activity_at=(T0 - timedelta(days=89)).isoformat()))
    clock.set(T0 + timedelta(days=1, hours=1))
    dry = run_rule(disp, "stale-jobs", dry_run=True)
    assert [i.title for i in dry.items if i.follow_up] == ["Job J1 closed"] * 2
    with engine.db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(tables.settings)).scalar() == 0
    real = run_rule(disp, "stale-jobs")
    assert [i.outcome for i in real.items if i.follow_up] == ["sent", "sent"]
    with engine.db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(tables.settings)).scalar() == 1
        body = c.execute(
            sa.select(deliveries.c.body_text).where(deliveries.c.state == "sent")
        ).scalar()
    assert "/a/" in body
    engine.db.dispose()
