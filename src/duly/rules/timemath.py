"""Exact, pure time arithmetic for rules: instants, durations, windows and repeats.

Normative source: spec/rules.md, "Durations", "Time (normative)" and "Steps".

Conventions:

- Every instant is an aware ``datetime`` in UTC (``datetime.UTC``). Functions here accept any
  aware datetime and always return UTC ones, because arithmetic on a datetime whose tzinfo is
  a ``ZoneInfo`` is wall-clock arithmetic in Python, which is exactly the bug we must avoid
  for ``h``/``m``/``s`` units.
- Local (wall-clock) arithmetic happens on naive datetimes and is turned back into an instant
  by :func:`resolve_local`, the single place where daylight-saving gaps and folds are decided.
- Nothing here does I/O; holiday sets come from the ``holidays`` package and are cached.

The planner calls these functions for every delivery, so hot paths avoid re-parsing and keep
per-call work small: zones, holiday sets, calendars and windows are compiled once and cached.
"""

from __future__ import annotations

import calendar as _calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from duly.model import WEEKDAYS, AtExpr, Calendar, Duration, Window
from duly.rules import cron

__all__ = [
    "BadDate",
    "UnknownTimezone",
    "add_duration",
    "anchor_of",
    "at_time_of_day",
    "cron_next",
    "cron_prev",
    "eval_at",
    "holiday_dates",
    "in_window",
    "is_open_day",
    "next_window_opening",
    "parse_instant",
    "repeat_times",
    "resolve_local",
    "zone",
]

# How far next_window_opening looks before deciding a window never opens.
WINDOW_SEARCH_DAYS = 400
# Loop guards for repeat_times: a days filter that never matches (e.g. every 7d on [tue]
# from a Monday) gives up after this many candidates in a row without a kept one, and no
# repeat ever looks at more than MAX_REPEAT_CANDIDATES candidates in all.
MAX_REPEAT_MISSES = 1000
MAX_REPEAT_CANDIDATES = 100_000

_FULL_DAY_NAMES = {
    full: full[:3]
    for full in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}
_ALL_DAYS = frozenset(range(7))
_MON_FRI = frozenset(range(5))
_MIDNIGHT = time(0)
_ONE_DAY = timedelta(days=1)


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


def _local_naive(instant: datetime, tz: ZoneInfo) -> datetime:
    """The wall-clock time of an instant in ``tz``, without tzinfo."""
    if instant.tzinfo is None:
        raise ValueError(f"expected an aware datetime (an instant), got naive {instant!r}")
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is UTC:
        return instant
    if instant.tzinfo is None:
        raise ValueError(f"expected an aware datetime (an instant), got naive {instant!r}")
    return instant.astimezone(UTC)


# --------------------------------------------------------------------------- parsing

_BAD_DATE_HINT = "expected ISO 8601, e.g. 2026-03-15, 2026-03-15T09:00 or 2026-03-15T09:00:00Z"


def _bad_date(value: Any) -> BadDate:
    return BadDate(f"{value!r} is not a date ({_BAD_DATE_HINT})")


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


# --------------------------------------------------------------------------- calendars


@lru_cache(maxsize=4096)
def holiday_dates(code: str, year: int) -> frozenset[date]:
    """Public holidays of a country (``GB``) or subdivision (``GB-SCT``, ``US-CA``) in a year.

    ``holidays`` files an observed day under the year of the holiday it stands for (the US
    New Year's Day of 2022 was observed on 2021-12-31), so neighbouring years are consulted
    and only dates that fall in ``year`` are kept.
    """
    import holidays  # imported lazily: it is slow to import and most runs need few codes

    country, _, subdiv = code.strip().partition("-")
    years = (year - 1, year, year + 1)
    table = None
    # Subdivision codes are mostly upper case ("SCT", "CA"), but a few countries use other
    # spellings, so try the code as written before upper-casing it.
    for sub in dict.fromkeys((subdiv or None, subdiv.upper() or None)):
        try:
            table = holidays.country_holidays(country.upper(), subdiv=sub, years=years)
            break
        except (NotImplementedError, KeyError, ValueError):
            continue
    if table is None:
        raise ValueError(
            f"{code!r} is not a holiday calendar the holidays package knows "
            "(expected an ISO 3166 code such as GB, or a subdivision such as GB-SCT)"
        )
    return frozenset(d for d in table if d.year == year)


