"""The rule file's ``subjects:`` section (duly.core.rules.subjectviews): titles and columns
per subject kind, errors with file and line, and the values pages show."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from duly.core.model import SubjectColumn, SubjectView
from duly.core.rules.loader import RuleFileError, load_rules_text
from duly.core.rules.subjectviews import column_values, subject_context, title_of

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def load(text: str) -> Any:
    return load_rules_text(textwrap.dedent(text), path="shop.yaml", check_templates=False)


def errors(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as exc:
        load(text)
    return [str(e) for e in exc.value.errors]


GOOD = """\
    rules: []
    subjects:
      invoice:
        title: "{{ number }} — {{ customer_name }}"
        columns:
          Customer: customer_name
          Status: status
          Amount: {value: amount, format: money, currency: currency}
          Net: {value: "amount - tax", format: money, currency: EUR}
          Due: {value: due_at, format: date}
          Who: {role: customer}
      appointment:
        title: service
"""


def test_titles_and_columns_are_read_in_order() -> None:
    rf = load(GOOD)
    inv = rf.subjects["invoice"]
    assert inv.title == "{{ number }} — {{ customer_name }}"
    assert inv.columns == (
        SubjectColumn("Customer", "customer_name"),
        SubjectColumn("Status", "status"),
        SubjectColumn("Amount", "amount", "money", "currency"),
        SubjectColumn("Net", "amount - tax", "money", "EUR"),
        SubjectColumn("Due", "due_at", "date"),
        SubjectColumn("Who", format="role", role="customer"),
    )
    assert rf.subjects["appointment"] == SubjectView("appointment", "service", ())


def test_no_section_means_no_views() -> None:
    assert load("rules: []\n").subjects == {}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            'invoice:\n    title: "{{ number +  }}"',
            "shop.yaml:4: subjects.invoice.title: invalid expression 'number +' in the title",
        ),
        (
            'invoice:\n    title: "{{ number "',
            "shop.yaml:4: subjects.invoice.title: unmatched '{{' or '}}'",
        ),
        ('invoice:\n    title: ""', "shop.yaml:4: subjects.invoice.title: the title is empty"),
        (
            "invoice:\n    titel: number",
            "shop.yaml:4: subjects.invoice.titel: unknown key 'titel' (did you mean 'title'?)",
        ),
        (
            "invoice:\n    columns: [status]",
            "shop.yaml:4: subjects.invoice.columns: expected a mapping of label → value",
        ),
        (
            'invoice:\n    columns: {Status: "status =="}',
            "shop.yaml:4: subjects.invoice.columns.Status: invalid expression",
        ),
        (
            "invoice:\n    columns:\n      Amount: {value: amount, format: cash}",
            "shop.yaml:5: subjects.invoice.columns.Amount.format: unknown format 'cash'",
        ),
        (
            "invoice:\n    columns:\n      Amount: {value: amount, currency: EUR}",
            "shop.yaml:5: subjects.invoice.columns.Amount.currency: currency is only for format: money",
        ),
        (
            "invoice:\n    columns:\n      Amount: {format: money}",
            "shop.yaml:5: subjects.invoice.columns.Amount: give value (an attribute or expression) or role",
        ),
        (
            "invoice:\n    columns:\n      Who: {role: 'a b'}",
            "shop.yaml:5: subjects.invoice.columns.Who.role: expected a role such as customer",
        ),
        (
            "invoice:\n    columns: {" + ", ".join(f"C{i}: a" for i in range(13)) + "}",
            "shop.yaml:4: subjects.invoice.columns: at most 12 columns, got 13",
        ),
        ("'in voice': {title: key}", "shop.yaml:3: subjects.in voice: expected a subject kind"),
        ("invoice: title", "shop.yaml:3: subjects.invoice: expected a mapping, got 'title'"),
    ],
)
def test_errors_name_file_line_and_field(section: str, expected: str) -> None:
    text = "rules: []\nsubjects:\n  " + section.replace("\n", "\n  ") + "\n"
    found = errors(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_every_problem_is_reported_at_once() -> None:
    found = errors(
        """\
        rules: []
        subjects:
          invoice: {title: "{{ a + }}", columns: {X: {value: a, format: nope}}}
          job: {colums: {}}
        """
    )
    assert [e.split(":")[1] for e in found] == ["3", "3", "4"]


def ctx(attrs: dict[str, Any], key: str = "INV-1004") -> dict[str, Any]:
    return subject_context("invoice", key, attrs, now=NOW, tz=ZoneInfo("Europe/London"))


def test_values_titles_and_failures() -> None:
    rf = load(GOOD)
    inv = rf.subjects["invoice"]
    attrs = {
        "number": "INV-1004",
        "customer_name": "Carol Díaz",
        "status": "sent",
        "amount": 310.0,
        "tax": 10,
        "currency": "eur",
        "due_at": "2026-12-08",
    }
    assert title_of(inv, ctx(attrs)) == "INV-1004 — Carol Díaz"
    assert title_of(inv, ctx({"number": 7})) == "7 —"  # a missing part shows nothing
    assert title_of(rf.subjects["appointment"], ctx({})) is None
    assert title_of(None, ctx(attrs)) is None
    assert title_of(SubjectView("x", "subject.key"), ctx({})) == "INV-1004"
    values = column_values(inv, ctx(attrs), {"customer": ("carol",)})
    assert [(v["label"], v["value"], v["currency"]) for v in values] == [
        ("Customer", "Carol Díaz", None),
        ("Status", "sent", None),
        ("Amount", 310.0, "EUR"),
        ("Net", 300.0, "EUR"),
        ("Due", datetime(2026, 12, 8, 0, 0, tzinfo=UTC), None),  # London midnight, in UTC
        ("Who", ["carol"], None),
    ]
    missing = column_values(inv, ctx({"amount": "x", "currency": "euro"}), {})
    assert [v["value"] for v in missing] == [None, None, "x", None, None, []]
    assert missing[2]["currency"] is None  # not a code: no currency shown
