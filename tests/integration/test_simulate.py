"""`duly simulate` per docs/reference/simulate.md, through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duly.cli import main

RULES = """
timezone: Europe/London
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - name: due-soon
        at: "due_at - 3d"
        time: "09:00"
        template: note
      - name: overdue
        at: "due_at + 1d"
        template: note
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: note
  - name: viewed
    subject: invoice
    on: invoice.viewed
    delay: 10m
    to: [customer]
    template: note
  - name: expiry
    subject: invoice
    steps:
      - name: write-off
        at: "due_at + 60d"
        set: {status: written_off}
"""


def write(tmp: Path, timeline: list[dict], rules: str = RULES) -> tuple[Path, Path]:
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "note.email.txt").write_text(
        "Subject: {{ rule.name }} {{ subject.key }}\nHello {{ recipient.name }}\n"
    )
    r = tmp / "duly.yaml"
    r.write_text(rules)
    t = tmp / "timeline.jsonl"
    t.write_text("".join(json.dumps(x) + "\n" for x in timeline))
    return r, t


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["simulate", *args])
    return res.exit_code, res.stdout, res.stderr


ALICE = {
    "at": "2026-03-01T08:00:00Z",
    "recipient": {"id": "c1", "name": "Alice", "email": "a@x.test", "timezone": "Europe/London"},
}


def inv(at: str, status: str = "sent", due: str = "2026-03-15", key: str = "INV-1") -> dict:
    return {
        "at": at,
        "subject": {
            "kind": "invoice",
            "key": key,
            "attributes": {"status": status, "due_at": due},
            "recipients": {"customer": "c1"},
        },
    }


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_reminders_payment_and_set_in_spec_format(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            inv("2026-03-01T08:00:00Z"),
            {
                "at": "2026-03-02T10:00:00Z",
                "event": {"id": "e1", "name": "invoice.viewed", "subject": "invoice/INV-1"},
            },
            {
                "at": "2026-03-02T11:00:00Z",
                "event": {"id": "e1", "name": "invoice.viewed", "subject": "invoice/INV-1"},
            },
            inv("2026-03-20T10:00:00Z", status="paid"),
        ],
    )
    code, out, err = run(str(r), str(t), "--until", "2026-06-01T00:00:00Z")
    assert code == 0, err
    got = rows(out)
    assert [(x["at"], x["rule"], x["step"], x["outcome"], x["reason"]) for x in got] == [
        (
            "2026-03-02T10:10:00Z",
            "viewed",
            None,
            "sent",
            None,
        ),  # the repeated event id sends nothing
        ("2026-03-12T09:00:00Z", "invoice-reminders", "due-soon", "sent", None),
        ("2026-03-16T00:00:00Z", "invoice-reminders", "overdue", "sent", None),
        ("2026-03-20T10:00:00Z", "receipt", None, "sent", None),
        # 15 March + 60 days = 14 May 00:00 BST = 13 May 23:00Z
        ("2026-05-13T23:00:00Z", "expiry", "write-off", "set", None),
    ]
    first = got[1]
    assert list(first) == [
        "at",
        "planned",
        "rule",
        "step",
        "occurrence",
        "subject",
        "recipient",
        "channel",
        "category",
        "outcome",
        "reason",
        "attempt",
        "title",
        "message",
    ]
    assert first["title"] == "invoice-reminders INV-1" and first["attempt"] == 1
    assert (
        first["occurrence"] == 0 and first["channel"] == "email" and first["category"] == "reminder"
    )
    receipt = next(x for x in got if x["rule"] == "receipt")
    assert receipt["occurrence"] == 2 and receipt["category"] == "transactional"  # revision 2
    setrow = next(x for x in got if x["outcome"] == "set")
    assert setrow["recipient"] is None and setrow["channel"] is None
    assert setrow["changes"] == {"status": "written_off"}


def test_output_is_deterministic_and_table_format_summarises(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            inv("2026-03-01T08:00:00Z"),
            {
                "at": "2026-03-12T08:00:00Z",
                "fail": {"channel": "email", "until": "2026-03-12T09:03:00Z"},
            },
        ],
    )
    a = run(str(r), str(t))
    b = run(str(r), str(t))
    assert a == b and a[0] == 0
    code, out, _ = run(str(r), str(t), "--format", "table")
    assert code == 0
    assert "outcomes:" in out.splitlines()[-1] and "sent: " in out


@pytest.mark.parametrize(
    ("line", "expected", "at_between"),
    [
        pytest.param(
            {
                "at": "2026-03-12T08:00:00Z",
                "fail": {"channel": "email", "until": "2026-03-12T09:02:30Z"},
            },
            {"outcome": "sent", "attempt": 3, "planned": "2026-03-12T09:00:00Z"},
            # tries at 09:00:00, +60 s (±10%), +120 s (±10%): the third attempt is after 09:02:30
            ("2026-03-12T09:02:30Z", "2026-03-12T09:03:20Z"),
            id="temporary-failure-retries-and-reports-the-attempt",
        ),
        pytest.param(
            {
                "at": "2026-03-12T08:00:00Z",
                "fail": {"channel": "email", "until": "2026-03-13T00:00:00Z", "kind": "permanent"},
            },
            {"outcome": "failed", "reason": "permanent_error", "attempt": 1},
            None,
            id="permanent-failure-fails-at-once",
        ),
        pytest.param(
            {"at": "2026-03-11T00:00:00Z", "down": {"until": "2026-03-13T00:00:00Z"}},
            {"at": "2026-03-13T00:00:00Z", "outcome": "skipped", "reason": "missed"},
            None,
            id="long-downtime-skips-stale-reminders-as-missed",
        ),
    ],
)
def test_the_due_soon_reminder_after_a_failure_or_downtime(
    tmp_path: Path, line: dict, expected: dict, at_between: tuple[str, str] | None
) -> None:
    r, t = write(tmp_path, [ALICE, inv("2026-03-01T08:00:00Z"), line])
    _, out, _ = run(str(r), str(t))
    due = next(x for x in rows(out) if x["step"] == "due-soon")
    assert {key: due.get(key) for key in expected} == expected
    if at_between is not None:
        assert at_between[0] <= due["at"] <= at_between[1]


def test_downtime_catch_up_follows_grace(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            inv("2026-03-01T08:00:00Z"),
            inv("2026-03-01T08:00:00Z", key="INV-2", due="2026-03-20"),
            {"at": "2026-03-12T08:00:00Z", "down": {"until": "2026-03-12T20:00:00Z"}},
            {"at": "2026-03-16T23:00:00Z", "down": {"until": "2026-03-17T12:30:00Z"}},
        ],
    )
    _, out, _ = run(str(r), str(t))
    got = {(x["subject"], x["step"]): x for x in rows(out) if x["rule"] == "invoice-reminders"}
    # down 11 h past 09:00 → within the 12 h grace: sent late, at the end of the downtime
    assert got[("invoice/INV-1", "due-soon")]["outcome"] == "sent"
    assert got[("invoice/INV-1", "due-soon")]["at"] == "2026-03-12T20:00:00Z"
    # overdue due 16 March 00:00 → 12:30 next day is 12.5 h late (but the engine was up then):
    assert got[("invoice/INV-1", "overdue")]["at"] == "2026-03-16T00:00:00Z"
    # INV-2's due-soon (17 March 09:00) came back at 12:30: 3.5 h late, sent
    assert got[("invoice/INV-2", "due-soon")]["at"] == "2026-03-17T12:30:00Z"


def test_until_limits_virtual_time(tmp_path: Path) -> None:
    r, t = write(tmp_path, [ALICE, inv("2026-03-01T08:00:00Z")])
    _, out, _ = run(str(r), str(t), "--until", "2026-03-13T00:00:00Z")
    assert [x["step"] for x in rows(out)] == ["due-soon"]


def test_no_render_needs_no_templates(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [ALICE, inv("2026-03-01T08:00:00Z")],
        rules=RULES.replace("template: note", "template: missing"),
    )
    code, _, err = run(str(r), str(t))
    assert code == 2 and "missing" in err
    code, out, _ = run(str(r), str(t), "--no-render")
    assert code == 0
    sent = [x for x in rows(out) if x["outcome"] == "sent"]
    assert sent and all("title" not in x and x["message"] for x in sent)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("not json", "timeline.jsonl:2: not valid JSON"),
        ('{"subject": {"kind": "a", "key": "b"}}', "timeline.jsonl:2: at: missing"),
        (
            '{"at": "yesterday", "delete": "a/b"}',
            "timeline.jsonl:2: at: 'yesterday' is not an ISO 8601",
        ),
        ('{"at": "2026-03-01T09:00:00", "delete": "a/b"}', "needs a UTC offset"),
        ('{"at": "2026-03-01T09:00:00Z"}', "timeline.jsonl:2: expected exactly one of"),
        ('{"at": "2026-03-01T09:00:00Z", "delete": "a/b", "ack": {}}', "got 2"),
        (
            '{"at": "2026-03-01T09:00:00Z", "subject": {"kind": "a"}}',
            "timeline.jsonl:2: subject.key",
        ),
        (
            '{"at": "2026-03-01T09:00:00Z", "surprise": 1}',
            "timeline.jsonl:2: surprise: unknown key",
        ),
        (
            '{"at": "2026-02-01T09:00:00Z", "delete": "a/b"}',
            "timeline.jsonl:2: at: lines must be in time order",
        ),
        (
            '{"at": "2026-03-01T09:00:00Z", "fail": {"channel": "email", "until": "2026-03-02T00:00:00Z", "kind": "odd"}}',
            "fail.kind",
        ),
    ],
)
def test_invalid_timeline_exits_2_naming_file_line_and_field(
    tmp_path: Path, line: str, needle: str
) -> None:
    r, t = write(tmp_path, [ALICE])
    t.write_text(t.read_text() + line + "\n")
    code, out, err = run(str(r), str(t))
    assert code == 2 and out == ""
    assert needle in err


def test_invalid_rule_file_exits_2(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [ALICE],
        rules='rules:\n  - name: x\n    subject: invoice\n    at: "due_at - 3 days"\n',
    )
    code, _, err = run(str(r), str(t))
    assert code == 2 and "duly.yaml:4" in err


def test_lines_the_api_would_refuse_are_reported_and_skipped(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            {"at": "2026-03-01T08:00:00Z", "recipient": {"id": "zz", "timezone": "Mars/Olympus"}},
            {
                "at": "2026-03-01T08:00:00Z",
                "event": {"id": "e", "name": "invoice.viewed", "subject": "invoice/NOPE"},
            },
            inv("2026-03-01T08:00:00Z"),
        ],
    )
    code, out, err = run(str(r), str(t))
    assert code == 0
    assert "timeline.jsonl:2: timezone: unknown timezone 'Mars/Olympus'" in err
    assert "timeline.jsonl:3: subject: no subject invoice/NOPE" in err
    assert any(x["step"] == "due-soon" for x in rows(out))


def test_past_and_no_date_print_once_at_planning_time(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            inv("2026-03-14T08:00:00Z"),
            inv("2026-03-14T09:00:00Z"),  # same state again: nothing more printed
            {
                "at": "2026-03-14T10:00:00Z",
                "subject": {
                    "kind": "invoice",
                    "key": "N",
                    "attributes": {"status": "sent"},
                    "recipients": {"customer": "c1"},
                },
            },
        ],
    )
    _, out, _ = run(str(r), str(t))
    skipped = [
        (x["at"], x["subject"], x["step"], x["reason"])
        for x in rows(out)
        if x["outcome"] == "skipped"
    ]
    assert skipped == [
        ("2026-03-14T08:00:00Z", "invoice/INV-1", "due-soon", "past"),
        # ordered by at, then rule: "expiry" sorts before "invoice-reminders"
        ("2026-03-14T10:00:00Z", "invoice/N", "write-off", "no_date"),
        ("2026-03-14T10:00:00Z", "invoice/N", "due-soon", "no_date"),
        ("2026-03-14T10:00:00Z", "invoice/N", "overdue", "no_date"),
    ]


def test_cancel_then_plan_again_prints_both_outcomes(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            inv("2026-03-01T08:00:00Z"),
            {"at": "2026-03-02T08:00:00Z", "delete": "invoice/INV-1"},
            inv("2026-03-03T08:00:00Z"),
        ],
    )
    _, out, _ = run(str(r), str(t))
    due = [(x["at"], x["outcome"], x["reason"]) for x in rows(out) if x["step"] == "due-soon"]
    assert due == [
        ("2026-03-02T08:00:00Z", "cancelled", "subject_deleted"),
        ("2026-03-12T09:00:00Z", "sent", None),
    ]


def test_open_ended_repeat_rolls_on_past_its_planning_horizon(tmp_path: Path) -> None:
    rules = """
