"""The sandboxed condition language (docs/reference/rules.md, "Expressions")."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duly.core.model import Event, Subject
from duly.core.rules.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    EvaluationError,
    Expression,
    ExpressionError,
    build_context,
    compile_expression,
    condition_holds,
)

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)

ATTRS: dict[str, Any] = {
    "status": "sent",
    "amount": 120,
    "ratio": 0.5,
    "tags": ["vip", "late"],
    "due_at": "2026-06-15",  # date only: 00:00 London = 2026-06-14T23:00Z (BST)
    "starts_at": "2026-06-10T14:00",  # no offset: London wall time = 13:00Z
    "paid_at": "2026-06-01T09:00:00Z",
    "last_activity_at": "2026-05-01T08:00:00+02:00",
    "customer": {"tier": "gold", "name": "Ada"},
    "note": None,
    "reference": "20260315",  # looks numeric-date-ish; must stay a string
}


def ctx(**kw: Any) -> dict[str, Any]:
    kw.setdefault("now", NOW)
    kw.setdefault("tz", LONDON)
    attributes = kw.pop("attributes", ATTRS)
    return build_context(attributes, **kw)


def ev(text: str, context: dict[str, Any] | None = None) -> Any:
    return compile_expression(text).evaluate(context if context is not None else ctx())


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status == 'sent'", True),
        ('status != "sent"', False),
        ("amount > 100 and amount <= 120", True),
        ("amount < 100 or status == 'sent'", True),
        ("not (amount < 100)", True),
        ("not amount < 100", True),
        ("'vip' in tags", True),
        ("'new' not in tags", True),
        ("status in ['sent', 'overdue']", True),
        ("status in ('sen')", False),  # a parenthesised string: a substring test
        ("'sen' in status", True),
        ("'en' in 'sent'", True),
        ("note == null", True),
        ("note is None", True),
        ("note is not null", False),
        ("acknowledged == false", True),
        ("acknowledged is False", True),
        ("1 < 2 < 3", True),
        ("3 > 2 > 2", False),
        ("amount * 2 - 40 == 200", True),
        ("amount / 4 == 30", True),
        ("amount % 7 == 1", True),
        ("-amount < 0", True),
        ("ratio >= 0.5", True),
        ("1e3 == 1000", True),
        ("customer.tier == 'gold'", True),
        ("customer['name'] == 'Ada'", True),
        ("tags[0] == 'vip'", True),
        ("[1, 2,] == [1, 2]", True),
        ("reference == '20260315'", True),
        ("'it\\'s' == \"it's\"", True),
        ("true", True),
        ("null", None),
    ],
)
def test_evaluates(text: str, expected: Any) -> None:
    assert ev(text) == expected


def test_dotted_access_into_subject_event_and_recipient() -> None:
    c = ctx(
        subject={"kind": "invoice", "key": "INV-1", "attributes": {"x": 3, "due": "2026-06-01"}},
        event={"name": "order.paid", "id": "e1", "data": {"amount": 42, "at": "2026-06-09"}},
        recipient={"id": "c1", "locale": "fr"},
        acknowledged=True,
    )
    assert ev("subject.attributes.x == 3", c)
    assert ev("subject.kind == 'invoice' and subject.key == 'INV-1'", c)
    assert ev("subject.attributes.due < now", c)  # nested dates are converted too
    assert ev("event.data.amount >= 40 and event.name == 'order.paid'", c)
    assert ev("event.data.at > now - 2d", c)
    assert ev("recipient.locale in ['fr', 'de']", c)
    assert ev("acknowledged", c)


def test_model_records_are_accepted_as_subject_and_event() -> None:
    c = ctx(
        subject=Subject("invoice", "INV-1", {"due_at": "2026-06-01"}),
        event=Event("e1", "order.paid", "invoice/INV-1", {"amount": 5}),
    )
    assert ev("subject.attributes.due_at < now and event.data.amount == 5", c)


# --------------------------------------------------------------------------- dates


def test_date_attributes_become_utc_instants() -> None:
    c = ctx()
    assert c["due_at"] == datetime(2026, 6, 14, 23, 0, tzinfo=UTC)  # 00:00 BST
    assert c["starts_at"] == datetime(2026, 6, 10, 13, 0, tzinfo=UTC)  # local wall time
    assert c["paid_at"] == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert c["last_activity_at"] == datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
    assert c["reference"] == "20260315"
    assert c["now"] == NOW
    assert c["now"].tzinfo is UTC


def test_date_objects_and_naive_now() -> None:
    c = build_context({"d": datetime(2026, 1, 1, 9, 0)}, now=datetime(2026, 1, 1, 12, 0), tz=LONDON)
    assert c["d"] == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)  # London is UTC in winter
    assert c["now"] == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("due_at > now", True),
        ("due_at < now", False),
        ("paid_at < now", True),
        ("due_at <= '2026-12-01'", True),
        ("'2026-12-01' >= due_at", True),
        ("due_at == '2026-06-15'", True),  # same tz reading on both sides
        ("due_at == '2026-06-14T23:00:00Z'", True),
        ("due_at == 'not a date'", False),
        ("due_at < now + 7d", True),
        ("due_at - 30d < now", True),
        ("last_activity_at < now - 14d", True),
        ("now - last_activity_at > 14d", True),
        ("now - paid_at == 9d + 3h", True),
        ("starts_at - 1h == now", True),
        ("starts_at - 2h30m < now", True),
        ("now + 1w == now + 7d", True),
        ("'2026-06-20' - 1d > now", True),
        ("1d + now > now", True),
        ("-(1d) < 0s", True),
        ("due_at - 90s < due_at", True),
    ],
)
def test_date_comparisons_and_durations(text: str, expected: bool) -> None:
    assert ev(text) is expected


def test_d_and_w_are_exact_spans_in_expressions() -> None:
    # Across the London spring-forward change, 1d is 24 h of elapsed time here.
    c = ctx(now=datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert ev("now + 1d", c) == datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    assert ev("now + 1w", c) - ev("now", c) == timedelta(days=7)


@pytest.mark.parametrize("text", ["now + 1mo", "due_at - 1y", "now + 3bd", "now + 1d1mo"])
def test_calendar_units_are_refused(text: str) -> None:
    with pytest.raises(ExpressionError, match="not supported in expressions"):
        compile_expression(text)


# --------------------------------------------------------------------------- run-time failures


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("missing == 1", "missing attribute 'missing'"),
        ("customer.nope == 1", "missing attribute 'customer.nope'"),
        ("customer['nope']", "missing attribute 'nope'"),
        ("status.upper", "'status' is a string, not an object"),
        ("status.upper == 1", "cannot read 'status.upper'"),
        ("tags.count", "'tags' is a list, not an object"),
        ("note.x", "'note' is null"),
        ("event.name == 'x'", "'event' is null"),
        ("subject.kind", "'subject' is null"),
        ("status < 1", "cannot compare a string with a number"),
        ("note < 1", "cannot compare null with a number"),
        ("due_at < 'soon'", "cannot compare a date with a string"),
        ("status + 1", "cannot compute a string + a number"),
        ("status * 1000000000", "cannot compute a string * a number"),
        ("amount / 0", "division by zero"),
        ("-status", "cannot negate a string"),
        ("1 in amount", "'in' needs a list"),
        ("1 in status", "cannot look for a number in a string"),
        ("tags[5]", "out of range"),
        ("tags['x']", "cannot index a list with a string"),
        ("customer['_secret']", "cannot index an object with a string"),
        ("[1] in customer", "TypeError"),  # an unhashable key
    ],
)
def test_run_time_failures_are_evaluation_errors(text: str, message: str) -> None:
    expr = compile_expression(text)
    with pytest.raises(EvaluationError, match=re.escape(message)):
        expr.evaluate(ctx())
    ok, why = condition_holds(expr, ctx())
    assert ok is False
    assert why is not None and text in why


def test_condition_holds() -> None:
    assert condition_holds(None, ctx()) == (True, None)
    assert condition_holds(compile_expression("amount > 1"), ctx()) == (True, None)
    assert condition_holds(compile_expression("amount < 1"), ctx()) == (False, None)
    assert condition_holds(compile_expression("amount"), ctx()) == (True, None)  # truthiness
    assert condition_holds(compile_expression("note"), ctx()) == (False, None)
    ok, why = condition_holds(compile_expression("nope == 1"), ctx())
    assert (ok, why) == (
        False,
        "condition 'nope == 1' could not be evaluated: missing attribute 'nope'",
    )


def test_short_circuit_skips_failing_operands() -> None:
    assert ev("status == 'sent' or nope == 1") is True
    assert ev("status == 'x' and nope == 1") is False


def test_reserved_names_win_over_attributes_and_extra_comes_last() -> None:
    c = build_context(
        {"now": "yesterday", "acknowledged": "maybe", "event": 1, "x": 1},
        now=NOW,
        tz=UTC,
        acknowledged=True,
        extra={"x": 2, "overdue": [1, 2]},
    )
    assert c["now"] == NOW and c["acknowledged"] is True and c["event"] is None
    assert ev("x == 2 and overdue == [1, 2]", c)


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "names starting with '_' are not allowed"),
        ("().__class__.__bases__", "names starting with '_' are not allowed"),
        ("subject.__class__", "names starting with '_' are not allowed"),
        ("subject._private", "names starting with '_' are not allowed"),
        ("open('x')", "function calls are not allowed"),
        ("a.b()", "function calls are not allowed"),
        ("status.upper()", "function calls are not allowed"),
        ("(status)('x')", "function calls are not allowed"),
        ("[x for x in y]", "'for' is not allowed"),
        ("lambda: 1", "'lambda' is not allowed"),
        ("import os", "'import' is not allowed"),
        ("x if y else z", "'if' is not allowed"),
        ("9**9**9", "'\\*\\*' \\(power\\) is not allowed"),
        ("a // b", "'//' is not allowed"),
        ("a = 1", "use '==' to compare"),
        ("(a := 1)", "assignment is not allowed"),
        ("a && b", "use 'and'"),
        ("!a", "use 'not'"),
        ("{}", "unexpected character '{'"),
        ("f'{x}'", "unexpected"),
        ("a; b", "unexpected character ';'"),
        ("a @ b", "unexpected character '@'"),
        ("`a`", "unexpected character '`'"),
        ("x is 3", "'is' must be followed by null, true or false"),
    ],
)
def test_attacks_and_python_syntax_are_refused_at_compile_time(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(text)


def test_attribute_access_never_reaches_python_objects() -> None:
    # `.name` reads dict keys only, whatever the object: str methods, datetime attributes.
    for text in ("status.upper", "now.year", "now.tzinfo", "amount.real", "due_at.replace"):
        with pytest.raises(EvaluationError, match="not an object"):
            ev(text)


def test_huge_exponent_is_refused_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(ExpressionError):
        compile_expression("9**9**9**9")
    assert time.perf_counter() - start < 0.5


def test_very_long_input_is_refused_cleanly() -> None:
    with pytest.raises(ExpressionError, match=f"too long .*at most {MAX_LENGTH}"):
        compile_expression("a or " * 10_000 + "a")
    with pytest.raises(ExpressionError, match="too long"):
        compile_expression("(" * 100_000 + ")" * 100_000)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 500 + "1" + ")" * 500,
        "not " * 500 + "x",
        "-" * 1000 + "1",
        "[" * 1000 + "]" * 1000,
        "a" + "[0]" * 600,
        "a" + ".b" * 600,
    ],
)
def test_deep_nesting_is_a_clean_error(text: str) -> None:
    with pytest.raises(ExpressionError, match=f"nested more than {MAX_DEPTH} levels"):
        compile_expression(text)


def test_long_flat_chains_do_not_recurse() -> None:
    # Nearly MAX_LENGTH characters of flat operators: evaluated in loops, not recursion.
    assert ev("+".join(["1"] * 1999)) == 1999
    assert ev(" and ".join(["true"] * 400)) is True
    assert ev(" < ".join(str(i) for i in range(650))) is True


def test_nesting_within_the_limit_is_fine() -> None:
    depth = MAX_DEPTH // 2
    assert ev("(" * depth + "1" + ")" * depth) == 1


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("status ==", "at column 10: expected a value, found the end of the expression"),
        ("status == 'sent", "at column 11: unterminated string"),
        ("a b", "at column 3: unexpected 'b'"),
        ("(a", "at column 3: expected '\\)'"),
        ("a[0", "at column 4: expected '\\]'"),
        ("x.", "at column 3: expected a name after '.'"),
        ("x.1", "at column 3: expected a name after '.'"),
        ("3 days", "at column 3: unexpected 'days'"),
        ("3days > 1", "at column 1: '3days' is not a number or a duration"),
        ("1.5d", "'1.5d' is not a number or a duration"),
        ("a and or b", "at column 7: unexpected 'or'"),
        ("not", "expected a value"),
        ("in", "unexpected 'in'"),
        ("a.in", "unexpected 'in'"),
        ("a.true", "unexpected 'true'"),
    ],
)
def test_parse_errors_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(text)


def test_non_string_is_refused() -> None:
    with pytest.raises(ExpressionError, match="expected an expression as a string"):
        compile_expression(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compiled objects


def test_compile_once_evaluate_many() -> None:
    expr = compile_expression("status == 'sent' and due_at > now + 1d")
    assert compile_expression("status == 'sent' and due_at > now + 1d") is expr  # cached
    assert expr.text == "status == 'sent' and due_at > now + 1d"
    assert expr.names == frozenset({"status", "due_at", "now"})
    assert isinstance(expr, Expression) and repr(expr).startswith("Expression(")
    with pytest.raises(AttributeError):
        expr.text = "x"  # type: ignore[misc]
    c = ctx()
    start = time.perf_counter()
    for _ in range(20_000):
        expr.evaluate(c)
    # Generous bound (about 1 µs per evaluation here): guards against an accidental
    # re-parse or tree walk per call, not against a slow machine.
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- robustness

_ALPHABET = "abnotrueil_ ()[].,'\"=<>!+-*/%0123456789dhmswy:;{}@#\\"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_any_text_compiles_or_raises_expression_error_and_never_crashes(text: str) -> None:
    try:
        expr = compile_expression(text)
    except ExpressionError:
        return
    try:
        expr.evaluate(ctx(attributes={"a": 1, "b": "x", "n": None, "t": [1]}))
    except EvaluationError:
        pass
