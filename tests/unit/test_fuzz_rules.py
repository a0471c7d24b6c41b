"""Fuzzing the rule-file loader: rule files built from the rule schema (every top-level,
rule and step key), with plausible values mixed with hostile scalars — huge and infinite
numbers, NUL, lone surrogates, deep nesting, odd durations, odd cron strings, overflowing
expressions. Whatever the file, loading it either succeeds or raises the loader's own
:class:`RuleFileError` with printable messages and lines; nothing else escapes (no
OverflowError, RecursionError, UnicodeEncodeError, …).

Bounded for CI: a fixed number of examples, no example database, a few seconds each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from duly.core.rules.loader import TOP_KEYS, RuleFileError, load_rules_text
from duly.core.rules.rulesyntax import RULE_ONLY_KEYS, STEP_KEYS

SEED = 20261204
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure as is
)

# --------------------------------------------------------------------------- scalars

ODD_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\U0010ffff", "é" * 300, "x" * 5000,
    "${NOPE}", "${}", "$", "{{ }}", "'", '"', "\\", "\n", "../../etc/passwd", "*", "a/b",
    "9999-12-31", "0001-01-01", "2026-02-30", "9999-12-31T23:59:59-12:00",
]  # fmt: skip
ODD_NUMBERS = [
    0, -1, 2**31, 2**63, -(2**63), 10**30, 10**400, 1e308, -1e308,
    float("inf"), float("-inf"), float("nan"), 0.5, True, None,
]  # fmt: skip
ODD_DURATIONS = [
    "0s", "1d", "-1d", "99999999999999y", "99999999999999999999999d", "9999999999w",
    "1mo", "13mo", "1bd", "100000bd", "1d2h", "2h30m", "d", "1x", "1 d", "1.5d", "P1D",
    "1y" * 50, "0", "1e9d",
]  # fmt: skip
ODD_CRONS = [
    "* * * * *", "0 9 * * 1-5", "61 * * * *", "*/0 * * * *", "0 0 31 2 *", "0 0 30 2 *",
    "@yearly", "@reboot", "0 0 * * 8", "1-99999999999 * * * *", "* * * *", "* * * * * * *",
    "0 0 29 2 1", "0 0 1 1 * 9999", "L * * * *", "0 0 ? * MON#5", "\x00 * * * *",
    "*/99999999999999999999 * * * *",
]  # fmt: skip
ODD_EXPRESSIONS = [
    "x < 99999999999999999999999d", "x < 99999999999999999999999", "x > 1e999",
    "due_at + 99999999999999999999h < now", "now - 9999999999w < x", "now + 365250d > x",
    "(" * 45 + "x" + ")" * 45, "not " * 60 + "x", "-" * 60 + "1", "[" * 50 + "]" * 50,
    "x." + ".".join(["a"] * 500), "x[" * 45 + "0" + "]" * 45, "'\x00' == x", "x == '\ud800'",
    "1" * 5000, "due_at < '9999-12-31'", "due_at + 1d > '9999-12-31T23:59:59Z'",
    "x / 0", "x % 0", "__class__", "x ** 2", "status == 'sent'",
]  # fmt: skip
ODD_TIMES = [
    "09:00",
    "24:00",
    "23:60",
    "9",
    "-1:00",
    "99999999999:00",
    "09:00-17:00",
    "17:00-09:00",
]
ODD_ZONES = ["UTC", "Europe/London", "Europe/Atlantis", "../../etc/passwd", "UTC\x00", "", "+14:00"]


def deep(n: int, leaf: Any = "x") -> Any:
    v = leaf
    for i in range(n):
        v = {"a": v} if i % 2 else [v]
    return v


hostile = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.sampled_from(ODD_NUMBERS),
    st.sampled_from(ODD_DURATIONS),
    st.sampled_from(ODD_CRONS),
    st.sampled_from(ODD_EXPRESSIONS),
    st.integers(min_value=1, max_value=400).map(deep),
    st.text(max_size=30),
    st.lists(st.sampled_from(ODD_TEXT), max_size=3),
    st.dictionaries(st.sampled_from(ODD_TEXT), st.sampled_from(ODD_NUMBERS), max_size=2),
)


def either(*plausible: Any) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, a hostile one otherwise."""
    return st.one_of(st.sampled_from(plausible), hostile)


