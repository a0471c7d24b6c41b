"""Delivery windows for rules: is an instant inside a window, and when does it next open.

Normative source: docs/reference/rules.md, "window". A window (hours, days, calendar) is compiled
once and cached; overnight windows (22:00-06:00) belong to the day they open on, and an
opening that a DST gap pushes past the window's end does not count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from duly.core.model import Calendar, Window
from duly.core.rules.calendars import (
    ALL_DAYS,
    WINDOW_SEARCH_DAYS,
    CompiledCalendar,
    closed_by_calendar,
    compile_calendar,
    weekday_set,
)
from duly.core.rules.localtime import local_naive, resolve_local, utc_instant

_MIDNIGHT = time(0)
_ONE_DAY = timedelta(days=1)

# --------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class _CompiledWindow:
    weekdays: frozenset[int]
    calendar: CompiledCalendar | None
    all_day: bool
    start: time
    end: time
    overnight: bool  # end <= start: the window opened on day D closes on day D+1

    def open_day(self, d: date) -> bool:
        if d.weekday() not in self.weekdays:
            return False
        return self.calendar is None or not closed_by_calendar(d, self.calendar)


@lru_cache(maxsize=1024)
def _compile_window(window: Window, cal: Calendar | None) -> _CompiledWindow:
    cc = compile_calendar(cal) if cal is not None else None
    if window.days is not None:
        weekdays = weekday_set(tuple(window.days))
    elif cc is not None:
        weekdays = cc.weekdays
    else:
        weekdays = ALL_DAYS
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
    return _in_compiled(local_naive(instant, tz), _window_for(window, calendars))


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
    instant = utc_instant(instant)
    cw = _window_for(window, calendars)
    wall = local_naive(instant, tz)
    if _in_compiled(wall, cw):
        return instant
    d = wall.date()
    for _ in range(WINDOW_SEARCH_DAYS + 1):
        if cw.open_day(d):
            opening = resolve_local(datetime.combine(d, cw.start), tz)
            if opening > instant and _in_compiled(local_naive(opening, tz), cw):
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
