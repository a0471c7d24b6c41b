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
import operator
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from duly.model import DurationError, DurationTooLong, parse_duration
from duly.rules import timemath

__all__ = [
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "build_context",
    "compile_expression",
    "condition_holds",
]

MAX_LENGTH = 4000  # characters; a condition is a line or two
MAX_DEPTH = 40  # nesting of parentheses, lists, subscripts, `not` and unary signs
MAX_NUMBER_DIGITS = 30  # a number literal (digits, point and exponent included)
# A duration literal: 1,000 years is far beyond any rule's need, and far inside what a date
# can be moved by (which an overflowing ``99999999999999999999999d`` was not).
MAX_DURATION = timedelta(days=365_250)

# The context key holding the timezone used to read date strings. It starts with "_", so no
# expression can name it.
_TZ_KEY = "_tz"

Evaluator = Callable[[dict[str, Any]], Any]


class ExpressionError(ValueError):
    """The expression cannot be compiled; the message says what and where (column)."""


class EvaluationError(Exception):
    """The expression failed while evaluating (missing attribute, incompatible types)."""


# --------------------------------------------------------------------------- tokens

_SPACE_RE = re.compile(r"\s+")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A duration is digits+unit repeated (``2h30m``); `mo` before `m` so `1mo` is one token.
_DURATION_RE = re.compile(r"(?:\d+(?:mo|bd|[smhdwy]))+(?![A-Za-z0-9_])", re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+)(mo|bd|[smhdwy])", re.ASCII)
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_IDENT_CHAR_RE = re.compile(r"[A-Za-z0-9_]")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_OPERATORS = (
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "%",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
)
_REFUSED_OPERATORS = {
    "**": "'**' (power) is not allowed",
    "//": "'//' is not allowed; use '/'",
    "&&": "use 'and' instead of '&&'",
    "||": "use 'or' instead of '||'",
    ":=": "assignment is not allowed",
    "=": "use '==' to compare",
    "!": "use 'not' instead of '!'",
}
_CONSTANTS: dict[str, bool | None] = {"true": True, "True": True, "false": False, "False": False}
_CONSTANTS |= {"null": None, "None": None}
_KEYWORDS = {"and", "or", "not", "in", "is"}
# Python keywords get a clear refusal instead of a puzzling parse error.
_PYTHON_KEYWORDS = frozenset(
    "lambda import from for if else elif while def class return yield await async global "
    "nonlocal del pass with as assert raise try except finally break continue".split()
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # NUM DUR STR NAME OP END
    value: Any
    pos: int  # 0-based offset in the text
    text: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        m = _SPACE_RE.match(text, i)
        if m:
            i = m.end()
            continue
        c = text[i]
        # ASCII only: "²" is a digit and "é" a letter to str methods, but not to the grammar
        if "0" <= c <= "9":
            m = _DURATION_RE.match(text, i)
            if m:
                tokens.append(_Token("DUR", _duration(m.group(), i), i, m.group()))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and _IDENT_CHAR_RE.match(text, end):
                word = text[i:end] + _NAME_RE.match(text, end).group()  # type: ignore[union-attr]
                raise _error(
                    text,
                    i,
                    f"{word!r} is not a number or a duration (duration units: s, m, h, d, w)",
                )
            num = m.group()
            if len(num) > MAX_NUMBER_DIGITS:
                raise _error(
                    text, i, f"the number is too long: at most {MAX_NUMBER_DIGITS} characters"
                )
            value: int | float = float(num) if any(ch in num for ch in ".eE") else int(num)
            if value == float("inf"):
                raise _error(text, i, f"the number {num} is too large")
            tokens.append(_Token("NUM", value, i, num))
            i = end
            continue
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _NAME_RE.match(text, i)
            assert m is not None
            word = m.group()
            if word.startswith("_"):
                raise _error(text, i, f"names starting with '_' are not allowed: {word!r}")
            if word in _PYTHON_KEYWORDS:
                raise _error(text, i, f"{word!r} is not allowed in expressions")
            tokens.append(_Token("NAME", m.group(), i, m.group()))
            i = m.end()
            continue
        if c in "'\"":
            value_s, end = _string(text, i)
            tokens.append(_Token("STR", value_s, i, text[i:end]))
            i = end
            continue
        for op in ("**", "//", "&&", "||", ":="):
            if text.startswith(op, i):
                raise _error(text, i, _REFUSED_OPERATORS[op])
        two = text[i : i + 2]
        if two in _OPERATORS:
            tokens.append(_Token("OP", two, i, two))
            i += 2
            continue
        if c in _OPERATORS:
            tokens.append(_Token("OP", c, i, c))
            i += 1
            continue
        if c in _REFUSED_OPERATORS:
            raise _error(text, i, _REFUSED_OPERATORS[c])
        raise _error(text, i, f"unexpected character {c!r}")
    tokens.append(_Token("END", None, n, ""))
    return tokens


def _duration(word: str, pos: int) -> timedelta:
    parts = _DURATION_PART_RE.findall(word)
    for _, unit in parts:
        if unit not in _UNIT_SECONDS:
            raise ExpressionError(
                f"at column {pos + 1}: {word!r}: months (mo), years (y) and business days (bd) "
                "have no fixed length and are not supported in expressions; use s, m, h, d or w"
            )
    try:  # the rule file's longest duration (and no int() of thousands of digits)
        parse_duration(word)
    except DurationTooLong as e:
        raise ExpressionError(f"at column {pos + 1}: {e}") from None
    except DurationError:
        pass  # the shape is checked by the tokenizer's pattern
    seconds = 0
    for num, unit in parts:
        seconds += int(num) * _UNIT_SECONDS[unit]
    if seconds > MAX_DURATION.total_seconds():
        raise ExpressionError(
            f"at column {pos + 1}: {word!r} is too long a duration: at most "
            f"{MAX_DURATION.days:,}d (1,000 years)"
        )
    return timedelta(seconds=seconds)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    raise _error(text, start, "unterminated string")


def _error(text: str, pos: int, message: str) -> ExpressionError:
    return ExpressionError(f"at column {pos + 1}: {message}")


# --------------------------------------------------------------------------- run-time helpers


# Strings that look like ISO 8601 dates: only these are read as dates. (Python's
# fromisoformat alone would also read "20260315", which may well be an invoice number.)
_ISO_DATE_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)