rules:
  - name: weekly
    subject: plan
    to: [owner]
    steps:
      - name: nudge
        at: "start_at"
        repeat: {every: 1w}
        template: note
"""
    r, t = write(
        tmp_path,
        [
            dict(ALICE, at="2026-01-01T00:00:00Z"),
            {
                "at": "2026-01-01T00:00:00Z",
                "subject": {
                    "kind": "plan",
                    "key": "P",
                    "attributes": {"start_at": "2026-01-05T10:00:00Z"},
                    "recipients": {"owner": "c1"},
                },
            },
        ],
        rules=rules,
    )
    code, out, err = run(str(r), str(t), "--until", "2026-12-31T00:00:00Z")
    assert code == 0, err
    sent = [x for x in rows(out) if x["outcome"] == "sent"]
    # every Monday of 2026 from 5 January: 52 weeks, far past the 90-day planning horizon
    assert len(sent) == 52
    assert [x["occurrence"] for x in sent] == list(range(52))
    assert sent[-1]["at"] == "2026-12-28T10:00:00Z"


def test_simulate_needs_no_channel_configuration(tmp_path: Path) -> None:
    rules = RULES.replace(
        "    to: [customer]\n    steps:",
        "    to: [customer]\n    channels: [sms, email]\n    steps:",
        1,
    )
    assert "channels: [sms, email]" in rules
    r, t = write(tmp_path, [ALICE, inv("2026-03-01T08:00:00Z")], rules=rules)
    (tmp_path / "templates" / "note.sms.txt").write_text("{{ subject.key }} due\n")
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    # Alice has no phone: the SMS is skipped no_address, the email is sent
    got = {
        (x["step"], x["channel"]): (x["outcome"], x["reason"])
        for x in rows(out)
        if x["rule"] == "invoice-reminders"
    }
    assert got[("due-soon", "sms")] == ("skipped", "no_address")
    assert got[("due-soon", "email")] == ("sent", None)


def test_acknowledging_stops_the_repeats_for_good(tmp_path: Path) -> None:
    rules = """
