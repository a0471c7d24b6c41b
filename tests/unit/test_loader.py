"""The rule-file loader: the whole format of docs/reference/rules.md, and errors that say where."""

from __future__ import annotations

import textwrap
from datetime import time
from pathlib import Path
from typing import Any

import pytest

from duly.core.model import (
    AtExpr,
    Batch,
    Calendar,
    Category,
    ChannelConfig,
    Collect,
    Duration,
    Repeat,
    Retry,
    Trigger,
    WebhookAction,
    WebhookTarget,
    Window,
    parse_duration,
)
from duly.core.rules.loader import RuleError, RuleFileError, check_main, load_rules, load_rules_text

HERE = Path(__file__).parent / "rulefiles"
FULL = HERE / "full.yaml"
SECRET = "hunter2-do-not-print"
ENV = {
    "DULY_SMTP_URL": f"smtp://billing:{SECRET}@mail.test:587",
    "TWILIO_SID": "AC123",
    "OPS_SLACK_URL": "slack://T0/B0/xyz",
    "APP_WEBHOOK_SECRET": SECRET,
    "AUDIT_SECRET": SECRET,
    "AUDIT_URL": "https://audit.test",
}


def d(text: str) -> Duration:
    return parse_duration(text)


def load(text: str, **kw: Any) -> Any:
    kw.setdefault("check_templates", False)
    kw.setdefault("environ", ENV)
    return load_rules_text(textwrap.dedent(text), **kw)


def errors(text: str, **kw: Any) -> list[RuleError]:
    with pytest.raises(RuleFileError) as exc:
        load(text, **kw)
    assert str(exc.value) == "\n".join(str(e) for e in exc.value.errors)
    return exc.value.errors


def where(errs: list[RuleError]) -> list[tuple[int | None, str]]:
    return [(e.line, e.field) for e in errs]


# --------------------------------------------------------------------------- a full valid file


@pytest.fixture(scope="module")
def full() -> Any:
    return load_rules(FULL, environ=ENV)


def test_full_file_top_level(full: Any) -> None:
    assert full.path == str(FULL)
    assert full.templates_dir == str((HERE / "templates").absolute())
    assert full.timezone == "Europe/London"
    assert full.calendars == {
        "uk": Calendar(
            "uk", ("mon", "tue", "wed", "thu", "fri"), "GB", ("2026-12-24", "2026-12-31")
        ),
        "scotland": Calendar("scotland", ("mon", "tue", "wed", "thu", "fri"), "GB-SCT", ()),
        # YAML 1.1 would read NO as false; Norway it is. Full day names are accepted.
        "norway": Calendar("norway", ("mon", "tue"), "NO", ()),
    }
    assert full.groups == {"admins": ("ops-1", "ops-2"), "managers": ("m-1",)}
    assert full.limits == {"promotional": "1/7d", "reminder": "3/1d"}
    assert full.retention == {"sent": d("90d"), "failed": d("180d"), "skipped": d("180d")}
    assert full.webhooks == (
        WebhookTarget(
            "https://app.test/duly-hooks",
            ("subject.updated", "delivery.failed"),
            "APP_WEBHOOK_SECRET",
        ),
        WebhookTarget("https://audit.test/hook", (), "AUDIT_SECRET"),
    )
    assert full.allow_private_targets is True


def test_full_file_channels_expand_the_environment(full: Any) -> None:
    assert full.channels["email"] == ChannelConfig(
        "email", "smtp", {"url": ENV["DULY_SMTP_URL"], "from": "Acme Billing <billing@acme.test>"}
    )
    assert full.channels["sms"].options == {
        "account": "AC123",
        "token_file": "/run/secrets/twilio",
        "from": "+15550100000",
    }
    assert full.channels["whatsapp"].type == "twilio-whatsapp"
    assert full.channels["ops-chat"] == ChannelConfig(
        "ops-chat", "apprise", {"url": "slack://T0/B0/xyz"}
    )
    # YAML 1.2 scalars: numbers stay numbers, `yes` stays a string.
    assert full.channels["app"].options == {
        "url": "https://app.test/notify",
        "timeout": 5,
        "verify": "yes",
    }
    assert full.channels["inbox"] == ChannelConfig("inbox", "inbox")  # implicit


def test_full_file_date_rule_with_steps(full: Any) -> None:
    r = full.rule("invoice-reminders")
    assert r.kind == "steps" and r.line == 34
    assert (r.subject, r.condition, r.to, r.channels, r.fallback) == (
        "invoice", "status == 'sent'", ("customer",), ("email",), None,
    )  # fmt: skip
    assert r.category is Category.reminder
    assert r.window == Window(time(9), time(17), None, "uk")
    assert (r.min_gap, r.grace, r.expire) == (d("2d"), d("6h"), d("3d"))
    assert r.retry == Retry(3, d("5m"), 1.0)
    assert (r.priority, r.timezone, r.template, r.sends_message) == (
        7,
        "America/New_York",
        "invoice-reminders",
        True,
    )
    due, overdue, final, escalate = r.steps
    assert due.name == "due-soon" and due.line == 48
    assert due.at == AtExpr("due_at", ((-1, d("3d")),), "due_at - 3d")
    assert due.time_of_day == time(9, 0) and due.template == "invoice-due-soon"
    assert overdue.at == AtExpr("due_at", ((1, d("1d")),), "due_at + 1d")
    assert overdue.time_of_day is None
    assert final.time_of_day == time(12, 0)  # unquoted 12:00 is not the number 720
    assert final.repeat == Repeat(d("1d"), ("mon", "wed", "fri"), 6, None)
    assert final.to == ("customer", "account_manager")
    # A step without a name gets its 1-based position.
    assert escalate.name == "step-4"
    assert escalate.at == AtExpr("due_at", ((1, d("1w")), (-1, d("12h"))), "due_at + 1w - 12h")
    assert escalate.condition == "not acknowledged"
    assert escalate.to == ("group:managers", "id:cfo")
    assert escalate.channels == ("ops-chat",) and escalate.fallback is None
    assert escalate.category is Category.transactional
    assert escalate.window == Window(time(22), time(6), ("sat", "sun"), None)
    assert escalate.expire == d("1d") and escalate.batch == Batch(d("1h"))
    assert escalate.template == "escalation" and escalate.sends_message


