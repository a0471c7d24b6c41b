"""The expression language's run-time semantics: what operators do to values.

Comparisons, membership, arithmetic on numbers, dates and durations (a string compared
with a date is read as an ISO 8601 date), and the small closures the parser builds for
names, ``.key`` and ``[index]``. Every failure is an :class:`EvaluationError`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from duly.core.rules import timemath

# The context key holding the timezone used to read date strings. It starts with "_", so no
# expression can name it.
TZ_KEY = "_tz"

Evaluator = Callable[[dict[str, Any]], Any]


class EvaluationError(Exception):
    """The expression failed while evaluating (missing attribute, incompatible types)."""


# --------------------------------------------------------------------------- run-time helpers


# Strings that look like ISO 8601 dates: only these are read as dates. (Python's
# fromisoformat alone would also read "20260315", which may well be an invoice number.)
_ISO_DATE_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)


def iso_instant(value: str, tz: tzinfo) -> datetime | None:
    """An ISO 8601 date or date-time string as an aware UTC datetime (spec: Time, via
    ``timemath.parse_instant``), else None."""
    if not _ISO_DATE_RE.match(value):
        return None
    try:
        return timemath.parse_instant(value, tz)  # type: ignore[arg-type]
    except timemath.BadDate:
        return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime):
        return "a date"
    if isinstance(value, timedelta):
        return "a duration"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _as_instant(value: Any, ctx: dict[str, Any]) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return iso_instant(value, ctx.get(TZ_KEY) or UTC)
    return None


def _dates(a: Any, b: Any, ctx: dict[str, Any]) -> tuple[Any, Any]:
    """If one side is a datetime and the other a string, read the string as a date."""
    if isinstance(a, datetime) and isinstance(b, str):
        parsed = _as_instant(b, ctx)
        if parsed is not None:
            return a, parsed
    elif isinstance(b, datetime) and isinstance(a, str):
        parsed = _as_instant(a, ctx)
        if parsed is not None:
            return parsed, b
    return a, b


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eq(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    a, b = _dates(a, b, ctx)
    return bool(a == b)


def _order(op: str) -> Callable[[Any, Any, dict[str, Any]], bool]:
    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]

    def compare(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
        a, b = _dates(a, b, ctx)
        ok = (
            (is_number(a) and is_number(b))
            or (type(a) is type(b) and isinstance(a, str | datetime | timedelta))
            or (isinstance(a, list) and isinstance(b, list))
        )
        if not ok:
            raise EvaluationError(f"cannot compare {type_name(a)} with {type_name(b)} using {op!r}")
        try:
            return bool(fn(a, b))
        except TypeError as e:
            raise EvaluationError(f"cannot compare using {op!r}: {e}") from None

    return compare


def _contains(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    if isinstance(b, str):
        if not isinstance(a, str):
            raise EvaluationError(f"cannot look for {type_name(a)} in a string")
        return a in b
    if isinstance(b, dict):
        return a in b
    if isinstance(b, list | tuple):
        return any(_eq(a, item, ctx) for item in b)
    raise EvaluationError(
        f"'in' needs a list, a string or an object on the right, got {type_name(b)}"
    )


def _not_contains(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return not _contains(a, b, ctx)


def add_values(a: Any, b: Any, ctx: dict[str, Any], sign: int) -> Any:
    try:
        return _add_or_overflow(a, b, ctx, sign)
    except OverflowError:
        op = "+" if sign > 0 else "-"
        raise EvaluationError(
            f"{type_name(a)} {op} {type_name(b)} is out of the range of dates (years 1 to 9999)"
        ) from None


def _add_or_overflow(a: Any, b: Any, ctx: dict[str, Any], sign: int) -> Any:
    if is_number(a) and is_number(b):
        return a + sign * b
    if isinstance(b, timedelta):
        if isinstance(a, timedelta):
            return a + sign * b
        instant = _as_instant(a, ctx)
        if instant is not None:
            return instant + sign * b
    if sign < 0 and not isinstance(b, timedelta):
        left, right = _as_instant(a, ctx), _as_instant(b, ctx)
        if (
            left is not None
            and right is not None
            and (isinstance(a, datetime) or isinstance(b, datetime))
        ):
            return left - right  # date - date: a duration
    if sign > 0 and isinstance(a, timedelta):
        instant = _as_instant(b, ctx)
        if instant is not None:
            return instant + a
    op = "+" if sign > 0 else "-"
    raise EvaluationError(f"cannot compute {type_name(a)} {op} {type_name(b)}")


def arith(op: str, a: Any, b: Any) -> Any:
    if not (is_number(a) and is_number(b)):
        raise EvaluationError(f"cannot compute {type_name(a)} {op} {type_name(b)}")
    try:
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        return a % b
    except ZeroDivisionError:
        raise EvaluationError("division by zero") from None


def is_same(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return a is b


def is_not_same(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return a is not b


COMPARISONS: dict[str, Callable[[Any, Any, dict[str, Any]], bool]] = {
    "==": _eq,
    "!=": lambda a, b, ctx: not _eq(a, b, ctx),
    "<": _order("<"),
    "<=": _order("<="),
    ">": _order(">"),
    ">=": _order(">="),
    "in": _contains,
    "not in": _not_contains,
}


def constant_fn(value: Any) -> Evaluator:
    return lambda ctx: value


def lookup_fn(name: str) -> Evaluator:
    def lookup(ctx: dict[str, Any]) -> Any:
        try:
            return ctx[name]
        except KeyError:
            raise EvaluationError(f"missing attribute {name!r}") from None

    return lookup


def getter_fn(obj_fn: Evaluator, key: str, path: str) -> Evaluator:
    """``obj.key``: reads a key of a dict, never a Python attribute."""

    def get(ctx: dict[str, Any]) -> Any:
        obj = obj_fn(ctx)
        if isinstance(obj, dict):
            try:
                return obj[key]
            except KeyError:
                raise EvaluationError(f"missing attribute {path!r}") from None
        parent = path.rsplit(".", 1)[0]
        raise EvaluationError(
            f"cannot read {path!r}: {parent!r} is {type_name(obj)}, not an object"
        )

    return get


def indexer_fn(obj_fn: Evaluator, key_fn: Evaluator, path: str) -> Evaluator:
    """``obj[key]``: a key of a dict (a string not starting with "_") or an index of a list."""

    def index(ctx: dict[str, Any]) -> Any:
        obj, key = obj_fn(ctx), key_fn(ctx)
        if isinstance(obj, dict) and isinstance(key, str) and not key.startswith("_"):
            try:
                return obj[key]
            except KeyError:
                raise EvaluationError(f"missing attribute {key!r} in {path!r}") from None
        if isinstance(obj, list | tuple) and isinstance(key, int) and not isinstance(key, bool):
            try:
                return obj[key]
            except IndexError:
                raise EvaluationError(f"index {key} is out of range in {path!r}") from None
        raise EvaluationError(f"cannot index {type_name(obj)} with {type_name(key)} in {path!r}")

    return index
