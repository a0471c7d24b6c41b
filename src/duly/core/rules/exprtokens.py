"""The expression language's tokenizer: text to tokens, literals checked on the way.

Numbers, duration literals (``2h30m``), strings, names and operators; what the grammar
refuses outright (``**``, ``&&``, Python keywords, names starting with ``_``) is refused
here with a message naming the column. The limits on an expression's size live here too.
See :mod:`duly.core.rules.expressions` for the language itself.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import Any

from duly.core.model import DurationError, DurationTooLong, parse_duration

MAX_LENGTH = 4000  # characters; a condition is a line or two
MAX_DEPTH = 40  # nesting of parentheses, lists, subscripts, `not` and unary signs
MAX_NUMBER_DIGITS = 30  # a number literal (digits, point and exponent included)
# A duration literal: 1,000 years is far beyond any rule's need, and far inside what a date
# can be moved by (which an overflowing ``99999999999999999999999d`` was not).
MAX_DURATION = timedelta(days=365_250)


class ExpressionError(ValueError):
    """The expression cannot be compiled; the message says what and where (column)."""


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
CONSTANTS: dict[str, bool | None] = {"true": True, "True": True, "false": False, "False": False}
CONSTANTS |= {"null": None, "None": None}
KEYWORDS = {"and", "or", "not", "in", "is"}
# Python keywords get a clear refusal instead of a puzzling parse error.
_PYTHON_KEYWORDS = frozenset(
    "lambda import from for if else elif while def class return yield await async global "
    "nonlocal del pass with as assert raise try except finally break continue".split()
)


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    kind: str  # NUM DUR STR NAME OP END
    value: Any
    pos: int  # 0-based offset in the text
    text: str


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
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
                tokens.append(Token("DUR", _duration(m.group(), i), i, m.group()))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and _IDENT_CHAR_RE.match(text, end):
                word = text[i:end] + _NAME_RE.match(text, end).group()  # type: ignore[union-attr]
                raise error_at(
                    text,
                    i,
                    f"{word!r} is not a number or a duration (duration units: s, m, h, d, w)",
                )
            num = m.group()
            if len(num) > MAX_NUMBER_DIGITS:
                raise error_at(
                    text, i, f"the number is too long: at most {MAX_NUMBER_DIGITS} characters"
                )
            value: int | float = float(num) if any(ch in num for ch in ".eE") else int(num)
            if value == float("inf"):
                raise error_at(text, i, f"the number {num} is too large")
            tokens.append(Token("NUM", value, i, num))
            i = end
            continue
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _NAME_RE.match(text, i)
            assert m is not None
            word = m.group()
            if word.startswith("_"):
                raise error_at(text, i, f"names starting with '_' are not allowed: {word!r}")
            if word in _PYTHON_KEYWORDS:
                raise error_at(text, i, f"{word!r} is not allowed in expressions")
            tokens.append(Token("NAME", m.group(), i, m.group()))
            i = m.end()
            continue
        if c in "'\"":
            value_s, end = _string(text, i)
            tokens.append(Token("STR", value_s, i, text[i:end]))
            i = end
            continue
        for op in ("**", "//", "&&", "||", ":="):
            if text.startswith(op, i):
                raise error_at(text, i, _REFUSED_OPERATORS[op])
        two = text[i : i + 2]
        if two in _OPERATORS:
            tokens.append(Token("OP", two, i, two))
            i += 2
            continue
        if c in _OPERATORS:
            tokens.append(Token("OP", c, i, c))
            i += 1
            continue
        if c in _REFUSED_OPERATORS:
            raise error_at(text, i, _REFUSED_OPERATORS[c])
        raise error_at(text, i, f"unexpected character {c!r}")
    tokens.append(Token("END", None, n, ""))
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
    raise error_at(text, start, "unterminated string")


def error_at(text: str, pos: int, message: str) -> ExpressionError:
    return ExpressionError(f"at column {pos + 1}: {message}")
