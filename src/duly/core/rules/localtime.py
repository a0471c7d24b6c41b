"""Local time for rules: timezones, wall clock to instant, and reading date attributes.

Reference: docs/reference/rules.md, "Time". Every instant is an aware ``datetime``
in UTC; wall-clock times are naive datetimes, turned into instants only by
:func:`resolve_local`, the single place where daylight-saving gaps and folds are decided.
The rest of the time arithmetic (:mod:`duly.core.rules.timemath`) builds on these.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class UnknownTimezone(ValueError):
    """Not an IANA timezone name that this system knows."""


class BadDate(ValueError):
    """A value that should be a date or date-time is not one."""


# --------------------------------------------------------------------------- zones


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        # ValueError/OSError cover malformed keys such as "../etc/passwd" or "Europe/".
        raise UnknownTimezone(
            f"{name!r} is not a known timezone (expected an IANA name such as Europe/London)"
        ) from exc


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; ``default`` when ``name`` is None or empty.

    Raises :class:`UnknownTimezone` for a name that is not a zone.
    """
    if not name:
        name = default
    if not isinstance(name, str):
        raise UnknownTimezone(f"{name!r} is not a known timezone (expected an IANA name)")
    return _zone(name)


def resolve_local(naive: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time in ``tz`` (spec: Time).

    - A wall time in a spring-forward gap moves forward by the length of the gap
      (Europe/London 01:30 on a 1 h gap → 02:30 BST; Lord Howe's 30-minute gap works alike).
    - An ambiguous wall time in a fall-back fold takes the earlier instant.

    Both rules are exactly PEP 495's ``fold=0``: in a fold, fold=0 picks the first (earlier)
    occurrence; in a gap, fold=0 uses the offset in force *before* the transition, which maps
    the missing wall time to the instant ``gap`` later on the wall clock. So one conversion
    does it, and it is done in C by ``zoneinfo``.

    An aware ``naive`` is already an instant: it is just converted to UTC.
    """
    if naive.tzinfo is not None:
        return naive.astimezone(UTC)
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def local_naive(instant: datetime, tz: ZoneInfo) -> datetime:
    """The wall-clock time of an instant in ``tz``, without tzinfo."""
    if instant.tzinfo is None:
        raise ValueError(f"expected an aware datetime (an instant), got naive {instant!r}")
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def utc_instant(instant: datetime) -> datetime:
    if instant.tzinfo is UTC:
        return instant
    if instant.tzinfo is None:
        raise ValueError(f"expected an aware datetime (an instant), got naive {instant!r}")
    return instant.astimezone(UTC)


# --------------------------------------------------------------------------- parsing

BAD_DATE_HINT = "expected ISO 8601, e.g. 2026-03-15, 2026-03-15T09:00 or 2026-03-15T09:00:00Z"


def _bad_date(value: Any) -> BadDate:
    return BadDate(f"{value!r} is not a date ({BAD_DATE_HINT})")


def parse_instant(value: Any, tz: ZoneInfo) -> datetime:
    """A date attribute's value as a UTC instant (spec: Time).

    - ``str`` with an offset or ``Z`` → that instant;
    - date-only ``str`` (``2026-03-15``) → 00:00 local in ``tz``;
    - date-time ``str`` without offset → local in ``tz`` (gap/fold rules of resolve_local);
    - ``datetime`` (aware → as is; naive → local) and ``date`` (00:00 local).

    Anything else (numbers, booleans, junk strings, impossible dates) → :class:`BadDate`.
    """
    try:
        if isinstance(value, str):
            try:
                # Fast path: Python 3.11's fromisoformat (C) reads "2026-03-15T09:00:00Z",
                # offsets, date-only and naive date-times.
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = _parse_lenient(value)
            if parsed.tzinfo is UTC:
                return parsed
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=tz).astimezone(UTC)
            return parsed.astimezone(UTC)
        if isinstance(value, datetime):  # before date: datetime is a subclass of date
            if value.tzinfo is None:
                return resolve_local(value, tz)
            return value.astimezone(UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=tz).astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01 in a zone east of UTC
        raise BadDate(f"{value!r} is out of the supported range of dates") from exc
    raise _bad_date(value)


def _parse_lenient(value: str) -> datetime:
    """Second chance for strings fromisoformat refuses: surrounding spaces, lowercase z."""
    s = value.strip()
    if s[-1:] == "z":
        s = s[:-1] + "Z"
    if s != value:
        try:
            return datetime.fromisoformat(s)
        except ValueError:
            pass
    raise _bad_date(value)