def test_full_file_at_shorthand_with_fallback(full: Any) -> None:
    r = full.rule("quote-expiry")
    assert r.to == ("customer",)  # a single role reads as a list of one
    assert r.fallback == ("sms", "email") and r.channels == ()
    assert r.category is Category.promotional
    (step,) = r.steps
    assert step.name is None
    assert step.at == AtExpr(
        "expires_at", ((-1, Duration(business_days=2, text="2bd")),), "expires_at - 2bd"
    )
    assert step.time_of_day == time(8, 30)
    assert step.repeat == Repeat(
        d("2h"), None, None, AtExpr("expires_at", ((-1, d("1h")),), "expires_at - 1h")
    )
    assert step.template == "quote-expiry" and step.sends_message


def test_full_file_actions_and_sends_message(full: Any) -> None:
    r = full.rule("document-expiry")
    expiring, expired, tell = r.steps
    # `set` with an explicit template: a message too.
    assert expiring.set == {
        "status": "EXPIRING_SOON", "flagged": True, "on": "on", "note": None, "checked": "2026-01-01",
    }  # fmt: skip
    assert expiring.sends_message and expiring.template == "document-expiring"
    # `set` alone: no message, no template needed.
    assert expired.set == {"status": "EXPIRED"}
    assert not expired.sends_message and expired.template is None
    assert tell.webhook == WebhookAction(
        "https://app.test/hooks/expired", {"kind": "expired", "n": 1}
    )
    assert not tell.sends_message
    assert tell.at is not None and tell.at.offsets == (
        (1, Duration(months=1, days=1, text="1mo1d")),
    )

    dormant = full.rule("mark-dormant")
    assert dormant.set == {"status": "dormant"}
    assert dormant.webhook == WebhookAction("https://app.test/hooks/dormant", {})
    assert not dormant.sends_message and dormant.template is None
    assert not dormant.steps[0].sends_message


def test_full_file_event_rules(full: Any) -> None:
    receipt = full.rule("payment-receipt")
    assert receipt.kind == "event"
    assert receipt.on == Trigger(
        change="status", to="paid", has_to=True, from_="sent", has_from=True
    )
    assert receipt.delay == d("10m") and receipt.category is Category.transactional
    assert receipt.channels == ("email", "inbox") and receipt.template == "payment-receipt"
    reopened = full.rule("reopened")
    # `to: null` is not the same as no `to`.
    assert reopened.on == Trigger(change="status", to=None, has_to=True, has_from=False)
    assert reopened.channels == ("inbox",)
    paid = full.rule("order-paid")
    assert paid.on == Trigger(event="order.paid")
    assert paid.condition == "event.data.amount > 0"
    assert paid.batch == Batch(d("30m"))


def test_full_file_schedule_rules(full: Any) -> None:
    digest = full.rule("weekday-digest")
    assert digest.kind == "cron" and digest.subject is None
    assert digest.cron == "0 8 * * mon-fri" and digest.timezone == "Europe/Paris"
    assert digest.to == ("group:admins", "id:boss")
    assert digest.collect == (
        Collect("overdue", subject="job", condition="status == 'open' and due_at < now"),
        Collect("unassigned", subject="job"),
        Collect("totals", stats="yesterday"),
    )
    assert digest.skip_empty is True
    retry = full.rule("nightly-payment-retry")
    assert retry.cron == "*/15 0-5 1,15 jan-jun,dec sun"
    assert retry.webhook == WebhookAction("https://app.test/hooks/retry", {})
    assert not retry.sends_message and retry.to == ()


def test_defaults() -> None:
    rf = load(
        """\
        rules:
          - name: r
            subject: invoice
            to: [customer]
            at: due_at
        """
    )
    (r,) = rf.rules
    assert rf.timezone == "UTC"
    assert rf.channels == {
        "email": ChannelConfig("email", "outbox"),
        "inbox": ChannelConfig("inbox", "inbox"),
    }
    assert (r.channels, r.fallback, r.category) == (("email",), None, Category.reminder)
    assert r.retry == Retry(3, d("60s"), 2.0)
    assert r.template == "r" and r.steps[0].template == "r"  # default template: the rule's name
    assert r.steps[0].at == AtExpr("due_at", (), "due_at")
    assert (r.grace, r.expire, r.min_gap, r.priority, r.batch, r.window) == (None,) * 6
    assert rf.limits == {} and rf.retention == {} and rf.webhooks == ()
    assert rf.allow_private_targets is False