rules:
  - name: chase
    subject: ticket
    to: [owner]
    steps:
      - name: nag
        at: "opened_at + 1h"
        repeat: {every: 1h, count: 4}
        template: note
"""
    r, t = write(
        tmp_path,
        [
            dict(ALICE, at="2026-03-01T08:00:00Z"),
            {
                "at": "2026-03-01T08:00:00Z",
                "subject": {
                    "kind": "ticket",
                    "key": "T1",
                    "attributes": {"opened_at": "2026-03-01T08:00:00Z"},
                    "recipients": {"owner": "c1"},
                },
            },
            {
                "at": "2026-03-01T10:30:00Z",
                "ack": {"rule": "chase", "subject": "ticket/T1", "recipient": "c1"},
            },
            # a later upsert must not bring the repeats back
            {
                "at": "2026-03-01T10:45:00Z",
                "subject": {
                    "kind": "ticket",
                    "key": "T1",
                    "attributes": {"opened_at": "2026-03-01T08:00:00Z", "x": 1},
                    "recipients": {"owner": "c1"},
                },
            },
        ],
        rules=rules,
    )
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    got = [(x["occurrence"], x["outcome"], x["reason"]) for x in rows(out)]
    assert got == [
        (0, "sent", None),
        (1, "sent", None),
        (2, "cancelled", "acknowledged"),
        (3, "cancelled", "acknowledged"),
    ]


def test_each_change_gets_its_own_messages_even_while_an_earlier_one_waits(tmp_path: Path) -> None:
    rules = """
