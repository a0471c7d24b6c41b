"""Exact, pure time arithmetic for rules: instants, durations, windows and repeats.

Normative source: docs/reference/rules.md, "Durations", "Time (normative)" and "Steps".

Conventions:

- Every instant is an aware ``datetime`` in UTC (``datetime.UTC``). Functions here accept any
  aware datetime and always return UTC ones, because arithmetic on a datetime whose tzinfo is
  a ``ZoneInfo`` is wall-clock arithmetic in Python, which is exactly the bug we must avoid
  for ``h``/``m``/``s`` units.
- Local (wall-clock) arithmetic happens on naive datetimes and is turned back into an instant
  by :func:`resolve_local`, the single place where daylight-saving gaps and folds are decided.
- Nothing here does I/O; holiday sets come from the ``holidays`` package and are cached.

The parts: :mod:`duly.core.rules.localtime` (zones, wall clock to instant, reading dates),
:mod:`duly.core.rules.calendars` (holidays, business days), :mod:`duly.core.rules.windows`
(delivery windows); this module adds durations, repeats and cron schedules, and
re-exports the others' public names, so callers need only ``timemath``.

The planner calls these functions for every delivery, so hot paths avoid re-parsing and keep
per-call work small: zones, holiday sets, calendars and windows are compiled once and cached.
"""

from __future__ import annotations

import calendar as _calendar
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from duly.core.model import AtExpr, Calendar, Duration
from duly.core.rules import cron
from duly.core.rules.calendars import (
    WINDOW_SEARCH_DAYS,
    add_business_days,
    compile_calendar,
    holiday_dates,
    is_open_day,
    weekday_set,
)
from duly.core.rules.localtime import (
    BadDate,
    UnknownTimezone,
    local_naive,
    parse_instant,
    resolve_local,
    utc_instant,
    zone,
)
from duly.core.rules.windows import in_window, next_window_opening

__all__ = [
    "WINDOW_SEARCH_DAYS",
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
    "offset_from",
    "parse_instant",
    "repeat_times",
    "resolve_local",
    "zone",
]

# Loop guards for repeat_times: a days filter that never matches (e.g. every 7d on [tue]
# from a Monday) gives up after this many candidates in a row without a kept one, and no
# repeat ever looks at more than MAX_REPEAT_CANDIDATES candidates in all.
MAX_REPEAT_MISSES = 1000
MAX_REPEAT_CANDIDATES = 100_000


# The old private name, still read by a test (tests/web/test_web_rules.py).
_utc = utc_instant


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
    instant = utc_instant(instant)
    if months or days or business_days:
        wall = local_naive(instant, tz)
        d = wall.date()
        if months:
            d = _add_months(d, months)
        if days:
            d += timedelta(days=days)
        if business_days:
            cc = compile_calendar(calendar) if calendar is not None else None
            d = add_business_days(d, business_days, cc)
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
    return offset_from(anchor, expr, attributes, tz, calendar)


def offset_from(
    anchor: datetime,
    expr: AtExpr,
    attributes: Mapping[str, Any],
    tz: ZoneInfo,
    calendar: Calendar | None = None,
) -> datetime:
    """:func:`eval_at` from its anchor already read (``anchor_of``): each offset in order,
    with the same :class:`BadDate` past the supported range of dates."""
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
    d = local_naive(instant, tz).date()
    return resolve_local(datetime.combine(d, t.replace(tzinfo=None)), tz)


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
    first = utc_instant(first)
    weekdays = weekday_set(tuple(days)) if days is not None else None
    if weekdays is not None and not weekdays:
        return []
    if count is not None and count <= 0:
        return []
    stop = utc_instant(until) if until is not None else None
    if stop is None and count is None:
        stop = utc_instant(horizon)

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
    """The first occurrence of a cron expression (see :mod:`duly.core.rules.cron`) in ``tz``
    strictly after ``after`` (or at it, with ``inclusive``).

    The occurrences of an expression are the instants of the wall-clock times in ``tz`` that
    match it, each resolved by :func:`resolve_local` like every local time: a time in a
    spring-forward gap moves forward by the length of the gap (02:30 → 03:30), a time in the
    fall-back fold is taken once, at its earlier instant. Several wall times that resolve to
    one instant (02:00 in a one-hour gap and 03:00) are one occurrence, and occurrences come
    in the order of their instants, not of their wall times: on Lord Howe Island, where
    2021-10-03 02:00 became 02:30, ``*/20 * * * *`` fires at 01:40, 02:30 (moved from 02:00),
    02:40, 02:50 (moved from 02:20) and 03:00.

    Raises :class:`duly.core.rules.cron.CronError` (a ValueError) for an expression that is not
    valid, and ValueError only when no occurrence falls before the end of year 9999: an
    expression that parses fires at least once in any 400 years, so the search is bounded.
    """
    spec = cron.parse(expr)
    after = utc_instant(after)
    best: datetime | None = None
    try:
        # A wall time a little before ``after``'s may lie in a gap that moves it past
        # ``after``: start from the wall time the clock showed before the last jump forward.
        gap, _ = _clock_jumps(after, tz)
        wall = spec.next_wall(local_naive(after, tz) - gap)
        best_wall: datetime | None = None
        for _ in range(MAX_CRON_CANDIDATES):
            if wall is None:
                break
            t = resolve_local(wall, tz)
            if (t > after or (inclusive and t == after)) and (best is None or t < best):
                # Later wall times resolve later, except those after a gap, whose instants
                # can precede the moved ones: they all show a wall time up to best's own.
                best, best_wall = t, local_naive(t, tz)
            wall = spec.next_wall(wall + _ONE_MINUTE, best_wall)
    except OverflowError:  # the search ran into year 9999
        pass
    if best is None:
        raise ValueError(f"cron {expr!r} has no occurrence after {after.isoformat()}")
    return best


def cron_prev(expr: str, tz: ZoneInfo, at: datetime) -> datetime | None:
    """The latest occurrence at or before ``at`` (occurrences as :func:`cron_next` defines
    them), or None when there is none in the 400 years before it.

    Raises :class:`duly.core.rules.cron.CronError` (a ValueError) for an expression that is not
    valid.
    """
    spec = cron.parse(expr)
    at = utc_instant(at)
    best: datetime | None = None
    try:
        # After a fold, wall times a little after ``at``'s were first shown before ``at``.
        _, fold = _clock_jumps(at, tz)
        wall = spec.prev_wall(local_naive(at, tz) + fold)
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
                floor = local_naive(best, tz) - gap
            wall = spec.prev_wall(wall - _ONE_MINUTE, floor)
    except OverflowError:  # the search ran into year 1
        pass
    return best
