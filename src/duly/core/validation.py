"""What duly accepts from outside, and how it reads back what it stored before.

Every surface (the HTTP API, the web UI, the CLI, the engine behind them) checks input with
these functions, so the limits are the same everywhere and every database can hold what
passed (docs/reference/limits.md):

- **Text** is Unicode that encodes as UTF-8 — no lone surrogate such as ``"\\ud800"``, which
  JSON can spell but no UTF-8 file, page or database can hold — and has no NUL character
  (U+0000), which PostgreSQL refuses in text. Checked in every string: names, ids, titles,
  bodies, search boxes, path and query parameters, and every key and string value inside
  JSON.
- **JSON objects** (a subject's attributes, an event's data) nest at most ``MAX_DEPTH``
  levels (an object or list inside another counts one level), serialise to at most
  ``MAX_JSON_BYTES``, and hold only finite numbers (no ``NaN`` or ``Infinity``).
- **Instants** carry a UTC offset and fall, once converted to UTC, in
  ``[MIN_INSTANT, MAX_INSTANT)``: years 1900 to 9998. Every step of the planner (offsets of
  days or weeks, local-time conversions in any zone) stays inside what Python and both
  databases can represent.

Pure functions; a failed check raises :class:`~duly.core.errors.InvalidInput` naming the field
(``attributes.items.2.note``: dotted, list positions as numbers), as in every 4xx answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from duly.core.errors import InvalidInput

__all__ = [
    "MAX_DEPTH",
    "MAX_INSTANT",
    "MAX_JSON_BYTES",
    "MIN_INSTANT",
    "check_instant",
    "check_json",
    "check_text",
    "instant_problem",
    "json_problem",
    "readable",
    "text_problem",
]

MAX_DEPTH = 32
MAX_JSON_BYTES = 1 << 20  # 1 MiB
MIN_INSTANT = datetime(1900, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)  # exclusive: the last is 9998-12-31T23:59:59Z

# Stored data read back is cut below this depth (deeper values are replaced by a marker):
# older versions accepted any depth, and pydantic's serialiser stops at about 255 levels.
READ_DEPTH = 128
CUT = "…"


def text_problem(value: str) -> str | None:
    """What is wrong with a piece of text, or None."""
    if "\x00" in value:
        return "contains a NUL character (U+0000), which duly does not accept"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            return (
                f"contains a lone surrogate (U+{ord(bad):04X}), which is not valid Unicode: "
                "send text that encodes as UTF-8"
            )
    return None


def check_text(value: Any, field: str) -> None:
    """Raise InvalidInput naming ``field`` when ``value`` is a str with a NUL or a lone
    surrogate (other types are the caller's to check)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidInput(f"{field}: {problem}", field=field)


def _join(path: str, part: str | int) -> str:
    return f"{path}.{part}" if path else str(part)


def json_problem(
    value: Any, path: str = "", *, max_depth: int = MAX_DEPTH
) -> tuple[str, str] | None:
    """The first problem in a JSON value as ``(field, message)``, or None: text (keys and
    strings) as :func:`text_problem` wants it, finite numbers, at most ``max_depth`` levels
    of nesting. Iterative: a value nested deeper than Python's recursion limit is reported,
    not a RecursionError."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, str):
            problem = text_problem(v)
            if problem:
                return where, problem
        elif isinstance(v, float):
            if not math.isfinite(v):
                return where, f"{v} is not a number JSON can hold: send a finite number"
        elif isinstance(v, Mapping | list | tuple):
            if depth >= max_depth:
                return where, (f"nested too deep: at most {max_depth} levels of objects and lists")
            if isinstance(v, Mapping):
                children = []
                for k, child in v.items():
                    if not isinstance(k, str):
                        return where, "object keys must be text"
                    problem = text_problem(k)
                    if problem:
                        return where, f"a key {problem}"
                    children.append((child, _join(where, k), depth + 1))
            else:
                children = [(child, _join(where, i), depth + 1) for i, child in enumerate(v)]
            stack.extend(reversed(children))
    return None


def check_json(
    value: Any, field: str, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_JSON_BYTES
) -> None:
    """Raise InvalidInput for the first problem :func:`json_problem` finds in ``value``
    (``field`` is the path of ``value`` itself), or when it serialises to over
    ``max_bytes``."""
    found = json_problem(value, field, max_depth=max_depth)
    if found is not None:
        where, problem = found
        raise InvalidInput(f"{where}: {problem}", field=where)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_bytes:
        raise InvalidInput(
            f"{field}: {size:,} bytes as JSON; at most {max_bytes:,} ({max_bytes >> 20} MiB)",
            field=field,
        )


def instant_problem(t: datetime) -> str | None:
    """What is wrong with an instant, or None."""
    if t.tzinfo is None or t.utcoffset() is None:
        return "needs a UTC offset or Z"
    try:
        utc = t.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not MIN_INSTANT <= utc < MAX_INSTANT:
        return "is out of range: in UTC it must fall in the years 1900 to 9998"
    return None


def check_instant(t: datetime | None, field: str) -> None:
    """Raise InvalidInput naming ``field`` unless ``t`` is None or a supported instant."""
    if t is None:
        return
    problem = instant_problem(t)
    if problem:
        raise InvalidInput(f"{field} {problem}", field=field)


def _readable_text(s: str) -> str:
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        # a pair of surrogates becomes its character; a lone one U+FFFD
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def readable(value: Any, *, max_depth: int = READ_DEPTH) -> Any:
    """Stored JSON (or text) made safe to show: lone surrogates become U+FFFD, and values
    nested deeper than ``max_depth`` are replaced by ``"…"``. Data stored before these
    checks existed is shown as far as it can be, never a 500."""
    if isinstance(value, str):
        return _readable_text(value)
    if not isinstance(value, Mapping | list | tuple):
        return value
    if max_depth <= 0:
        return CUT
    if isinstance(value, Mapping):
        return {
            _readable_text(str(k)): readable(v, max_depth=max_depth - 1) for k, v in value.items()
        }
    return [readable(v, max_depth=max_depth - 1) for v in value]