rules:
  - name: status-changed
    subject: ticket
    on: {change: status}
    delay: 1h
    to: [owner]
    template: note
"""

    def ticket(at: str, status: str) -> dict:
        return {
            "at": at,
            "subject": {
                "kind": "ticket",
                "key": "T1",
                "attributes": {"status": status},
                "recipients": {"owner": "c1"},
            },
        }

    r, t = write(
        tmp_path,
        [
            dict(ALICE, at="2026-03-01T08:00:00Z"),
            ticket("2026-03-01T08:00:00Z", "open"),
            ticket("2026-03-01T08:10:00Z", "pending"),
        ],
        rules=rules,
    )
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    assert [(x["at"], x["occurrence"], x["outcome"]) for x in rows(out)] == [
        ("2026-03-01T09:00:00Z", 1, "sent"),
        ("2026-03-01T09:10:00Z", 2, "sent"),
    ]


def test_simulate_looks_addresses_up_by_the_configured_channel_type(tmp_path: Path) -> None:
    rules = """
channels:
  text: {type: twilio-sms, account: "${SID}", token: "${TOKEN}", from: "+15550100000"}
  mail: {type: smtp, url: "${SMTP}", from: "a@b.test"}
rules:
  - name: r
    subject: job
    to: [owner]
    channels: [text, mail]
    steps: [{name: s, at: due_at, template: note}]