@lru_cache(maxsize=256)
def _weekday_set(days: tuple[str, ...]) -> frozenset[int]:
    out = set()
    for name in days:
        key = str(name).strip().lower()
        key = _FULL_DAY_NAMES.get(key, key)  # "monday" as well as "mon"
        if key not in WEEKDAYS:
            raise ValueError(f"{name!r} is not a weekday (expected one of {', '.join(WEEKDAYS)})")
        out.add(WEEKDAYS.index(key))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class _CompiledCalendar:
    weekdays: frozenset[int]
    holidays: str | None
    closed: frozenset[date]


def _compile_calendar(cal: Calendar) -> _CompiledCalendar:
    try:
        return _compile_calendar_cached(cal)
    except TypeError:  # built with lists instead of tuples: unhashable, so compile uncached
        return _compile_calendar_cached.__wrapped__(cal)


@lru_cache(maxsize=256)
def _compile_calendar_cached(cal: Calendar) -> _CompiledCalendar:
    closed = set()
    for text in cal.closed:
        try:
            closed.add(date.fromisoformat(str(text).strip()))
        except ValueError as exc:
            raise BadDate(
                f"{text!r} in calendar {cal.name!r} is not a date ({_BAD_DATE_HINT})"
            ) from exc
    return _CompiledCalendar(
        weekdays=_weekday_set(tuple(cal.days)), holidays=cal.holidays, closed=frozenset(closed)
    )


def _closed_by_calendar(d: date, cc: _CompiledCalendar) -> bool:
    if d in cc.closed:
        return True
    return cc.holidays is not None and d in holiday_dates(cc.holidays, d.year)


def is_open_day(d: date, days: Sequence[str] | None, calendar: Calendar | None) -> bool:
    """Whether ``d`` is an open day (spec: window).

    Open days are ``days`` (the window's), else the calendar's ``days``, else every day —
    minus the calendar's public holidays and closed dates.
    """
    cc = _compile_calendar(calendar) if calendar is not None else None
    if days is not None:
        weekdays = _weekday_set(tuple(days))
    elif cc is not None:
        weekdays = cc.weekdays
    else:
        weekdays = _ALL_DAYS
    if d.weekday() not in weekdays:
        return False
    return cc is None or not _closed_by_calendar(d, cc)


def _is_business_day(d: date, cc: _CompiledCalendar | None) -> bool:
    """A business day of a calendar; without one, Monday to Friday."""
    if cc is None:
        return d.weekday() in _MON_FRI
    return d.weekday() in cc.weekdays and not _closed_by_calendar(d, cc)


def _add_business_days(d: date, n: int, cc: _CompiledCalendar | None) -> date:
    """``d`` moved by ``n`` open days (n may be negative).

    Each step goes to the next (previous) open day, so from a closed day +1bd is the next
    open day, and from Friday +1bd is Monday.
    """
    if n == 0:
        return d
    if cc is not None and not cc.weekdays:
        raise ValueError("business days need a calendar with at least one open weekday")
    step = _ONE_DAY if n > 0 else -_ONE_DAY
    remaining = abs(n)
    misses = 0
    while remaining:
        d += step
        if _is_business_day(d, cc):
            remaining -= 1
            misses = 0
        else:
            misses += 1
            if misses > WINDOW_SEARCH_DAYS:  # e.g. a calendar closed by every date it lists
                raise ValueError(f"no business day within {WINDOW_SEARCH_DAYS} days of {d}")
    return d