def _instant(value: str, tz: tzinfo) -> datetime | None:
    """An ISO 8601 date or date-time string as an aware UTC datetime (spec: Time, via
    ``timemath.parse_instant``), else None."""
    if not _ISO_DATE_RE.match(value):
        return None
    try:
        return timemath.parse_instant(value, tz)  # type: ignore[arg-type]
    except timemath.BadDate:
        return None


def _type_name(value: Any) -> str:
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
        return _instant(value, ctx.get(_TZ_KEY) or UTC)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eq(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    a, b = _dates(a, b, ctx)
    return bool(a == b)


def _order(op: str) -> Callable[[Any, Any, dict[str, Any]], bool]:
    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]

    def compare(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
        a, b = _dates(a, b, ctx)
        ok = (
            (_is_number(a) and _is_number(b))
            or (type(a) is type(b) and isinstance(a, str | datetime | timedelta))
            or (isinstance(a, list) and isinstance(b, list))
        )
        if not ok:
            raise EvaluationError(
                f"cannot compare {_type_name(a)} with {_type_name(b)} using {op!r}"
            )
        try:
            return bool(fn(a, b))
        except TypeError as e:
            raise EvaluationError(f"cannot compare using {op!r}: {e}") from None

    return compare


def _contains(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    if isinstance(b, str):
        if not isinstance(a, str):
            raise EvaluationError(f"cannot look for {_type_name(a)} in a string")
        return a in b
    if isinstance(b, dict):
        return a in b
    if isinstance(b, list | tuple):
        return any(_eq(a, item, ctx) for item in b)
    raise EvaluationError(
        f"'in' needs a list, a string or an object on the right, got {_type_name(b)}"
    )


def _not_contains(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return not _contains(a, b, ctx)


def _add(a: Any, b: Any, ctx: dict[str, Any], sign: int) -> Any:
    try:
        return _add_or_overflow(a, b, ctx, sign)
    except OverflowError:
        op = "+" if sign > 0 else "-"
        raise EvaluationError(
            f"{_type_name(a)} {op} {_type_name(b)} is out of the range of dates (years 1 to 9999)"
        ) from None


def _add_or_overflow(a: Any, b: Any, ctx: dict[str, Any], sign: int) -> Any:
    if _is_number(a) and _is_number(b):
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
    raise EvaluationError(f"cannot compute {_type_name(a)} {op} {_type_name(b)}")


def _arith(op: str, a: Any, b: Any) -> Any:
    if not (_is_number(a) and _is_number(b)):
        raise EvaluationError(f"cannot compute {_type_name(a)} {op} {_type_name(b)}")
    try:
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        return a % b
    except ZeroDivisionError:
        raise EvaluationError("division by zero") from None


def _is(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return a is b


def _is_not(a: Any, b: Any, ctx: dict[str, Any]) -> bool:
    return a is not b


# --------------------------------------------------------------------------- parser


_COMPARISONS: dict[str, Callable[[Any, Any, dict[str, Any]], bool]] = {
    "==": _eq,
    "!=": lambda a, b, ctx: not _eq(a, b, ctx),
    "<": _order("<"),
    "<=": _order("<="),
    ">": _order(">"),
    ">=": _order(">="),
    "in": _contains,
    "not in": _not_contains,
}


class _Parser:
    """Recursive descent over the tokens, producing closures ``ctx -> value``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.names: set[str] = set()

    # -- token helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "OP" and self.tok.value in ops

    def at_word(self, *words: str) -> bool:
        return self.tok.kind == "NAME" and self.tok.value in words

    def fail(self, message: str, token: _Token | None = None) -> ExpressionError:
        return _error(self.text, (token or self.tok).pos, message)

    def expect_op(self, op: str) -> None:
        if not self.at_op(op):
            raise self.fail(f"expected {op!r}, found {self._describe(self.tok)}")
        self.advance()

    def _describe(self, t: _Token) -> str:
        return "the end of the expression" if t.kind == "END" else repr(t.text)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the expression is nested more than {MAX_DEPTH} levels deep")

    # -- grammar
    def parse(self) -> Evaluator:
        fn = self.expr()
        if self.tok.kind != "END":
            raise self.fail(f"unexpected {self._describe(self.tok)}")
        return fn

    def expr(self) -> Evaluator:
        self.nest()
        parts = [self.and_expr()]
        while self.at_word("or"):
            self.advance()
            parts.append(self.and_expr())
        self.depth -= 1
        if len(parts) == 1:
            return parts[0]
        terms = tuple(parts)
        return lambda ctx: any(bool(t(ctx)) for t in terms)

    def and_expr(self) -> Evaluator:
        parts = [self.not_expr()]
        while self.at_word("and"):
            self.advance()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        terms = tuple(parts)
        return lambda ctx: all(bool(t(ctx)) for t in terms)

    def not_expr(self) -> Evaluator:
        if self.at_word("not"):
            self.advance()
            self.nest()
            inner = self.not_expr()
            self.depth -= 1
            return lambda ctx: not bool(inner(ctx))
        return self.comparison()

    def comparison(self) -> Evaluator:
        first = self.sum()
        ops: list[Callable[[Any, Any, dict[str, Any]], bool]] = []
        rest: list[Evaluator] = []
        while True:
            op = self.comparison_op()
            if op is None:
                break
            if op in ("is", "is not"):
                constant = self.identity_operand(op)
                ops.append(_is if op == "is" else _is_not)
                rest.append(_constant(constant))
                continue
            ops.append(_COMPARISONS[op])
            rest.append(self.sum())
        if not ops:
            return first
        pairs = tuple(zip(ops, rest, strict=True))

        def chain(ctx: dict[str, Any]) -> bool:
            left = first(ctx)
            for compare, right_fn in pairs:
                right = right_fn(ctx)
                if not compare(left, right, ctx):
                    return False
                left = right
            return True

        return chain

    def comparison_op(self) -> str | None:
        t = self.tok
        if t.kind == "OP" and t.value in ("==", "!=", "<", "<=", ">", ">="):
            self.advance()
            return str(t.value)
        if self.at_word("in"):
            self.advance()
            return "in"
        if self.at_word("not") and self.tokens[self.i + 1].kind == "NAME":
            if self.tokens[self.i + 1].value == "in":
                self.i += 2
                return "not in"
        if self.at_word("is"):
            self.advance()
            if self.at_word("not"):
                self.advance()
                return "is not"
            return "is"
        return None

    def identity_operand(self, op: str) -> Any:
        """``x is null`` / ``x is not true``: only against null, true or false, where
        identity and equality agree."""
        t = self.tok
        if t.kind != "NAME" or t.value not in _CONSTANTS:
            raise self.fail(f"{op!r} must be followed by null, true or false; use '==' to compare")
        self.advance()
        return _CONSTANTS[t.value]

    def sum(self) -> Evaluator:
        first = self.product()
        rest: list[tuple[int, Evaluator]] = []
        while self.at_op("+", "-"):
            sign = 1 if self.advance().value == "+" else -1
            rest.append((sign, self.product()))
        if not rest:
            return first
        terms = tuple(rest)

        def total(ctx: dict[str, Any]) -> Any:
            value = first(ctx)
            for sign, term in terms:
                value = _add(value, term(ctx), ctx, sign)
            return value

        return total

    def product(self) -> Evaluator:
        first = self.unary()
        rest: list[tuple[str, Evaluator]] = []
        while self.at_op("*", "/", "%"):
            rest.append((str(self.advance().value), self.unary()))
        if not rest:
            return first
        terms = tuple(rest)

        def product(ctx: dict[str, Any]) -> Any:
            value = first(ctx)
            for op, term in terms:
                value = _arith(op, value, term(ctx))
            return value

        return product

    def unary(self) -> Evaluator:
        if self.at_op("-", "+"):
            op = self.advance().value
            self.nest()
            inner = self.unary()
            self.depth -= 1
            if op == "+":
                return inner

            def negate(ctx: dict[str, Any]) -> Any:
                value = inner(ctx)
                if _is_number(value):
                    return -value
                if isinstance(value, timedelta):
                    try:
                        return -value
                    except OverflowError:
                        raise EvaluationError("the duration is out of range") from None
                raise EvaluationError(f"cannot negate {_type_name(value)}")

            return negate
        return self.postfix()

    def postfix(self) -> Evaluator:
        fn, path = self.atom()
        levels = 0  # each `.x` / `[k]` wraps the closure once more: count it as nesting
        while True:
            if self.at_op(".", "["):
                self.nest()
                levels += 1
            if self.at_op("."):
                self.advance()
                t = self.tok
                if t.kind != "NAME":
                    raise self.fail(f"expected a name after '.', found {self._describe(t)}")
                self._check_name(t)
                self.advance()
                path = f"{path}.{t.value}" if path else f"(...).{t.value}"
                fn = _getter(fn, t.value, path)
            elif self.at_op("["):
                self.advance()
                key_fn = self.expr()
                self.expect_op("]")
                path = f"{path}[...]" if path else "(...)[...]"
                fn = _indexer(fn, key_fn, path)
            elif self.at_op("("):
                raise self.fail("function calls are not allowed")
            else:
                self.depth -= levels
                return fn

    def atom(self) -> tuple[Evaluator, str | None]:
        t = self.tok
        if t.kind in ("NUM", "DUR", "STR"):
            self.advance()
            return _constant(t.value), None
        if t.kind == "NAME":
            if t.value in _CONSTANTS:
                self.advance()
                return _constant(_CONSTANTS[t.value]), None
            if t.value in _KEYWORDS:
                raise self.fail(f"unexpected {t.value!r}")
            self._check_name(t)
            self.advance()
            self.names.add(t.value)
            return _lookup(t.value), t.value
        if self.at_op("("):
            self.advance()
            inner = self.expr()
            self.expect_op(")")
            return inner, None
        if self.at_op("["):
            self.advance()
            self.nest()
            items: list[Evaluator] = []
            while not self.at_op("]"):
                items.append(self.expr())
                if not self.at_op(","):
                    break
                self.advance()
            self.expect_op("]")
            self.depth -= 1
            elements = tuple(items)
            return (lambda ctx: [e(ctx) for e in elements]), None
        raise self.fail(f"expected a value, found {self._describe(t)}")

    def _check_name(self, t: _Token) -> None:
        # "_names" and Python keywords are already refused by the tokenizer.
        if t.value in _KEYWORDS or t.value in _CONSTANTS:
            raise self.fail(f"unexpected {t.value!r}", t)


def _constant(value: Any) -> Evaluator:
    return lambda ctx: value


def _lookup(name: str) -> Evaluator:
    def lookup(ctx: dict[str, Any]) -> Any:
        try:
            return ctx[name]
        except KeyError:
            raise EvaluationError(f"missing attribute {name!r}") from None

    return lookup


def _getter(obj_fn: Evaluator, key: str, path: str) -> Evaluator:
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
            f"cannot read {path!r}: {parent!r} is {_type_name(obj)}, not an object"
        )

    return get


def _indexer(obj_fn: Evaluator, key_fn: Evaluator, path: str) -> Evaluator:
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
        raise EvaluationError(f"cannot index {_type_name(obj)} with {_type_name(key)} in {path!r}")

    return index


# --------------------------------------------------------------------------- public API


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
        raise ExpressionError(f"expected an expression as a string, got {_type_name(text)}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"the expression is too long ({len(text)} characters; at most {MAX_LENGTH})"
        )
    if not text.strip():
        raise ExpressionError("the expression is empty")
    parser = _Parser(text)
    fn = parser.parse()
    return Expression(text, fn, frozenset(parser.names))


def _as_dict(value: Any) -> dict[str, Any]:
    """A dict, or a model dataclass (Subject, Event, Recipient) as a shallow dict."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"expected a dict, got {type(value).__name__}")


def _convert_dates(values: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """Top-level ISO date strings (and date/datetime objects) as aware UTC datetimes."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            parsed = _instant(value, tz)
            out[key] = value if parsed is None else parsed
        elif isinstance(value, date):  # datetime too (a subclass)
            try:
                out[key] = timemath.parse_instant(value, tz)  # type: ignore[arg-type]
            except timemath.BadDate:
                out[key] = value
        else:
            out[key] = value
    return out


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
) -> dict[str, Any]:
    """The names an expression can read.

    The subject's attributes are top-level names (dates converted, see module doc); then
    ``now`` (aware UTC; a naive ``now`` is taken as UTC), ``subject``, ``event``,
    ``recipient`` (None when not given, so ``event.name`` on a date rule says "is null"
    rather than silently reading an attribute named ``event``) and ``acknowledged``. These
    reserved names win over attributes of the same name; ``extra`` (e.g. collected data)
    is added last.
    """
    ctx = _convert_dates(attributes, tz)
    ctx["now"] = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    subject_d = None
    if subject is not None:
        subject_d = _as_dict(subject)
        if isinstance(subject_d.get("attributes"), dict):
            subject_d["attributes"] = _convert_dates(subject_d["attributes"], tz)
    event_d = None
    if event is not None:
        event_d = _as_dict(event)
        if isinstance(event_d.get("data"), dict):
            event_d["data"] = _convert_dates(event_d["data"], tz)
    ctx["subject"] = subject_d
    ctx["event"] = event_d
    ctx["recipient"] = None if recipient is None else _as_dict(recipient)
    ctx["acknowledged"] = bool(acknowledged)
    if extra:
        ctx.update(extra)
    ctx[_TZ_KEY] = tz
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
