"""Schedule (cron) rules: collect, skip_empty, daylight saving, catch-up, once across processes."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from duly.cli import main
from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.engine.service import Engine
from duly.store.db import make_engine
from duly.store.tables import deliveries

RULES = """
timezone: Europe/London
groups:
  managers: [m1, m2]
rules:
  - name: jobs-digest
    cron: "0 8 * * mon-fri"
    to: [group:managers]
    collect:
      overdue: {subject: job, if: "status == 'open' and due_at < now"}
    skip_empty: true
    template: digest
  - name: weekly-stats
    cron: "0 8 * * mon"
    to: [id:m1]
    collect:
      totals: {stats: last_week}
    template: stats
  - name: job-reminders
    subject: job
    if: "status == 'open'"
    to: [owner]
    steps: [{name: due, at: "due_at", template: note}]
"""


def sim(tmp: Path, lines: list[dict], until: str, rules: str = RULES) -> list[dict]:
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "digest.email.txt").write_text(
        "Subject: {{ rule.name }}: {{ (overdue or [])|length }} overdue\n"
        "{% for j in overdue or [] %}{{ j.key }} {% endfor %}\n"
    )
    (tmp / "templates" / "note.email.txt").write_text("Subject: {{ subject.key }} is due\nx\n")
    (tmp / "templates" / "stats.email.txt").write_text(
        "Subject: {{ totals.total }} outcomes, {{ totals.by_outcome.get('sent', 0) }} sent\nx\n"
    )
    (tmp / "duly.yaml").write_text(rules)
    (tmp / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = CliRunner().invoke(
        main, ["simulate", str(tmp / "duly.yaml"), str(tmp / "t.jsonl"), "--until", until]
    )
    assert res.exit_code == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines()]


PEOPLE = [
    {"at": "2026-03-26T12:00:00Z", "recipient": {"id": "m1", "email": "m1@x.test"}},
    {
        "at": "2026-03-26T12:00:00Z",
        "recipient": {"id": "m2", "email": "m2@x.test", "timezone": "America/New_York"},
    },
]
JOB = {
    "at": "2026-03-26T12:00:00Z",
    "subject": {
        "kind": "job",
        "key": "J1",
        "attributes": {"status": "open", "due_at": "2026-03-27T10:00:00Z"},
        "recipients": {"owner": "m1"},
    },
}


def test_digest_runs_at_eight_local_in_the_rules_zone_across_dst_and_skips_when_empty(
    tmp_path: Path,
) -> None:
    rows = sim(
        tmp_path,
        [
            *PEOPLE,
            JOB,
            {
                "at": "2026-03-31T09:00:00Z",
                "subject": {
                    **JOB["subject"],
                    "attributes": {"status": "done", "due_at": "2026-03-27T10:00:00Z"},
                },
            },
        ],
        "2026-04-02T00:00:00Z",
    )
    digest = [
        (r["at"], r["recipient"], r["outcome"], r["reason"], r.get("title"))
        for r in rows
        if r["rule"] == "jobs-digest"
    ]
    assert digest == [
        # Friday 27 March 08:00 GMT: nothing overdue yet at 08:00 (due 10:00) → skipped empty
        ("2026-03-27T08:00:00Z", "m1", "skipped", "empty", None),
        ("2026-03-27T08:00:00Z", "m2", "skipped", "empty", None),
        # Monday 30 March, after the change to BST: 08:00 local = 07:00Z, for both (the
        # rule's zone, not the recipient's)
        ("2026-03-30T07:00:00Z", "m1", "sent", None, "jobs-digest: 1 overdue"),
        ("2026-03-30T07:00:00Z", "m2", "sent", None, "jobs-digest: 1 overdue"),
        ("2026-03-31T07:00:00Z", "m1", "sent", None, "jobs-digest: 1 overdue"),
        ("2026-03-31T07:00:00Z", "m2", "sent", None, "jobs-digest: 1 overdue"),
        # the job was closed on the 31st: nothing to report on 1 April
        ("2026-04-01T07:00:00Z", "m1", "skipped", "empty", None),
        ("2026-04-01T07:00:00Z", "m2", "skipped", "empty", None),
    ]
    assert all(
        r["subject"] is None and r["step"] is None for r in rows if r["rule"] != "job-reminders"
    )
    stats = [r for r in rows if r["rule"] == "weekly-stats"]
    # last week (23–29 March): the 27th's two empty digests and the job reminder sent
    assert [(r["at"], r["title"]) for r in stats] == [
        ("2026-03-30T07:00:00Z", "3 outcomes, 1 sent")
    ]


def test_after_downtime_one_catch_up_within_grace_never_a_burst(tmp_path: Path) -> None:
    rows = sim(
        tmp_path,
        [*PEOPLE, JOB, {"at": "2026-03-26T12:00:00Z", "down": {"until": "2026-03-31T12:00:00Z"}}],
        "2026-04-02T00:00:00Z",
    )
    digest = [
        (r["at"], r["occurrence"], r["recipient"], r["outcome"], r["reason"])
        for r in rows
        if r["rule"] == "jobs-digest" and r["recipient"] == "m1"
    ]
    assert digest == [
        # the occurrence planned before the outage is days late: missed
        ("2026-03-31T12:00:00Z", "2026-03-27T08:00:00Z", "m1", "skipped", "missed"),
        # 30 March never ran; the latest missed one (31 March 07:00Z, 5 h ago) runs once
        ("2026-03-31T12:00:00Z", "2026-03-31T07:00:00Z", "m1", "sent", None),
        ("2026-04-01T07:00:00Z", "2026-04-01T07:00:00Z", "m1", "sent", None),
    ]


def test_occurrences_before_the_simulation_starts_are_never_caught_up(tmp_path: Path) -> None:
    rows = sim(
        tmp_path,
        [dict(p, at="2026-03-30T07:30:00Z") for p in PEOPLE],
        "2026-03-31T00:00:00Z",
        rules=RULES.replace("    skip_empty: true\n", ""),
    )
    assert [r for r in rows if r["rule"] == "jobs-digest"] == []


def test_spring_gap_and_autumn_fold(tmp_path: Path) -> None:
    rules = """