def test_empty_rules_list_is_fine() -> None:
    assert load("rules: []\n").rules == ()


def test_template_inheritance_and_explicit_templates_with_actions() -> None:
    rf = load(
        """\
        rules:
          - name: r
            subject: s
            to: [x]
            template: rule-t
            set: {status: done}
            steps:
              - {at: a}
              - {at: b, template: own}
              - {at: c, webhook: {url: "https://app.test/h"}}
        """
    )
    (r,) = rf.rules
    # The rule names a template, so its set/webhook steps send messages too.
    assert r.sends_message and r.template == "rule-t"
    assert [(s.name, s.template, s.sends_message) for s in r.steps] == [
        ("step-1", "rule-t", True),
        ("step-2", "own", True),
        ("step-3", "rule-t", True),
    ]


def test_rule_level_set_without_template_sends_nothing_from_its_steps() -> None:
    rf = load(
        """\
        rules:
          - name: r
            subject: s
            set: {status: done}
            steps:
              - {at: a}
              - {at: b, template: own, to: [x]}
        """
    )
    assert [(s.template, s.sends_message) for s in rf.rules[0].steps] == [
        (None, False),
        ("own", True),
    ]


def test_yaml_anchors_and_merge_keys() -> None:
    rf = load(
        """\
        rules:
          - &base
            name: a
            subject: invoice
            to: [customer]
            at: due_at
          - <<: *base
            name: b
        """
    )
    assert [r.name for r in rf.rules] == ["a", "b"]
    assert rf.rules[1].subject == "invoice"


def test_env_left_alone_without_resolve_env() -> None:
    rf = load(
        """\
        channels:
          email: {type: smtp, url: "${NOT_SET_ANYWHERE}"}
        webhooks:
          - {url: "${APP_URL}/hooks", secret_env: NOT_SET_EITHER}
        rules: []
        """,
        resolve_env=False,
        environ={},
    )
    assert rf.channels["email"].options == {"url": "${NOT_SET_ANYWHERE}"}
    assert rf.webhooks == (WebhookTarget("${APP_URL}/hooks", (), "NOT_SET_EITHER"),)


# --------------------------------------------------------------------------- all errors, located


def test_every_error_is_reported_with_line_and_field() -> None:
    errs = errors(
        """\
        timezone: Europe/Londn
        rules:
          - name: a
            subject: invoice
            to: [customer]
            steps:
              - name: one
                at: "due_at - 3 days"
              - name: two
                at: due_at
                time: "25:00"
        """
    )
    assert where(errs) == [
        (1, "timezone"),
        (8, "rules[0].steps[0].at"),
        (11, "rules[0].steps[1].time"),
    ]
    assert "unknown timezone 'Europe/Londn' (did you mean 'Europe/London'?)" in errs[0].message
    assert (
        errs[1].message
        == "expected a duration such as 3d or 2h30m, got '3 days' in 'due_at - 3 days'"
    )
    assert errs[2].message == "expected a time of day \"HH:MM\" (00:00 to 23:59), got '25:00'"
    assert str(errs[1]) == (
        "duly.yaml:8: rules[0].steps[0].at: expected a duration such as 3d or 2h30m, "
        "got '3 days' in 'due_at - 3 days'"
    )


def test_errors_in_many_rules_are_all_listed_in_line_order() -> None:
    errs = errors(
        """\
        rules:
          - name: a
            subject: invoice
            to: [customer]
            at: due_at
            category: urgent
          - name: b
            subjet: invoice
            to: [customer]
            at: due_at
          - name: c
            subject: invoice
            to: [customer]
            on: paid
            delay: 10 minutes
        """
    )
    assert where(errs) == [
        (6, "rules[0].category"),
        (7, "rules[1]"),
        (8, "rules[1].subjet"),
        (15, "rules[2].delay"),
    ]
    assert "unknown category 'urgent'" in errs[0].message
    assert "missing required key 'subject'" in errs[1].message
    assert "unknown key 'subjet' (did you mean 'subject'?)" in errs[2].message
    assert "got '10 minutes'" in errs[3].message


def test_str_of_rule_file_error_lists_every_error_one_per_line() -> None:
    with pytest.raises(RuleFileError) as exc:
        load("timezone: Nowhere/Atall\nallow_private_targets: maybe\nrules: 3\n")
    lines = str(exc.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("duly.yaml:1: timezone: unknown timezone 'Nowhere/Atall'")
    assert lines[1] == "duly.yaml:2: allow_private_targets: expected true or false, got 'maybe'"
    assert lines[2] == "duly.yaml:3: rules: expected a list, got '3'"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "the file is empty: expected a mapping with 'rules:'"),
        ("# only a comment\n", None, "the file is empty"),
        ("- a\n- b\n", 1, "expected a mapping with 'rules:' at the top, got a list"),
        ("just text\n", 1, "expected a mapping with 'rules:' at the top, got 'just text'"),
        ("timezone: UTC\n", 1, "missing required key 'rules'"),
        ("rules: [\n  {name: a\n", 3, "invalid YAML"),
        ("rules:\n  - name: a\n   subject: b\n", 3, "invalid YAML"),
        ("rules:\n\t- name: a\n", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "invalid YAML"),
        ("rules: []\nrules: []\n", 2, "duplicate key (first at line 1)"),
        ("rules: *nope\n", 1, "invalid YAML"),
        ("rulez: []\n", 1, "unknown key 'rulez' (did you mean 'rules'?)"),
    ],
)
def test_file_level_errors(text: str, line: int | None, message: str) -> None:
    errs = errors(text)
    assert any(e.line == line and message in e.message for e in errs), errs