# --------------------------------------------------------------------------- durations


def _add_months(d: date, months: int) -> date:
    """``d`` plus calendar months, clamping the day (Jan 31 + 1mo = Feb 28/29)."""
    y, m = divmod(d.month - 1 + months, 12)
    y += d.year
    m += 1
    if not 1 <= y <= 9999:
        raise OverflowError(f"{d} + {months} months is out of range")
    last = _calendar.monthrange(y, m)[1]
    return date(y, m, min(d.day, last))


def _shift(
    instant: datetime,
    months: int,
    days: int,
    business_days: int,
    seconds: int,
    tz: ZoneInfo,
    calendar: Calendar | None,
) -> datetime:
    """Apply signed components: calendar units on the local date, then elapsed seconds."""
    instant = _utc(instant)
    if months or days or business_days:
        wall = _local_naive(instant, tz)
        d = wall.date()
        if months:
            d = _add_months(d, months)
        if days:
            d += timedelta(days=days)
        if business_days:
            cc = _compile_calendar(calendar) if calendar is not None else None
            d = _add_business_days(d, business_days, cc)
        instant = resolve_local(datetime.combine(d, wall.time()), tz)
    if seconds:
        instant = instant + timedelta(seconds=seconds)
    return instant


def add_duration(
    instant: datetime,
    d: Duration,
    sign: int,
    tz: ZoneInfo,
    calendar: Calendar | None = None,
) -> datetime:
    """``instant ± d`` (spec: Durations).

    ``mo``/``y``, ``d``/``w`` and ``bd`` are calendar units applied, in that order, to the
    local date in ``tz`` keeping the wall-clock time (so ``due_at - 1d`` keeps 09:00 across a
    DST change), then the wall time is resolved (gap → forward, fold → earlier). ``h``/``m``/
    ``s`` are then added as exact elapsed time. Business days count the open days of
    ``calendar`` (its days minus holidays and closed dates), Monday–Friday without one.
    """
    s = -1 if sign < 0 else 1
    return _shift(
        instant,
        s * d.months,
        s * d.days,
        s * d.business_days,
        s * d.seconds,
        tz,
        calendar,
    )


def anchor_of(expr: AtExpr, attributes: Mapping[str, Any], tz: ZoneInfo) -> datetime | None:
    """The instant of the attribute an ``at`` expression is anchored on.

    None when the attribute is missing or null; :class:`BadDate` when it is not a date.
    """
    value = attributes.get(expr.attribute)
    if value is None:
        return None
    return parse_instant(value, tz)


def eval_at(
    expr: AtExpr,
    attributes: Mapping[str, Any],
    tz: ZoneInfo,
    calendar: Calendar | None = None,
) -> datetime | None:
    """The instant of ``ATTRIBUTE [+|- DURATION]...``: the anchor, then each offset in order.

    None when the attribute is missing or null (spec: reason ``no_date``). A value that is
    not a date raises :class:`BadDate`; so does a result beyond the years ``datetime`` can
    represent (e.g. ``9999-12-31`` + 1d), since that too is bad data, not an engine fault.
    """
    anchor = anchor_of(expr, attributes, tz)
    if anchor is None or not expr.offsets:
        return anchor
    result = anchor
    try:
        for sign, duration in expr.offsets:
            result = add_duration(result, duration, sign, tz, calendar)
    except OverflowError as exc:
        raise BadDate(
            f"{attributes.get(expr.attribute)!r} {expr.text or expr.attribute!r}: "
            "the result is out of the supported range of dates"
        ) from exc
    return result