"""
    r, t = write(
        tmp_path,
        [
            {
                "at": "2026-03-01T08:00:00Z",
                "recipient": {"id": "c1", "email": "a@x.test", "phone": "+15550100001"},
            },
            {
                "at": "2026-03-01T08:00:00Z",
                "subject": {
                    "kind": "job",
                    "key": "J",
                    "attributes": {"due_at": "2026-03-02T08:00:00Z"},
                    "recipients": {"owner": "c1"},
                },
            },
        ],
        rules=rules,
    )
    (tmp_path / "templates" / "note.text.txt").write_text("{{ subject.key }}\n")
    (tmp_path / "templates" / "note.mail.txt").write_text("Subject: {{ subject.key }}\nx\n")
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    assert sorted((x["channel"], x["outcome"]) for x in rows(out)) == [
        ("mail", "sent"),
        ("text", "sent"),
    ]


def test_a_steps_own_set_does_not_cancel_its_messages_in_other_timezones(tmp_path: Path) -> None:
    rules = """
timezone: Europe/London
rules:
  - name: stale-jobs
    subject: job
    if: "status == 'open'"
    to: [owner, creator]
    steps:
      - name: close
        at: "last_activity_at + 90d"
        time: "09:00"
        set: {status: CANCELLED}
        template: note
"""
    r, t = write(
        tmp_path,
        [
            {
                "at": "2026-01-01T00:00:00Z",
                "recipient": {"id": "ldn", "email": "l@x.test", "timezone": "Europe/London"},
            },
            {
                "at": "2026-01-01T00:00:00Z",
                "recipient": {"id": "nyc", "email": "n@x.test", "timezone": "America/New_York"},
            },
            {
                "at": "2026-01-01T00:00:00Z",
                "subject": {
                    "kind": "job",
                    "key": "J1",
                    "attributes": {"status": "open", "last_activity_at": "2026-01-01T12:00:00Z"},
                    "recipients": {"owner": "ldn", "creator": "nyc"},
                },
            },
        ],
        rules=rules,
    )
    code, out, err = run(str(r), str(t), "--until", "2026-05-01T00:00:00Z")
    assert code == 0, err
    got = [(x["at"], x["recipient"], x["outcome"]) for x in rows(out)]
    # 1 April 09:00 London (08:00Z, BST) and 09:00 New York (13:00Z, EDT); the set acts
    # with the last of them (printed first at that instant: nulls sort first)
    assert got == [
        ("2026-04-01T08:00:00Z", "ldn", "sent"),
        ("2026-04-01T13:00:00Z", None, "set"),
        ("2026-04-01T13:00:00Z", "nyc", "sent"),
    ]


LADDER = """
timezone: Europe/London
rules:
  - name: chase
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - {name: r1, at: "due_at + 1d", template: note}
      - {name: r2, at: "due_at + 3d", template: note}
      - {name: r3, at: "due_at + 5d", template: note}
      - {name: r4, at: "due_at + 20d", template: note}
  - name: receipt
    subject: invoice
    on: invoice.viewed
    category: transactional
    to: [customer]
    template: note