def test_unknown_keys_hint_the_right_place() -> None:
    errs = errors(
        """\
        rules:
          - name: a
            subject: s
            to: [x]
            steps:
              - at: due_at
                grace: 1h
                tempalte: t
        """
    )
    assert where(errs) == [(7, "rules[0].steps[0].grace"), (8, "rules[0].steps[0].tempalte")]
    assert errs[0].message == "unknown key 'grace': it is set on the rule, not on a step"
    assert "did you mean 'template'?" in errs[1].message


# --------------------------------------------------------------------------- triggers and kinds


@pytest.mark.parametrize(
    ("extra", "line", "field", "message"),
    [
        # Lines: 2 is the rule, 5 the first line of `extra`, 6 its second.
        ("", 2, "rules[0]", "rule 'a' has no trigger: give steps (or at), on, or cron"),
        ("at: due_at\non: paid\n", 6, "rules[0]", "has more than one trigger (at and on)"),
        ("on: paid\ncron: '0 8 * * *'\n", 6, "rules[0]", "more than one trigger (on and cron)"),
        (
            "steps: [{at: due_at}]\nat: due_at\n",
            6,
            "rules[0].at",
            "give steps or at (a single step), not both",
        ),
        ("on: paid\ntime: '09:00'\n", 6, "rules[0].time", "time on a rule goes with at"),
        (
            "steps: [{at: d}]\nrepeat: {every: 1d}\n",
            6,
            "rules[0].repeat",
            "repeat on a rule goes with at",
        ),
        ("at: due_at\ndelay: 1h\n", 6, "rules[0].delay", "delay is only for event rules"),
        ("on: paid\nskip_empty: true\n", 6, "rules[0].skip_empty", "only for schedule rules"),
        ("steps: []\n", 5, "rules[0].steps", "expected at least one step"),
        ("steps: [{name: x}]\n", 5, "rules[0].steps[0]", "missing required key 'at'"),
    ],
)
def test_trigger_errors(extra: str, line: int, field: str, message: str) -> None:
    text = "rules:\n  - name: a\n    subject: s\n    to: [x]\n" + textwrap.indent(extra, "    ")
    errs = errors(text)
    assert [(e.line, e.field) for e in errs] == [(line, field)], errs
    assert message in errs[0].message


def test_date_and_event_rules_need_a_subject_cron_rules_need_to() -> None:
    errs = errors(
        """\
        rules:
          - name: a
            to: [x]
            at: due_at
          - name: b
            to: [x]
            on: paid
          - name: c
            cron: "0 8 * * *"
          - name: d
            subject: job
            cron: "0 8 * * *"
            to: [manager, group:admins]
            set: {x: 1}
        groups: {admins: [u1]}
        """
    )
    assert where(errs) == [
        (2, "rules[0]"),
        (5, "rules[1]"),
        (8, "rules[2]"),
        (11, "rules[3].subject"),
        (13, "rules[3].to[0]"),
        (14, "rules[3].set"),
    ]
    assert "missing required key 'subject'" in errs[0].message
    assert "missing required key 'to'" in errs[2].message
    assert "has no subject, so no role 'manager'" in errs[4].message


def test_steps_need_recipients_from_rule_or_step() -> None:
    errs = errors(
        """\
        rules:
          - name: a
            subject: s
            steps:
              - {name: one, at: d, to: [x]}
              - {name: two, at: d}
              - {name: three, at: d, set: {status: x}}
        """
    )
    assert where(errs) == [(6, "rules[0].steps[1]")]
    assert (
        errs[0].message
        == "rule 'a', step 'two' has no recipients: give 'to' on the rule or the step"
    )