def at_time_of_day(instant: datetime, t: time, tz: ZoneInfo) -> datetime:
    """Wall-clock ``t`` on the same local date as ``instant`` in ``tz`` (spec: step ``time``)."""
    d = _local_naive(instant, tz).date()
    return resolve_local(datetime.combine(d, t.replace(tzinfo=None)), tz)


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class _CompiledWindow:
    weekdays: frozenset[int]
    calendar: _CompiledCalendar | None
    all_day: bool
    start: time
    end: time
    overnight: bool  # end <= start: the window opened on day D closes on day D+1

    def open_day(self, d: date) -> bool:
        if d.weekday() not in self.weekdays:
            return False
        return self.calendar is None or not _closed_by_calendar(d, self.calendar)


@lru_cache(maxsize=1024)
def _compile_window(window: Window, cal: Calendar | None) -> _CompiledWindow:
    cc = _compile_calendar(cal) if cal is not None else None
    if window.days is not None:
        weekdays = _weekday_set(tuple(window.days))
    elif cc is not None:
        weekdays = cc.weekdays
    else:
        weekdays = _ALL_DAYS
    start = window.start
    # An end of None means "until midnight"; "HH:MM-HH:MM" with equal ends (e.g.
    # 00:00-00:00) is read as the whole day, not as a window that never opens.
    end = window.end if window.end is not None else _MIDNIGHT
    all_day = start is None or start == end
    start = (start or _MIDNIGHT).replace(tzinfo=None)
    end = end.replace(tzinfo=None)
    return _CompiledWindow(
        weekdays=weekdays,
        calendar=cc,
        all_day=all_day,
        start=start,
        end=end,
        overnight=not all_day and end < start,
    )


def _window_for(window: Window, calendars: Mapping[str, Calendar]) -> _CompiledWindow:
    cal = None
    if window.calendar is not None:
        cal = calendars.get(window.calendar)
        if cal is None:
            raise ValueError(f"window names calendar {window.calendar!r}, which is not defined")
    try:
        return _compile_window(window, cal)
    except TypeError:  # built with lists instead of tuples: unhashable, so compile uncached
        return _compile_window.__wrapped__(window, cal)


def _in_compiled(wall: datetime, cw: _CompiledWindow) -> bool:
    d = wall.date()
    if cw.all_day:
        return cw.open_day(d)
    t = wall.time()
    if not cw.overnight:
        return cw.start <= t < cw.end and cw.open_day(d)
    # Overnight (e.g. 22:00-06:00): the evening part belongs to today's window, the part
    # after midnight to yesterday's, so it is open only if yesterday was an open day.
    if t >= cw.start:
        return cw.open_day(d)
    if t < cw.end:
        return cw.open_day(d - _ONE_DAY)
    return False


def in_window(
    instant: datetime,
    window: Window,
    tz: ZoneInfo,
    calendars: Mapping[str, Calendar],
) -> bool:
    """Whether ``instant`` falls inside ``window`` in ``tz`` (end exclusive)."""
    return _in_compiled(_local_naive(instant, tz), _window_for(window, calendars))


def next_window_opening(
    instant: datetime,
    window: Window,
    tz: ZoneInfo,
    calendars: Mapping[str, Calendar],
) -> datetime:
    """``instant`` if it is inside ``window``, else the next time the window opens.

    Openings are the window's start (00:00 for an all-day window) on open days, resolved
    with the gap/fold rules; an opening that a DST gap pushes past the window's end does not
    count. Raises ValueError when the window does not open within ~400 days.
    """
    instant = _utc(instant)
    cw = _window_for(window, calendars)
    wall = _local_naive(instant, tz)
    if _in_compiled(wall, cw):
        return instant
    d = wall.date()
    for _ in range(WINDOW_SEARCH_DAYS + 1):
        if cw.open_day(d):
            opening = resolve_local(datetime.combine(d, cw.start), tz)
            if opening > instant and _in_compiled(_local_naive(opening, tz), cw):
                return opening
        d += _ONE_DAY
    raise ValueError(
        f"window {_describe(window)} does not open within {WINDOW_SEARCH_DAYS} days of "
        f"{instant.isoformat()}"
    )


