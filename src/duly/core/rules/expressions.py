"""Sandboxed condition expressions: rules' ``if``, step ``if`` and collection filters.

Why not ``eval`` or Jinja2: a condition runs for every delivery and is written by whoever
edits the rule file (or posts one to ``/v1/rules:check``). A tiny language of its own,
tokenised and parsed here, cannot reach Python objects at all: there is no syntax for calls,
imports, lambdas or comprehensions, names starting with ``_`` are refused, and ``.name``
only reads a key of a dict (a JSON object) — never an attribute of a Python object.

Grammar (loosest binding first)::

    expr        := and_expr ("or" and_expr)*
    and_expr    := not_expr ("and" not_expr)*
    not_expr    := "not" not_expr | comparison
    comparison  := sum (OP sum)*         OP: == != < <= > >= in "not in" is "is not"
    sum         := product (("+" | "-") product)*
    product     := unary (("*" | "/" | "%") unary)*
    unary       := ("-" | "+") unary | postfix
    postfix     := atom ("." NAME | "[" expr "]")*
    atom        := NUMBER | DURATION | STRING | true | false | null | NAME
                 | "(" expr ")" | "[" [expr ("," expr)* [","]] "]"

A DURATION literal is ``7d``, ``2h30m``, ``90s``: units s, m, h, d, w. In expressions ``d``
and ``w`` are exact spans of 24 h and 7 × 24 h (a ``timedelta``), unlike in ``at:`` where
they are calendar days in the recipient's timezone: a condition such as
``last_activity_at < now - 14d`` does not need daylight-saving precision, and keeping
expressions free of timezone arithmetic keeps them fast. ``mo``, ``y`` and ``bd`` have no
exact length, so they are refused.

An expression is compiled once into nested Python closures (no tree walking at run time)
and :func:`compile_expression` caches by text, so the engine may call it freely.

Dates: :func:`build_context` turns ISO 8601 strings among the subject's attributes (and
``subject.attributes``, ``event.data``) into aware UTC datetimes, and a comparison or
arithmetic between a datetime and a string parses the string as a date, so both
``due_at < now`` and ``expires_at <= '2026-12-01'`` work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import UTC, date, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from duly.core.rules import timemath
from duly.core.rules.exprparser import Parser
from duly.core.rules.exprtokens import (
    MAX_DEPTH,
    MAX_DURATION,
    MAX_LENGTH,
    MAX_NUMBER_DIGITS,
    ExpressionError,
)
from duly.core.rules.exprvalues import TZ_KEY, EvaluationError, Evaluator, iso_instant, type_name

__all__ = [
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_LENGTH",
    "MAX_NUMBER_DIGITS",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "build_context",
    "compile_expression",
    "condition_holds",
]


class Expression:
    """A compiled condition. Immutable, so one compiled expression serves every delivery."""

    __slots__ = ("_fn", "names", "text")

    text: str
    names: frozenset[str]  # top-level names it reads (attributes, now, subject, …)
    _fn: Evaluator

    def __init__(self, text: str, fn: Evaluator, names: frozenset[str]) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expression is immutable")

    def evaluate(self, context: dict[str, Any]) -> Any:
        """The expression's value; raises :class:`EvaluationError` on a run-time failure."""
        try:
            return self._fn(context)
        except EvaluationError:
            raise
        except (ArithmeticError, TypeError, ValueError, RecursionError) as e:
            # Never let odd data crash the engine: every failure is an EvaluationError.
            raise EvaluationError(f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Expression:
    """Compile ``text``; raises :class:`ExpressionError` saying what is wrong and where.

    Cached by text: the planner and dispatcher can call this for every delivery.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expected an expression as a string, got {type_name(text)}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"the expression is too long ({len(text)} characters; at most {MAX_LENGTH})"
        )
    if not text.strip():
        raise ExpressionError("the expression is empty")
    parser = Parser(text)
    fn = parser.parse()
    return Expression(text, fn, frozenset(parser.names))


def _as_dict(value: Any) -> dict[str, Any]:
    """A dict, or a model dataclass (Subject, Event, Recipient) as a shallow dict."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"expected a dict, got {type(value).__name__}")


def _convert_date(value: Any, tz: tzinfo) -> Any:
    """One value as :func:`_convert_dates` stores it."""
    if isinstance(value, str):
        parsed = iso_instant(value, tz)
        return value if parsed is None else parsed
    if isinstance(value, date):  # datetime too (a subclass)
        try:
            return timemath.parse_instant(value, tz)  # type: ignore[arg-type]
        except timemath.BadDate:
            return value
    return value


def _convert_dates(values: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """Top-level ISO date strings (and date/datetime objects) as aware UTC datetimes."""
    return {key: _convert_date(value, tz) for key, value in values.items()}


# The names build_context gives whatever the attributes hold, in the order it sets them.
_RESERVED = ("now", "subject", "event", "recipient", "acknowledged")


def _reserved_value(
    name: str,
    now: datetime,
    tz: ZoneInfo | tzinfo,
    subject: dict[str, Any] | None,
    event: dict[str, Any] | None,
    recipient: dict[str, Any] | None,
    acknowledged: bool,
) -> Any:
    """The value of one of the ``_RESERVED`` names in :func:`build_context`."""
    if name == "now":
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    if name == "subject":
        if subject is None:
            return None
        subject_d = _as_dict(subject)
        if isinstance(subject_d.get("attributes"), dict):
            subject_d["attributes"] = _convert_dates(subject_d["attributes"], tz)
        return subject_d
    if name == "event":
        if event is None:
            return None
        event_d = _as_dict(event)
        if isinstance(event_d.get("data"), dict):
            event_d["data"] = _convert_dates(event_d["data"], tz)
        return event_d
    if name == "recipient":
        return None if recipient is None else _as_dict(recipient)
    return bool(acknowledged)


def build_context(
    attributes: dict[str, Any],
    *,
    now: datetime,
    tz: ZoneInfo | tzinfo,
    subject: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
    recipient: dict[str, Any] | None = None,
    acknowledged: bool = False,
    extra: dict[str, Any] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """The names an expression can read.

    The subject's attributes are top-level names (dates converted, see module doc); then
    ``now`` (aware UTC; a naive ``now`` is taken as UTC), ``subject``, ``event``,
    ``recipient`` (None when not given, so ``event.name`` on a date rule says "is null"
    rather than silently reading an attribute named ``event``) and ``acknowledged``. These
    reserved names win over attributes of the same name; ``extra`` (e.g. collected data)
    is added last.

    ``only``: just these names (an expression's ``names``, the only ones it can read),
    each with the value the whole context would give it, and none of the others: for
    conditions evaluated once per subject, where converting every attribute costs more
    than the evaluation.
    """
    reserved = (now, tz, subject, event, recipient, acknowledged)
    if only is None:
        ctx = _convert_dates(attributes, tz)
        for name in _RESERVED:
            ctx[name] = _reserved_value(name, *reserved)
        if extra:
            ctx.update(extra)
    else:
        ctx = {}
        for name in only:
            if extra and name in extra:
                ctx[name] = extra[name]
            elif name in _RESERVED:
                ctx[name] = _reserved_value(name, *reserved)
            elif name in attributes:
                ctx[name] = _convert_date(attributes[name], tz)
    ctx[TZ_KEY] = tz
    return ctx


def condition_holds(expr: Expression | None, context: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether a condition holds: ``(True, None)`` for no condition; a run-time failure
    counts as false (spec: Expressions) and comes back as the message to record.

    The value's truthiness decides, as in Python: ``if: "overdue_count"`` holds when the
    count is non-zero.
    """
    if expr is None:
        return True, None
    try:
        return bool(expr.evaluate(context)), None
    except EvaluationError as e:
        return False, f"condition {expr.text!r} could not be evaluated: {e}"