def test_duplicate_rule_and_step_names() -> None:
    errs = errors(
        """\
        rules:
          - name: a
            subject: s
            to: [x]
            steps:
              - {at: d}
              - {name: step-1, at: d}
          - name: a
            subject: s
            to: [x]
            at: d
        """
    )
    assert where(errs) == [(7, "rules[0].steps[1].name"), (8, "rules[1].name")]
    assert "duplicate step name 'step-1' (first at line 6)" in errs[0].message
    assert errs[1].message == "duplicate rule name 'a' (first at line 2); rule names must be unique"


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ("{to: paid}", "missing required key 'change'"),
        (
            "{change: 'status code', to: x}",
            "expected an attribute name such as due_at, got 'status code'",
        ),
        ("{change: status, into: paid}", "unknown key 'into'"),
        ("'order paid'", "expected an event name such as order.paid"),
        ("[a, b]", "expected a mapping, got a list"),
    ],
)
def test_bad_on(on: str, message: str) -> None:
    errs = errors(f"rules:\n  - name: a\n    subject: s\n    to: [x]\n    on: {on}\n")
    assert any(message in e.message for e in errs), errs
    assert all(e.line == 5 for e in errs)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("cron", "ok"),
    [
        ("0 8 * * mon-fri", True),
        ("*/5 * * * *", True),
        ("0 9 1 * *", True),
        ("0 0 * JAN,jul SUN", True),
        ("@daily", True),
        ("0 8 * * 1-5 2026", "got 6 fields (seconds and years are not supported)"),
        ("0 8 * *", "expected 5 fields (minute hour day-of-month month day-of-week)"),
        ("61 8 * * *", "minute '61': 61 is out of range (0-59)"),
        ("0 25 * * *", "hour '25': 25 is out of range (0-23)"),
        ("0 8 * * funday", "day-of-week 'funday': expected a day of the week (0-7 or sun-sat)"),
        ("every day", "expected 5 fields"),
        ("0 8 * * $(rm)", "day-of-week '$(rm)': expected a day of the week"),
        ("0 0 30 2 *", "never fires: February has no day 30"),
        ("0 8 * * 5-1", "day-of-week '5-1': the range 5-1 wraps around"),
    ],
)
def test_cron_expressions(cron: str, ok: bool | str) -> None:
    text = f"rules:\n  - name: a\n    cron: '{cron}'\n    to: [id:x]\n"
    if ok is True:
        assert load(text).rules[0].cron == cron
    else:
        (err,) = errors(text)
        assert (err.line, err.field) == (3, "rules[0].cron")
        assert err.message.startswith(f"cron {cron!r}: ")
        assert str(ok) in err.message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("grace", "12 hours", "expected a duration such as 3d or 2h30m, got '12 hours'"),
        ("grace", "60", "expected a duration such as 3d or 2h30m, got '60'"),
        ("grace", "-1d", "got '-1d'"),
        ("expire", "0s", "expected a duration longer than zero, got '0s'"),
        ("min_gap", "[1d]", "expected a duration such as 3d or 2h30m, got a list"),
        ("min_gap", "", "expected a duration such as 3d or 2h30m, got nothing"),
        ("retry", "{attempts: -1}", "expected a whole number of at least 0, got -1"),
        ("retry", "{attempts: 2.5}", "expected a whole number, got '2.5'"),
        ("retry", "{factor: 0.5}", "expected a factor of at least 1, got 0.5"),
        ("retry", "{delay: soon}", "got 'soon'"),
        ("retry", "{tries: 3}", "unknown key 'tries'"),
        ("priority", "high", "expected a whole number, got 'high'"),
        ("batch", "{window: 0m}", "expected a duration longer than zero"),
        ("batch", "{}", "missing required key 'window'"),
        (
            "category",
            "urgent",
            "unknown category 'urgent'; expected one of: transactional, reminder, promotional",
        ),
        ("category", "remindr", "did you mean 'reminder'?"),
        ("timezone", "Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        ("timezone", "../../etc/passwd", "unknown timezone"),
        (
            "window",
            "{hours: '09:00-17'}",
            'expected hours "HH:MM-HH:MM" such as "09:00-17:00", got \'09:00-17\'',
        ),
        (
            "window",
            "{hours: '09:00-24:00'}",
            "expected a time of day \"HH:MM\" (00:00 to 23:59), got '24:00'",
        ),
        ("window", "{hours: '9:00-9:00'}", "is empty"),
        ("window", "{days: [mon, funday]}", "unknown day 'funday'"),
        ("window", "{days: [tues]}", "did you mean 'tue'?"),
        ("window", "{}", "a window needs hours, days or calendar"),
        ("window", "{calendar: uk}", "unknown calendar 'uk'; calendars defined: none"),
        (
            "if",
            "\"status = 'sent'\"",
            "invalid expression \"status = 'sent'\": at column 8: use '==' to compare",
        ),
        ("if", "\"__import__('os')\"", "names starting with '_' are not allowed"),
        ("if", "[a]", "expected an expression"),
        ("to", "[]", "expected at least one recipient"),
        ("to", "[group:nobody]", "unknown group 'nobody'; groups defined: none"),
        ("to", "['id:']", "expected a recipient id after 'id:'"),
        ("to", "['a customer']", "expected a role (such as customer), group:NAME or id:RECIPIENT"),
        ("channels", "[]", "expected at least one channel"),
        ("channels", "[email, email]", "channel 'email' is listed twice"),
        ("channels", "[sms]", "channel 'sms' is not configured: add it under 'channels:'"),
        ("template", "../etc/passwd", "expected a template name"),
        ("set", "{}", "expected at least one ATTRIBUTE: VALUE"),
        ("set", "status", "expected a mapping of ATTRIBUTE: VALUE, got 'status'"),
        ("set", "{'bad key': 1}", "expected an attribute name such as status, got 'bad key'"),
        ("webhook", "{url: 'ftp://x'}", "expected an http:// or https:// URL"),
        ("webhook", "{body: {}}", "missing required key 'url'"),
        ("webhook", "{url: 'https://a.test', body: [1]}", "expected a mapping, got a list"),
        ("name", "'has space'", "expected a rule name"),
    ],
)
def test_bad_values(key: str, value: str, message: str) -> None:
    lines = ["rules:", "  - name: a", "    subject: s", "    to: [x]", "    at: due_at"]
    lines = [ln for ln in lines if not ln.strip().startswith(f"{key}:")] + [f"    {key}: {value}"]
    if key == "name":
        lines[1] = "  - " + lines.pop().strip()
    errs = errors("\n".join(lines) + "\n")
    line = 2 if key == "name" else len(lines)
    assert [e.line for e in errs] == [line] * len(errs), errs
    assert any(message in e.message for e in errs), errs
    assert all(e.field.startswith(f"rules[0].{key}") for e in errs), errs


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "due_at - 3 days",
            "expected a duration such as 3d or 2h30m, got '3 days' in 'due_at - 3 days'",
        ),
        (
            "due_at minus 3d",
            "expected ATTRIBUTE [+|- DURATION]..., such as 'due_at - 3d', got 'due_at minus 3d'",
        ),
        ("due_at -", "got '' in 'due_at -'"),
        ("now + 1d", "it counts from a date attribute, not from now"),
        ("3d", "expected ATTRIBUTE [+|- DURATION]..."),
        ("'due-at - 1d'", "got 'at' in 'due-at - 1d'"),
        ("[due_at]", "expected a time such as 'due_at - 3d', got a list"),
    ],
)
def test_bad_at(value: str, message: str) -> None:
    errs = errors(f"rules:\n  - name: a\n    subject: s\n    to: [x]\n    at: {value}\n")
    assert where(errs) == [(5, "rules[0].at")]
    assert message in errs[0].message