"""


def held(at: str, hold: str | None) -> dict:
    return {
        "at": at,
        "subject": {
            "kind": "invoice",
            "key": "I",
            "attributes": {"status": "sent", "due_at": "2026-03-10"},
            "recipients": {"customer": "c1"},
            "hold_until": hold,
        },
    }


def test_hold_skips_what_falls_due_and_resumes_with_one_message(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            held("2026-03-01T08:00:00Z", "2026-03-20T12:00:00Z"),
            {
                "at": "2026-03-12T00:00:00Z",
                "event": {"id": "v1", "name": "invoice.viewed", "subject": "invoice/I"},
            },
        ],
        rules=LADDER,
    )
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    got = [(x["at"], x["rule"], x["step"], x["outcome"], x["reason"]) for x in rows(out)]
    assert got == [
        # r1 and r2 fall due during the hold: skipped; r3, the latest, moves to its end
        ("2026-03-01T08:00:00Z", "chase", "r1", "skipped", "held"),
        ("2026-03-01T08:00:00Z", "chase", "r2", "skipped", "held"),
        ("2026-03-12T00:00:00Z", "receipt", None, "sent", None),  # transactional: not held
        ("2026-03-20T12:00:00Z", "chase", "r3", "sent", None),
        ("2026-03-29T23:00:00Z", "chase", "r4", "sent", None),  # 30 March 00:00 BST, as planned
    ]


def test_clearing_a_hold_early_puts_the_rest_back_at_their_planned_times(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [
            ALICE,
            held("2026-03-01T08:00:00Z", "2026-03-20T12:00:00Z"),
            held("2026-03-11T12:00:00Z", None),
        ],
        rules=LADDER,
    )
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    got = [(x["at"], x["step"], x["outcome"], x["reason"]) for x in rows(out)]
    assert got == [
        ("2026-03-01T08:00:00Z", "r1", "skipped", "held"),
        ("2026-03-01T08:00:00Z", "r2", "skipped", "held"),
        # cleared on the 11th: r1's time (11 March 00:00) has passed, it stays skipped;
        # r2 (13 March) and r3 (15 March) go out at their planned times
        ("2026-03-13T00:00:00Z", "r2", "sent", None),
        ("2026-03-15T00:00:00Z", "r3", "sent", None),
        ("2026-03-29T23:00:00Z", "r4", "sent", None),
    ]


def test_event_messages_of_a_held_subject_wait_for_the_end_of_the_hold(tmp_path: Path) -> None:
    rules = LADDER.replace("    category: transactional\n", "")
    r, t = write(
        tmp_path,
        [
            ALICE,
            held("2026-03-01T08:00:00Z", "2026-03-05T12:00:00Z"),
            {
                "at": "2026-03-02T00:00:00Z",
                "event": {"id": "v1", "name": "invoice.viewed", "subject": "invoice/I"},
            },
        ],
        rules=rules,
    )
    _, out, _ = run(str(r), str(t))
    ev = [(x["at"], x["planned"], x["outcome"]) for x in rows(out) if x["rule"] == "receipt"]
    assert ev == [("2026-03-05T12:00:00Z", "2026-03-02T00:00:00Z", "sent")]


def test_an_indefinite_hold_keeps_the_latest_until_it_is_cleared(tmp_path: Path) -> None:
    r, t = write(
        tmp_path,
        [ALICE, held("2026-03-01T08:00:00Z", "indefinite")],
        rules=LADDER,
    )
    code, out, err = run(str(r), str(t), "--until", "2026-06-01T00:00:00Z")
    assert code == 0, err
    got = [(x["at"], x["step"], x["outcome"], x["reason"]) for x in rows(out)]
    # everything falls due before the hold ends: r1 to r3 held, r4 (the latest) waits
    assert got == [
        ("2026-03-01T08:00:00Z", "r1", "skipped", "held"),
        ("2026-03-01T08:00:00Z", "r2", "skipped", "held"),
        ("2026-03-01T08:00:00Z", "r3", "skipped", "held"),
    ]
    assert "9000" not in out
    code, table, err = run(str(r), str(t), "--until", "2026-06-01T00:00:00Z", "--format", "table")
    assert code == 0, err
    assert "9000" not in table


@pytest.mark.parametrize(
    ("cleared", "sent_at"),
    [
        # r4's own time (30 March 00:00 BST) has passed: it goes at once
        ("2026-04-02T10:00:00Z", "2026-04-02T10:00:00Z"),
        # cleared before it: it goes at its own time
        ("2026-03-16T10:00:00Z", "2026-03-29T23:00:00Z"),
    ],
)
def test_clearing_an_indefinite_hold_sends_what_waited(
    tmp_path: Path, cleared: str, sent_at: str
) -> None:
    rules = LADDER.replace("    category: transactional\n", "")
    r, t = write(
        tmp_path,
        [
            ALICE,
            held("2026-03-01T08:00:00Z", "indefinite"),
            {
                "at": "2026-03-02T00:00:00Z",
                "event": {"id": "v1", "name": "invoice.viewed", "subject": "invoice/I"},
            },
            held(cleared, None),
        ],
        rules=rules,
    )
    code, out, err = run(str(r), str(t), "--until", "2026-06-01T00:00:00Z")
    assert code == 0, err
    sent = [(x["at"], x["rule"], x["step"]) for x in rows(out) if x["outcome"] == "sent"]
    # the event message waited for the hold too: it goes when it is cleared
    assert sent == sorted([(cleared, "receipt", None), (sent_at, "chase", "r4")])


def test_a_timeline_hold_until_must_be_a_time_indefinite_or_null(tmp_path: Path) -> None:
    r, t = write(tmp_path, [ALICE, held("2026-03-01T08:00:00Z", "forever")], rules=LADDER)
    code, _, err = run(str(r), str(t))
    assert code == 2
    assert "hold_until" in err


def test_batch_sends_one_message_for_several_subjects_and_each_row_keeps_its_outcome(
    tmp_path: Path,
) -> None:
    rules = """
