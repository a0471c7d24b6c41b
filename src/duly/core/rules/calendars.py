"""Calendars for rules: weekdays, public holidays, closed dates and business days.

Normative source: docs/reference/rules.md, "Durations" (``bd``) and "calendars". A calendar is
compiled once (weekday set, holiday code, closed dates) and cached; holiday sets come from
the ``holidays`` package, also cached. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from duly.core.model import WEEKDAYS, Calendar
from duly.core.rules.localtime import BAD_DATE_HINT, BadDate

# How far next_window_opening looks before deciding a window never opens (and how many
# closed days in a row business-day arithmetic crosses before giving up).
WINDOW_SEARCH_DAYS = 400

_FULL_DAY_NAMES = {
    full: full[:3]
    for full in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}
ALL_DAYS = frozenset(range(7))
_MON_FRI = frozenset(range(5))
_ONE_DAY = timedelta(days=1)

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
def weekday_set(days: tuple[str, ...]) -> frozenset[int]:
    out = set()
    for name in days:
        key = str(name).strip().lower()
        key = _FULL_DAY_NAMES.get(key, key)  # "monday" as well as "mon"
        if key not in WEEKDAYS:
            raise ValueError(f"{name!r} is not a weekday (expected one of {', '.join(WEEKDAYS)})")
        out.add(WEEKDAYS.index(key))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class CompiledCalendar:
    weekdays: frozenset[int]
    holidays: str | None
    closed: frozenset[date]


def compile_calendar(cal: Calendar) -> CompiledCalendar:
    try:
        return _compile_calendar_cached(cal)
    except TypeError:  # built with lists instead of tuples: unhashable, so compile uncached
        return _compile_calendar_cached.__wrapped__(cal)


@lru_cache(maxsize=256)
def _compile_calendar_cached(cal: Calendar) -> CompiledCalendar:
    closed = set()
    for text in cal.closed:
        try:
            closed.add(date.fromisoformat(str(text).strip()))
        except ValueError as exc:
            raise BadDate(
                f"{text!r} in calendar {cal.name!r} is not a date ({BAD_DATE_HINT})"
            ) from exc
    return CompiledCalendar(
        weekdays=weekday_set(tuple(cal.days)), holidays=cal.holidays, closed=frozenset(closed)
    )


def closed_by_calendar(d: date, cc: CompiledCalendar) -> bool:
    if d in cc.closed:
        return True
    return cc.holidays is not None and d in holiday_dates(cc.holidays, d.year)


def is_open_day(d: date, days: Sequence[str] | None, calendar: Calendar | None) -> bool:
    """Whether ``d`` is an open day (spec: window).

    Open days are ``days`` (the window's), else the calendar's ``days``, else every day —
    minus the calendar's public holidays and closed dates.
    """
    cc = compile_calendar(calendar) if calendar is not None else None
    if days is not None:
        weekdays = weekday_set(tuple(days))
    elif cc is not None:
        weekdays = cc.weekdays
    else:
        weekdays = ALL_DAYS
    if d.weekday() not in weekdays:
        return False
    return cc is None or not closed_by_calendar(d, cc)


def _is_business_day(d: date, cc: CompiledCalendar | None) -> bool:
    """A business day of a calendar; without one, Monday to Friday."""
    if cc is None:
        return d.weekday() in _MON_FRI
    return d.weekday() in cc.weekdays and not closed_by_calendar(d, cc)


def add_business_days(d: date, n: int, cc: CompiledCalendar | None) -> date:
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