@pytest.mark.parametrize(
    ("repeat", "field", "message"),
    [
        ("{days: [mon]}", "rules[0].repeat", "missing required key 'every'"),
        ("{every: 0d}", "rules[0].repeat.every", "longer than zero"),
        ("{every: 1d, count: 0}", "rules[0].repeat.count", "at least 1"),
        ("{every: 1d, until: \"status == 'paid'\"}", "rules[0].repeat.until", "expected ATTRIBUTE"),
        ("{every: 1 day}", "rules[0].repeat.every", "got '1 day'"),
    ],
)
def test_bad_repeat(repeat: str, field: str, message: str) -> None:
    errs = errors(
        f"rules:\n  - name: a\n    subject: s\n    to: [x]\n    at: d\n    repeat: {repeat}\n"
    )
    assert where(errs) == [(6, field)]
    assert message in errs[0].message


@pytest.mark.parametrize(
    ("collect", "message"),
    [
        (
            "{a: {subject: job, stats: today}}",
            "give either subject: KIND (with an optional if) or stats: PERIOD",
        ),
        ("{a: {if: 'x'}}", "give either subject"),
        ("{a: {stats: tomorrow}}", "unknown period 'tomorrow'"),
        ("{a: {stats: today, if: 'x'}}", "if goes with subject, not with stats"),
        ("{a: {subject: job, if: 'x =! 1'}}", "invalid expression 'x =! 1'"),
        ("[a]", "expected a mapping of names, got a list"),
    ],
)
def test_bad_collect(collect: str, message: str) -> None:
    errs = errors(
        f"rules:\n  - name: a\n    cron: '0 8 * * *'\n    to: [id:x]\n    collect: {collect}\n"
    )
    assert [e.line for e in errs] == [5], errs
    assert message in errs[0].message


def test_undefined_group_and_calendar_with_hints() -> None:
    errs = errors(
        """\
        calendars:
          uk: {holidays: GB}
        groups:
          admins: [a]
        rules:
          - name: a
            subject: s
            to: [group:admin]
            at: d
            window: {calendar: UK}
        """
    )
    assert where(errs) == [(8, "rules[0].to[0]"), (10, "rules[0].window.calendar")]
    assert (
        "unknown group 'admin' (did you mean 'admins'?); groups defined: admins" in errs[0].message
    )
    assert "unknown calendar 'UK'" in errs[1].message and "calendars defined: uk" in errs[1].message


def test_unconfigured_channels_rule_and_step_channels_and_fallback() -> None:
    errs = errors(
        """\
        channels:
          sms: {type: twilio-sms}
        rules:
          - name: a
            subject: s
            to: [x]
            fallback: [smss, email]
            steps:
              - at: d
                channels: [inbox, push]
              - at: d
                fallback: [whatsapp]
        """
    )
    assert where(errs) == [
        (7, "rules[0].fallback[0]"),
        (10, "rules[0].steps[0].channels[1]"),
        (12, "rules[0].steps[1].fallback[0]"),
    ]
    assert errs[0].message == (
        "channel 'smss' is not configured (did you mean 'sms'?): add it under 'channels:' at the "
        "top of the file (configured: sms; email and inbox need no configuration)"
    )


# --------------------------------------------------------------------------- file-level sections


def test_calendar_errors() -> None:
    errs = errors(
        """\
        calendars:
          a: {holidays: XX}
          b: {holidays: GB-ZZZ}
          c: {days: [mon, someday], closed: [2026-02-30, tomorrow]}
          d: [mon]
          e: {open: [mon]}
        rules: []
        """
    )
    assert where(errs) == [
        (2, "calendars.a.holidays"),
        (3, "calendars.b.holidays"),
        (4, "calendars.c.days[1]"),
        (4, "calendars.c.closed[0]"),
        (4, "calendars.c.closed[1]"),
        (5, "calendars.d"),
        (6, "calendars.e.open"),
    ]
    assert errs[0].message.startswith("unknown holiday country 'XX': expected an ISO 3166 code")
    assert errs[1].message.startswith("unknown holiday subdivision 'GB-ZZZ'")
    assert errs[3].message == "expected a date YYYY-MM-DD, got '2026-02-30'"