def _describe(window: Window) -> str:
    hours = (
        "all day"
        if window.start is None
        else f"{window.start:%H:%M}-{window.end or _MIDNIGHT:%H:%M}"
    )
    parts = [hours]
    if window.days is not None:
        parts.append(f"days={list(window.days)}")
    if window.calendar:
        parts.append(f"calendar={window.calendar}")
    return "(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------- repeats


def repeat_times(
    first: datetime,
    every: Duration,
    tz: ZoneInfo,
    *,
    days: Sequence[str] | None,
    count: int | None,
    until: datetime | None,
    horizon: datetime,
    calendar: Calendar | None = None,
) -> list[tuple[int, datetime]]:
    """Occurrences of a repeating step (spec: Steps, ``repeat``).

    Candidates are ``first + k·every`` for k = 0, 1, …, each computed from ``first`` (not by
    chaining, so months do not drift: Jan 31, Feb 28, Mar 31). Only candidates whose local
    date in ``tz`` is one of ``days`` are kept. Stops after ``count`` kept occurrences, or at
    the first candidate after ``until`` (inclusive bound). ``horizon`` bounds only open-ended
    repeats (no ``count`` and no ``until``): with either, every occurrence is planned ahead.

    Returns ``(index, instant)`` with index the 0-based position among kept occurrences (the
    delivery's ``occurrence``). An empty ``days`` list keeps nothing. Guards: stops after
    MAX_REPEAT_MISSES candidates in a row that the days filter drops, and after
    MAX_REPEAT_CANDIDATES in all.
    """
    if every.months < 0 or every.days < 0 or every.business_days < 0 or every.seconds < 0:
        raise ValueError(f"repeat every {every} must be positive")
    if not (every.months or every.days or every.business_days or every.seconds):
        raise ValueError(f"repeat every {every or '0s'} must be longer than zero")
    first = _utc(first)
    weekdays = _weekday_set(tuple(days)) if days is not None else None
    if weekdays is not None and not weekdays:
        return []
    if count is not None and count <= 0:
        return []
    stop = _utc(until) if until is not None else None
    if stop is None and count is None:
        stop = _utc(horizon)

    exact = every.is_exact
    step = timedelta(seconds=every.seconds)
    out: list[tuple[int, datetime]] = []
    misses = 0
    for k in range(MAX_REPEAT_CANDIDATES):
        try:
            if exact:
                candidate = first + step * k
            else:
                candidate = _shift(
                    first,
                    every.months * k,
                    every.days * k,
                    every.business_days * k,
                    every.seconds * k,
                    tz,
                    calendar,
                )
        except OverflowError:  # past year 9999: nothing more to plan
            break
        if stop is not None and candidate > stop:
            break
        if weekdays is not None and candidate.astimezone(tz).weekday() not in weekdays:
            misses += 1
            if misses >= MAX_REPEAT_MISSES:
                break
            continue
        misses = 0
        out.append((len(out), candidate))
        if count is not None and len(out) >= count:
            break
    return out


# --------------------------------------------------------------------------- schedules


# Before an instant, the points at which the zone's offset is read to find a clock change
# shortly before it (the largest jump on record is a whole day: Samoa, December 2011).
_JUMP_PROBES = tuple(timedelta(hours=h) for h in (1, 2, 3, 6, 12, 25))
# No cron_next / cron_prev looks at more matching wall times than this (a search crosses at
# most one gap or fold: a few hundred minutes; a day's minutes in the very worst zone).
MAX_CRON_CANDIDATES = 10_000
_ONE_MINUTE = timedelta(minutes=1)