timezone: Europe/London
rules:
  - name: night
    cron: "30 1 * * *"
    to: [id:m1]
    template: digest
"""
    rows = sim(
        tmp_path, [PEOPLE[0] | {"at": "2026-03-28T00:00:00Z"}], "2026-03-31T00:00:00Z", rules=rules
    )
    assert [r["at"] for r in rows] == [
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:30:00Z",
        "2026-03-30T00:30:00Z",
    ]
    rows = sim(
        tmp_path, [PEOPLE[0] | {"at": "2026-10-24T00:00:00Z"}], "2026-10-27T00:00:00Z", rules=rules
    )
    # 25 October 01:30 happens twice: once, at the earlier instant (BST, 00:30Z)
    assert [r["at"] for r in rows] == [
        "2026-10-24T00:30:00Z",
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ]


def test_an_occurrence_is_planned_once_however_many_processes_plan_it(db_url: str) -> None:
    rf = load_rules_text(RULES, check_templates=False)
    clock = VirtualClock(datetime(2026, 3, 30, 6, 0, tzinfo=UTC))
    engines = [Engine(rf, make_engine(db_url), clock=clock) for _ in range(4)]
    engines[0].put_recipient(Recipient("m1", email="m1@x.test"))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def go(e: Engine) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                e.plan_schedules()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=go, args=(e,)) for e in engines]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    with engines[0].db.connect() as c:
        got = c.execute(
            sa.select(deliveries.c.rule, deliveries.c.occurrence, deliveries.c.recipient).order_by(
                deliveries.c.rule, deliveries.c.recipient
            )
        ).all()
    assert [tuple(g) for g in got] == [
        ("jobs-digest", '"2026-03-30T07:00:00Z"', "m1"),
        ("jobs-digest", '"2026-03-30T07:00:00Z"', "m2"),
        ("weekly-stats", '"2026-03-30T07:00:00Z"', "m1"),
    ]
    for e in engines:
        e.db.dispose()


def test_collections_use_the_rules_zone_and_see_set_actions_of_the_same_second(
    tmp_path: Path,
) -> None:
    rules = """
timezone: UTC
groups:
  all: [tokyo, london]
rules:
  - name: close
    subject: task
    if: "status == 'open'"
    at: close_at
    set: {status: closed}
  - name: digest
    cron: "0 9 * * *"
    to: [group:all]
    collect:
      open: {subject: task, if: "status == 'open'"}
      y: {stats: yesterday}
    template: d
"""
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "d.email.txt").write_text(
        "Subject: {{ open|length }} open; {{ y.from.isoformat() }}\nx\n"
    )
    lines = [
        {
            "at": "2026-03-01T00:00:00Z",
            "recipient": {"id": "tokyo", "email": "t@x.test", "timezone": "Asia/Tokyo"},
        },
        {
            "at": "2026-03-01T00:00:00Z",
            "recipient": {"id": "london", "email": "l@x.test", "timezone": "Europe/London"},
        },
        {
            "at": "2026-03-01T00:00:00Z",
            "subject": {
                "kind": "task",
                "key": "T1",
                "attributes": {"status": "open", "close_at": "2026-03-02T09:00:00Z"},
            },
        },
        {
            "at": "2026-03-01T00:00:00Z",
            "subject": {"kind": "task", "key": "T2", "attributes": {"status": "open"}},
        },
    ]
    rows = sim(tmp_path, lines, "2026-03-02T12:00:00Z", rules=rules)
    got = [(r["at"], r["rule"], r["recipient"], r.get("title")) for r in rows]
    assert got == [
        ("2026-03-01T00:00:00Z", "close", None, None),  # T2 has no close_at: no_date
        ("2026-03-01T09:00:00Z", "digest", "london", "2 open; 2026-02-28T00:00:00+00:00"),
        ("2026-03-01T09:00:00Z", "digest", "tokyo", "2 open; 2026-02-28T00:00:00+00:00"),
        # T1 closes at 09:00:00, the same second as the digest: the digest already sees it
        ("2026-03-02T09:00:00Z", "close", None, None),
        ("2026-03-02T09:00:00Z", "digest", "london", "1 open; 2026-03-01T00:00:00+00:00"),
        ("2026-03-02T09:00:00Z", "digest", "tokyo", "1 open; 2026-03-01T00:00:00+00:00"),
    ]