@pytest.mark.parametrize(
    ("text", "places", "message_starts"),
    [
        pytest.param(
            "rules:\n  - {name: a, subject: s, to: [x], at: d, channels: [email], fallback: [inbox]}\n",
            [(2, "rules[0].fallback")],
            [],
            id="channels-and-fallback-together",
        ),
        pytest.param(
            "groups:\n  admins: ops-1\n  ok: [a, [b]]\nrules: []\n",
            [(2, "groups.admins"), (3, "groups.ok[1]")],
            [],
            id="group-errors",
        ),
        pytest.param(
            "groups:\n  'a b': [x]\nchannels:\n  'sms/1': {type: outbox}\nrules: []\n",
            [(2, "groups.a b"), (4, "channels.sms/1")],
            [
                "expected a group name (letters, digits",
                "expected a channel name (letters, digits",
            ],
            id="group-and-channel-names-are-checked",
        ),
    ],
)
def test_small_files_report_each_error_at_its_line_and_field(
    text: str, places: list[tuple[int, str]], message_starts: list[str]
) -> None:
    errs = errors(text)
    assert where(errs) == places
    for err, start in zip(errs, message_starts, strict=False):
        assert err.message.startswith(start)


def test_channel_errors_never_echo_values() -> None:
    errs = errors(
        f"""\
        channels:
          email: {{type: smtp, url: "smtp://u:{SECRET}@x", password: "${{MISSING_PASSWORD}}"}}
          sms: "twilio://{SECRET}"
          push: {{url: "{SECRET}"}}
          chat: {{type: slack, token: "{SECRET}"}}
        rules: []
        """
    )
    assert where(errs) == [
        (2, "channels.email.password"),
        (3, "channels.sms"),
        (4, "channels.push"),
        (5, "channels.chat.type"),
    ]
    assert errs[0].message == "environment variable MISSING_PASSWORD is not set"
    assert "missing required key 'type'" in errs[2].message
    assert "unknown channel type 'slack'" in errs[3].message
    for e in errs:
        assert SECRET not in str(e)


def test_expanded_secrets_are_never_printed() -> None:
    errs = errors(
        """\
        channels:
          email: {type: smtp, url: "${DULY_SMTP_URL}", from: "${NOPE}"}
        webhooks:
          - url: "${DULY_SMTP_URL}"
            secret: "${AUDIT_SECRET}"
        rules: []
        """
    )
    assert where(errs) == [(2, "channels.email.from"), (4, "webhooks[0].url")]
    assert errs[1].message == "expected an http:// or https:// URL"
    for e in errs:
        assert SECRET not in str(e)


def test_webhook_target_errors() -> None:
    errs = errors(
        f"""\
        webhooks:
          - url: https://a.test
            secret: "{SECRET}"
          - url: https://a.test
          - url: https://a.test
            secret: "${{A}}"
            secret_env: A
          - url: https://a.test
            secret_env: NOT_SET
          - url: https://a.test
            secret_env: "not a name"
            events: ["bad event"]
          - {{secret_env: AUDIT_SECRET}}
          - "https://a.test"
        rules: []
        """
    )
    assert where(errs) == [
        (3, "webhooks[0].secret"),
        (4, "webhooks[1]"),
        (7, "webhooks[2].secret_env"),
        (9, "webhooks[3].secret_env"),
        (11, "webhooks[4].secret_env"),
        (12, "webhooks[4].events[0]"),
        (13, "webhooks[5]"),
        (14, "webhooks[6]"),
    ]
    assert (
        errs[0].message
        == 'a secret never sits in the file itself: write secret: "${VAR}" or secret_env: VAR'
    )
    assert "missing the signing secret" in errs[1].message
    assert errs[3].message == "environment variable NOT_SET is not set"
    for e in errs:
        assert SECRET not in str(e)


def test_limits_and_retention_errors() -> None:
    errs = errors(
        """\
        limits: {transactional: "1/1d", reminder: "3 per day", promo: "1/7d", promotional: "0/1d"}
        retention: {sent: forever, lost: 1d, failed: 0d}
        rules: []
        """
    )
    assert [e.field for e in errs] == [
        "limits.transactional",
        "limits.reminder",
        "limits.promo",
        "limits.promotional",
        "retention.sent",
        "retention.lost",
        "retention.failed",
    ]
    assert errs[0].message == "transactional messages are never rate-limited; remove this limit"
    assert errs[1].message == 'expected COUNT/DURATION such as "3/1d" or "1/7d", got \'3 per day\''
    assert "did you mean 'promotional'?" in errs[2].message


# --------------------------------------------------------------------------- templates