# --------------------------------------------------------------------------- the schema

STEP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": either("due-soon", "overdue", "a" * 300),
    "at": either("due_at - 3d", "due_at + 1d", "due_at", "created_at + 99999999999999y"),
    "time": either(*ODD_TIMES),
    "repeat": either("1d", {"every": "1d", "count": 3}, {"every": "0s"}, {"every": "1w",
                     "days": ["mon", "xyz"], "count": 10**12}),
    "if": either(*ODD_EXPRESSIONS),
    "to": either(["customer"], ["@admins"], "customer", []),
    "channels": either(["email"], ["sms", "email"], [], ["nope"]),
    "fallback": either(["email"], ["sms"]),
    "category": either("reminder", "transactional", "promotional", "other"),
    "template": either("invoice-due", "../x", "a" * 300),
    "window": either("09:00-17:00", {"hours": "09:00-17:00", "calendar": "uk"},
                     {"hours": "25:00-26:00"}),
    "expire": either(*ODD_DURATIONS),
    "batch": either("1h", {"within": "1h"}, {"within": "99999999999999y"}),
    "set": either({"status": "reminded"}, {"__class__": 1}, {"x": deep(60)}),
    "webhook": either({"url": "https://app.test/h"}, {"url": "file:///etc/passwd"}),
    "whatsapp": either({"content_sid": "HX" + "0" * 32, "variables": {"1": "{{ x }}"}},
                       {"template": "t", "language": "en", "variables": {"1": "a", "3": "b"}},
                       {"variables": {"a b": deep(5)}}, {"freeform": "never"}),
}  # fmt: skip
RULE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **STEP_VALUES,
    "subject": either("invoice", "a/b", ""),
    "steps": st.lists(
        st.fixed_dictionaries(
            {"name": STEP_VALUES["name"], "at": STEP_VALUES["at"]},
            optional={k: v for k, v in STEP_VALUES.items() if k not in ("name", "at")},
        ),
        max_size=3,
    )
    | hostile,
    "on": either("paid", {"change": "status", "to": "paid"}, {"change": "status"}, "*",
                 {"event": "a" * 500}),
    "delay": either(*ODD_DURATIONS),
    "cron": either(*ODD_CRONS),
    "timezone": either(*ODD_ZONES),
    "collect": either({"subject": "invoice", "if": "status == 'open'"},
                      {"subject": "invoice", "if": ODD_EXPRESSIONS[0]}),
    "skip_empty": either(True, False),
    "grace": either(*ODD_DURATIONS),
    "min_gap": either(*ODD_DURATIONS),
    "retry": either({"attempts": 3, "delay": "5m", "factor": 2}, {"attempts": 10**30},
                    {"delay": "99999999999999y", "factor": 1e308}),
    "priority": either(1, 10, -(10**30), 10**30),
}  # fmt: skip
assert set(RULE_VALUES) == set(STEP_KEYS) | set(RULE_ONLY_KEYS)

TOP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "timezone": either(*ODD_ZONES),
    "calendars": either({"uk": {"days": ["mon"], "holidays": "GB"}},
                        {"x": {"holidays": "XX", "closed": ["9999-12-31", "0001-01-01"]}}),
    "groups": either({"admins": ["a", "b"]}, {"g": []}),
    "channels": either({"email": {"type": "smtp", "url": "smtp://x"}},
                       {"app": {"type": "webhook", "url": "https://a.test", "timeout": 10**30}},
                       {"x": {"type": "nope"}}),
    "limits": either({"promotional": "1/7d"}, {"reminder": "99999999999999999999/1d"},
                     {"reminder": "1/99999999999999y"}),
    "retention": either({"sent": "90d"}, {"sent": "99999999999999y"}, {"failed": "-1d"}),
    "webhooks": either([{"url": "https://a.test/h", "events": ["subject.updated"]}],
                       [{"url": "ftp://x", "secret": "\x00"}]),
    "allow_private_targets": either(True, False),
    "render": either({"timeout": "2s", "max_output": "10MB"}, {"timeout": "99999999999999m"},
                     {"max_memory": "1" + "0" * 400 + "GB"}, {"workers": 10**30},
                     {"max_output": "1e999KB"}, {"timeout": "-1ms"}),
    "template_language": either("en", "en-GB", "fr_CA", "xx_klingon", "", "../../x", "\x00",
                                "e" * 10_000, 5, None, ["en"], {"en": 1}),
    "subjects": either({"invoice": {"title": "{{ number }} — {{ name }}",
                                    "columns": {"Amount": {"value": "amount", "format": "money",
                                                           "currency": "currency"}}}},
                       {"x": {"title": "{{ a +", "columns": {"C": {"role": "a", "format": "date"}}}},
                       {"a/b": {"columns": {"": "__class__", "x" * 500: ODD_EXPRESSIONS[0]}}},
                       {"k": {"columns": {f"c{i}": "a" for i in range(20)}}}),
}  # fmt: skip
assert set(TOP_VALUES) | {"rules"} == set(TOP_KEYS)