rules:
  - name: overdue
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    batch: {window: 1h}
    steps: [{name: late, at: "due_at + 1d", template: many}]
"""

    def inv2(key: str, due: str, who: str = "c1") -> dict:
        return {
            "at": "2026-03-01T08:00:00Z",
            "subject": {
                "kind": "invoice",
                "key": key,
                "attributes": {"status": "sent", "due_at": due},
                "recipients": {"customer": who},
            },
        }

    r, t = write(
        tmp_path,
        [
            dict(ALICE, at="2026-03-01T08:00:00Z"),
            {"at": "2026-03-01T08:00:00Z", "recipient": {"id": "c2", "email": "b@x.test"}},
            inv2("A", "2026-03-10T09:00:00Z"),
            inv2("B", "2026-03-10T09:40:00Z"),
            inv2("C", "2026-03-10T10:30:00Z"),
            inv2("D", "2026-03-10T09:10:00Z", "c2"),
        ],
        rules=rules,
    )
    (tmp_path / "templates" / "many.email.txt").write_text(
        "Subject: You have {{ subjects|length }} overdue invoice{{ 's' if subjects|length > 1 }}\n"
        "{% for s in subjects %}{{ s.key }} {% endfor %}\n"
    )
    code, out, err = run(str(r), str(t))
    assert code == 0, err
    got = [
        (x["at"], x["subject"], x["recipient"], x["outcome"], x.get("title"), x["message"])
        for x in rows(out)
    ]
    a, b, d, c = got
    # A (09:00) and B (09:40, within the hour) go out together at 09:00, one message
    assert a[:5] == (
        "2026-03-11T09:00:00Z",
        "invoice/A",
        "c1",
        "sent",
        "You have 2 overdue invoices",
    )
    assert b[:5] == (
        "2026-03-11T09:00:00Z",
        "invoice/B",
        "c1",
        "sent",
        "You have 2 overdue invoices",
    )
    assert a[5] == b[5]
    # another recipient's invoice is its own message; C falls outside the window
    assert d[:5] == (
        "2026-03-11T09:10:00Z",
        "invoice/D",
        "c2",
        "sent",
        "You have 1 overdue invoice",
    )
    assert c[:5] == (
        "2026-03-11T10:30:00Z",
        "invoice/C",
        "c1",
        "sent",
        "You have 1 overdue invoice",
    )
    assert len({a[5], c[5], d[5]}) == 3
    # planned times stay each row's own
    assert [x["planned"] for x in rows(out)][:2] == ["2026-03-11T09:00:00Z", "2026-03-11T09:40:00Z"]


def test_event_messages_during_a_hold_keep_only_the_latest_never_a_burst(tmp_path: Path) -> None:
    rules = LADDER.replace("    category: transactional\n", "")
    r, t = write(
        tmp_path,
        [ALICE, held("2026-03-01T08:00:00Z", "2026-03-05T09:00:00Z")]
        + [
            {
                "at": f"2026-03-0{d}T00:00:00Z",
                "event": {"id": f"e{d}", "name": "invoice.viewed", "subject": "invoice/I"},
            }
            for d in (2, 3, 4)
        ],
        rules=rules,
    )
    _, out, _ = run(str(r), str(t))
    ev = [
        (x["at"], x["occurrence"], x["outcome"], x["reason"])
        for x in rows(out)
        if x["rule"] == "receipt"
    ]
    assert ev == [
        # each newer event skips the one waiting before it; the latest goes at the end
        ("2026-03-03T00:00:00Z", "e2", "skipped", "held"),
        ("2026-03-04T00:00:00Z", "e3", "skipped", "held"),
        ("2026-03-05T09:00:00Z", "e4", "sent", None),
    ]