def write_templates(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("hello\n")
    return folder


TEMPLATED = """\
channels:
  sms: {type: twilio-sms}
rules:
  - name: inv
    subject: invoice
    to: [customer]
    channels: [email, sms]
    steps:
      - name: soon
        at: due_at - 3d
        template: inv-soon
      - name: late
        at: due_at + 1d
      - name: mark
        at: due_at + 30d
        set: {status: lost}
  - name: receipt
    subject: invoice
    on: paid
    to: [customer]
    fallback: [sms, email]
"""


def test_missing_templates_are_errors_naming_rule_step_channel_and_files(tmp_path: Path) -> None:
    folder = write_templates(tmp_path, "inv-soon.email.html", "inv.sms.txt", "receipt.sms.txt")
    (tmp_path / "duly.yaml").write_text(TEMPLATED)
    with pytest.raises(RuleFileError) as exc:
        load_rules(tmp_path / "duly.yaml", environ={})
    errs = exc.value.errors
    assert where(errs) == [
        (11, "rules[0].steps[0].template"),
        (12, "rules[0].steps[1].template"),
        (17, "rules[1].template"),
    ]
    assert errs[0].message == (
        f"rule 'inv', step 'soon': no template for channel 'sms': looked for inv-soon.sms.txt or "
        f"inv-soon.sms.html in {folder}"
    )
    assert "rule 'inv', step 'late': no template for channel 'email'" in errs[1].message
    assert "inv.email.txt or inv.email.html" in errs[1].message
    assert "rule 'receipt': no template for channel 'email'" in errs[2].message


def test_templates_found_and_folder_beside_the_file(tmp_path: Path) -> None:
    write_templates(
        tmp_path, "inv-soon.email.html", "inv-soon.sms.txt", "inv.email.txt", "inv.sms.txt",
        "receipt.sms.txt", "receipt.email.html",
    )  # fmt: skip
    (tmp_path / "duly.yaml").write_text(TEMPLATED)
    rf = load_rules(tmp_path / "duly.yaml", environ={})
    assert rf.templates_dir == str(tmp_path / "templates")
    assert [s.template for s in rf.rules[0].steps] == ["inv-soon", "inv", None]


def test_templates_dir_argument_and_check_templates_off(tmp_path: Path) -> None:
    folder = write_templates(tmp_path, "r.email.txt")
    text = "rules:\n  - {name: r, subject: s, to: [x], at: d}\n"
    rf = load_rules_text(text, path="/elsewhere/duly.yaml", templates_dir=str(folder))
    assert rf.templates_dir == str(folder)
    with pytest.raises(RuleFileError, match="the folder does not exist"):
        load_rules_text(text, path=str(tmp_path / "sub" / "duly.yaml"))
    rf = load_rules_text(text, path=str(tmp_path / "sub" / "duly.yaml"), check_templates=False)
    assert rf.templates_dir == str(tmp_path / "sub" / "templates")


# --------------------------------------------------------------------------- robustness


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    bomb = "\n".join("        " + ln for ln in lines)
    return f"rules:\n  - name: r\n    subject: s\n    at: d\n    set:\n{bomb}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(_alias_bomb(), "too large or nested too deeply", id="alias-bombs-are-bounded"),
        pytest.param(
            "rules:\n  - name: !!python/object:os.system x\n    subject: s\n    to: [x]\n    at: d\n",
            "unsupported YAML tag",
            id="yaml-tags-are-not-constructed",
        ),
    ],
)
def test_hostile_yaml_is_refused(text: str, message: str) -> None:
    errs = errors(text)
    assert any(message in e.message for e in errs)


# --------------------------------------------------------------------------- check_main


def test_check_main_ok(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert check_main(FULL) == 0
    assert capsys.readouterr().out == "OK: 9 rules\n"


def test_check_main_one_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "duly.yaml"
    path.write_text("rules:\n  - {name: r, subject: s, to: [x], at: d}\n")
    assert check_main(path, check_templates=False) == 0
    assert capsys.readouterr().out == "OK: 1 rule\n"


def test_check_main_lists_every_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "duly.yaml"
    path.write_text(
        "timezone: Mars/Base\nrules:\n  - {name: r, subject: s, to: [x], at: 'd + 2 days'}\n"
    )
    assert check_main(path, check_templates=False) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}:1: timezone: unknown timezone 'Mars/Base': expected an IANA name such as Europe/London or UTC",
        f"{path}:3: rules[0].at: expected a duration such as 3d or 2h30m, got '2 days' in 'd + 2 days'",
        f"2 errors in {path}",
    ]


def test_check_main_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert check_main(tmp_path / "nope.yaml") == 2
    out = capsys.readouterr().out
    assert "nope.yaml: cannot read the rule file: No such file or directory" in out
    assert "1 error in" in out


def test_load_rules_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "duly.yaml"
    path.write_bytes(b"rules: []\n# \xff\xfe\n")
    with pytest.raises(RuleFileError, match="not UTF-8"):
        load_rules(path)


def test_webhook_action_url_from_the_environment() -> None:
    text = "rules:\n  - {name: r, subject: s, at: d, webhook: {url: '${APP_URL}/hooks/x'}}\n"
    rf = load(text, environ={"APP_URL": "https://app.test"})
    assert rf.rules[0].webhook == WebhookAction("https://app.test/hooks/x", {})
    (err,) = errors(text, environ={})
    assert (err.line, err.field, err.message) == (
        2, "rules[0].webhook.url", "environment variable APP_URL is not set",
    )  # fmt: skip


def test_simulations_need_no_channel_configuration() -> None:
    text = "rules:\n  - {name: r, subject: s, to: [x], at: d, channels: [sms, push]}\n"
    (err, err2) = errors(text)
    assert (err.field, err2.field) == ("rules[0].channels[0]", "rules[0].channels[1]")
    rf = load(text, check_channels=False)
    assert rf.rules[0].channels == ("sms", "push")