rules_strategy = st.lists(
    st.fixed_dictionaries(
        {"name": either("r1", "invoice-reminders", "Bad Name!")},
        optional={k: v for k, v in RULE_VALUES.items() if k != "name"},
    ),
    min_size=1,
    max_size=3,
)
rule_file = st.fixed_dictionaries({"rules": rules_strategy | hostile}, optional=TOP_VALUES)


def dump(doc: Any) -> str:
    """YAML text for ``doc``: non-ASCII (lone surrogates, NUL) as escapes, as a file can
    spell them."""
    return yaml.safe_dump(doc, allow_unicode=False, sort_keys=False, width=10**6)


def check_loads_or_refuses(text: str) -> None:
    try:
        load_rules_text(text, path="duly.yaml", check_templates=False, resolve_env=False)
    except RuleFileError as exc:
        assert exc.errors, "a RuleFileError lists its errors"
        for e in exc.errors:
            assert e.line is None or (isinstance(e.line, int) and e.line >= 1), e
        # the CLI prints it and the API answers it as JSON: it must encode
        str(exc).encode("utf-8")
        json.dumps([e.message for e in exc.errors], ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- the tests


@seed(SEED)
@FUZZ
@given(doc=rule_file)
def test_any_rule_file_loads_or_is_refused_with_a_rule_file_error(doc: dict[str, Any]) -> None:
    check_loads_or_refuses(dump(doc))


# Raw text the dumper would never write: broken YAML, aliases, tags, NUL bytes.
RAW = [
    "rules: [", "rules: {", "rules:\n  - name: r\n    if: 'x\x00'\n", "\x00",
    "rules: !!python/object:os.system x", "a: &a [*a]\nrules: []", "rules: *nope",
    "rules:\n" + "  " * 200 + "- x", "[" * 5000, "rules: " + "[" * 500 + "]" * 500,
    "rules:\n  - name: r\n    subject: invoice\n    on: paid\n    to: [c]\n"
    '    if: "x < 99999999999999999999999d"\n',
    "%YAML 9.9\n---\nrules: []", "--- !<tag:yaml.org,2002:str> x", "\ufeffrules: []",
    "rules: []\n" * 3, "rules:\n  - name: r\n    cron: '*/0 * * * *'\n    to: [a]\n",
    "x: " + "a" * 100000,
]  # fmt: skip


@pytest.mark.parametrize("text", RAW, ids=range(len(RAW)))
def test_raw_text_loads_or_is_refused(text: str) -> None:
    check_loads_or_refuses(text)


@seed(SEED)
@settings(FUZZ, max_examples=200)
@given(text=st.text(max_size=300))
def test_any_text_loads_or_is_refused(text: str) -> None:
    check_loads_or_refuses(text)


@pytest.mark.parametrize(
    "cond", ["x < 99999999999999999999999d", "x > 1e999", "x > now - 9999999999w"]
)
def test_rules_check_reports_a_huge_number_with_its_line(tmp_path: Path, cond: str) -> None:
    """`duly rules check` printed a traceback (OverflowError) for these."""
    from duly.cli import main

    f = tmp_path / "duly.yaml"
    f.write_text(f'rules:\n  - name: r\n    subject: invoice\n    on: paid\n    if: "{cond}"\n'
                 "    to: [c]\n")  # fmt: skip
    res = CliRunner().invoke(main, ["rules", "check", "--no-templates", str(f)])
    assert res.exit_code not in (0, 1) or "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "duly.yaml:5" in res.output, res.output