def _clock_jumps(instant: datetime, tz: ZoneInfo) -> tuple[timedelta, timedelta]:
    """How far the clocks of ``tz`` went forward (a gap) and back (a fold) in the day
    before ``instant``: (gap, fold), each zero when there was no such change."""
    offsets = []
    for probe in (timedelta(0), *_JUMP_PROBES):
        try:
            offset = (instant - probe).astimezone(tz).utcoffset()
        except OverflowError:  # near year 1
            continue
        if offset is not None:
            offsets.append(offset)
    if not offsets:
        return timedelta(0), timedelta(0)
    now = offsets[0]
    return max(timedelta(0), now - min(offsets)), max(timedelta(0), max(offsets) - now)


def cron_next(expr: str, tz: ZoneInfo, after: datetime, *, inclusive: bool = False) -> datetime:
    """The first occurrence of a cron expression (see :mod:`duly.rules.cron`) in ``tz``
    strictly after ``after`` (or at it, with ``inclusive``).

    The occurrences of an expression are the instants of the wall-clock times in ``tz`` that
    match it, each resolved by :func:`resolve_local` like every local time: a time in a
    spring-forward gap moves forward by the length of the gap (02:30 → 03:30), a time in the
    fall-back fold is taken once, at its earlier instant. Several wall times that resolve to
    one instant (02:00 in a one-hour gap and 03:00) are one occurrence, and occurrences come
    in the order of their instants, not of their wall times: on Lord Howe Island, where
    2021-10-03 02:00 became 02:30, ``*/20 * * * *`` fires at 01:40, 02:30 (moved from 02:00),
    02:40, 02:50 (moved from 02:20) and 03:00.

    Raises :class:`duly.rules.cron.CronError` (a ValueError) for an expression that is not
    valid, and ValueError only when no occurrence falls before the end of year 9999: an
    expression that parses fires at least once in any 400 years, so the search is bounded.
    """
    spec = cron.parse(expr)
    after = _utc(after)
    best: datetime | None = None
    try:
        # A wall time a little before ``after``'s may lie in a gap that moves it past
        # ``after``: start from the wall time the clock showed before the last jump forward.
        gap, _ = _clock_jumps(after, tz)
        wall = spec.next_wall(_local_naive(after, tz) - gap)
        best_wall: datetime | None = None
        for _ in range(MAX_CRON_CANDIDATES):
            if wall is None:
                break
            t = resolve_local(wall, tz)
            if (t > after or (inclusive and t == after)) and (best is None or t < best):
                # Later wall times resolve later, except those after a gap, whose instants
                # can precede the moved ones: they all show a wall time up to best's own.
                best, best_wall = t, _local_naive(t, tz)
            wall = spec.next_wall(wall + _ONE_MINUTE, best_wall)
    except OverflowError:  # the search ran into year 9999
        pass
    if best is None:
        raise ValueError(f"cron {expr!r} has no occurrence after {after.isoformat()}")
    return best


def cron_prev(expr: str, tz: ZoneInfo, at: datetime) -> datetime | None:
    """The latest occurrence at or before ``at`` (occurrences as :func:`cron_next` defines
    them), or None when there is none in the 400 years before it.

    Raises :class:`duly.rules.cron.CronError` (a ValueError) for an expression that is not
    valid.
    """
    spec = cron.parse(expr)
    at = _utc(at)
    best: datetime | None = None
    try:
        # After a fold, wall times a little after ``at``'s were first shown before ``at``.
        _, fold = _clock_jumps(at, tz)
        wall = spec.prev_wall(_local_naive(at, tz) + fold)
        floor: datetime | None = None
        for _ in range(MAX_CRON_CANDIDATES):
            if wall is None:
                break
            t = resolve_local(wall, tz)
            if t <= at and (best is None or t > best):
                # Earlier wall times resolve earlier, except those in a gap just before
                # best's wall time, which move forward: they show no earlier than the gap's
                # length before it.
                best = t
                gap, _ = _clock_jumps(best, tz)
                floor = _local_naive(best, tz) - gap
            wall = spec.prev_wall(wall - _ONE_MINUTE, floor)
    except OverflowError:  # the search ran into year 1
        pass
    return best
