"""Cron expressions read as Vixie/Debian cron reads them (crontab(5)), matched on wall clocks.

This module knows fields, not zones: :func:`parse` turns the text of a ``cron:`` value into a
:class:`Cron`, and :meth:`Cron.next_wall` / :meth:`Cron.prev_wall` find matching wall-clock
minutes (naive datetimes). Turning wall-clock times into instants, with the rules for
daylight-saving gaps and folds, is ``timemath``'s job (``cron_next`` / ``cron_prev``).

What is accepted, field by field (minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or
``jan``-``dec``, day-of-week 0-7 or ``sun``-``sat``, where 0 and 7 are both Sunday):

- a number or a three-letter name (any case), ``*`` (the whole field), a range ``a-b``
  (``a`` through ``b``; ``5-5`` is just 5; a range that wraps, like ``5-1``, is an error),
  and a step ``/n`` after ``*``, a range or a single value (``10/15`` is ``10-59/15``);
- lists of those, separated by commas;
- the day rule of Vixie cron: when both day fields are restricted a day matches either of
  them; when either field starts with ``*`` (``*`` or ``*/2``) a day must match both;
- the macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``) and ``@hourly``.

Errors (:class:`CronError`, a ``ValueError``): any other number of fields, the extensions
some crons have (``L``, ``W``, ``#``, ``?``, seconds, years, ``@reboot``), values out of a
field's range, a step of 0 or wider than its field, and an expression that can never fire
(``0 0 30 2 *``: no February has a 30th).

Because every date falls on every weekday within the Gregorian calendar's 400-year cycle,
an expression that passes :func:`parse` fires at least once in any 400 years (in practice
within 40: February 29th on a Sunday is the rarest), so the searches here are bounded by
:data:`SEARCH_YEARS` and cannot run away.
"""

from __future__ import annotations

import calendar as _calendar
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

__all__ = ["MACROS", "SEARCH_YEARS", "Cron", "CronError", "parse"]

# The Gregorian calendar repeats itself (weekdays included) every 400 years.
SEARCH_YEARS = 400
# Longer than any sensible expression (all 60 minutes listed one by one is 170 characters).
MAX_LENGTH = 1000

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
# The longest each month can be (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NUMBER_RE = re.compile(r"[0-9]{1,9}")
_EXTENSION_RE = re.compile(r"^(?:[0-9]*[lw]|lw|l-[0-9]+)$|[#?]", re.IGNORECASE)
_ONE_MINUTE = timedelta(minutes=1)
_ONE_DAY = timedelta(days=1)


class CronError(ValueError):
    """Not a cron expression duly accepts; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0  # the number of the first name (jan is 1, sun is 0)


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 7, _DAYS, 0),
)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: the values each field allows, and how the day fields combine.

    ``weekdays`` counts from Sunday = 0 (7 is folded into 0). ``days_and`` is true when a day
    must match both day fields (either field starts with ``*``), false when either will do.
    """

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_and: bool

    def day_matches(self, d: date) -> bool:
        """Whether the date ``d`` is one the day and month fields allow."""
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.weekday() + 1) % 7 in self.weekdays  # date.weekday() has Monday = 0
        return (dom and dow) if self.days_and else (dom or dow)

    def next_wall(self, wall: datetime, limit: datetime | None = None) -> datetime | None:
        """The first matching wall-clock minute at or after ``wall`` (a naive datetime; a
        time with seconds counts from the next minute), or None when there is none within
        :data:`SEARCH_YEARS` years, by ``limit`` (when given) or before the end of 9999."""
        if wall.second or wall.microsecond:
            try:
                wall = wall.replace(second=0, microsecond=0) + _ONE_MINUTE
            except OverflowError:
                return None
        d = wall.date()
        hour, minute = wall.hour, wall.minute
        last = _year_bound(d.year + SEARCH_YEARS)
        if limit is not None:
            last = min(last, limit.date())
        while d <= last:
            if d.month not in self.months:
                d = self._next_month_start(d)
                if d is None:
                    return None
                hour = minute = 0
                continue
            if self.day_matches(d):
                found = _first_at_or_after(self.hours, self.minutes, hour, minute)
                if found is not None:
                    out = datetime(d.year, d.month, d.day, *found)
                    return out if limit is None or out <= limit else None
            if d == date.max:
                return None
            d += _ONE_DAY
            hour = minute = 0
        return None

    def prev_wall(self, wall: datetime, limit: datetime | None = None) -> datetime | None:
        """The last matching wall-clock minute at or before ``wall`` (a naive datetime;
        seconds are dropped), or None when there is none within :data:`SEARCH_YEARS` years,
        since ``limit`` (when given) or after the start of year 1."""
        d = wall.date()
        hour, minute = wall.hour, wall.minute
        first = _year_bound(d.year - SEARCH_YEARS)
        if limit is not None:
            first = max(first, limit.date())
        while d >= first:
            if d.month not in self.months:
                d = self._prev_month_end(d)
                if d is None:
                    return None
                hour, minute = 23, 59
                continue
            if self.day_matches(d):
                found = _last_at_or_before(self.hours, self.minutes, hour, minute)
                if found is not None:
                    out = datetime(d.year, d.month, d.day, *found)
                    return out if limit is None or out >= limit else None
            if d == date.min:
                return None
            d -= _ONE_DAY
            hour, minute = 23, 59
        return None

    def _next_month_start(self, d: date) -> date | None:
        """The 1st of the next allowed month after ``d``'s month (None past year 9999)."""
        year, month = d.year, d.month
        for _ in range(12):
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            if month in self.months:
                break
        return date(year, month, 1) if year <= date.max.year else None

    def _prev_month_end(self, d: date) -> date | None:
        """The last day of the allowed month before ``d``'s month (None before year 1)."""
        year, month = d.year, d.month
        for _ in range(12):
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
            if month in self.months:
                break
        if year < date.min.year:
            return None
        return date(year, month, _calendar.monthrange(year, month)[1])


def _year_bound(year: int) -> date:
    """The search limit for a year, clamped to the dates Python can hold."""
    if year > date.max.year:
        return date.max
    if year < date.min.year:
        return date.min
    return date(year, 12, 31)


def _first_at_or_after(
    hours: tuple[int, ...], minutes: tuple[int, ...], hour: int, minute: int
) -> tuple[int, int] | None:
    """The first (hour, minute) of the fields at or after hour:minute within one day."""
    i = bisect_left(hours, hour)
    if i < len(hours) and hours[i] == hour:
        j = bisect_left(minutes, minute)
        if j < len(minutes):
            return hour, minutes[j]
        i += 1
    if i < len(hours):
        return hours[i], minutes[0]
    return None


def _last_at_or_before(
    hours: tuple[int, ...], minutes: tuple[int, ...], hour: int, minute: int
) -> tuple[int, int] | None:
    """The last (hour, minute) of the fields at or before hour:minute within one day."""
    i = bisect_right(hours, hour) - 1
    if i >= 0 and hours[i] == hour:
        j = bisect_right(minutes, minute) - 1
        if j >= 0:
            return hour, minutes[j]
        i -= 1
    if i >= 0:
        return hours[i], minutes[-1]
    return None


# --------------------------------------------------------------------------- parsing


def parse(text: str) -> Cron:
    """The :class:`Cron` of an expression; :class:`CronError` says what is wrong with it."""
    if not isinstance(text, str):
        raise CronError(f"expected a cron expression as text, got {type(text).__name__}")
    return _parse(text)


@lru_cache(maxsize=1024)
def _parse(text: str) -> Cron:
    if len(text) > MAX_LENGTH:
        raise CronError(f"a cron expression is at most {MAX_LENGTH} characters")
    try:
        return _parse_checked(text)
    except CronError as exc:
        raise CronError(f"cron {text!r}: {exc}") from None


def _parse_checked(text: str) -> Cron:
    parts = text.split()
    if len(parts) == 1 and parts[0].startswith("@"):
        macro = parts[0].lower()
        if macro not in MACROS:
            raise CronError(
                f"{parts[0]!r} is not a cron macro duly knows; use one of "
                + ", ".join(MACROS)
                + (" (@reboot has no meaning for a schedule)" if macro == "@reboot" else "")
            )
        parts = MACROS[macro].split()
    if len(parts) != 5:
        n = len(parts)
        extra = " (seconds and years are not supported)" if n in (6, 7) else ""
        raise CronError(
            "expected 5 fields (minute hour day-of-month month day-of-week), such as "
            f'"0 8 * * mon-fri", got {n} field{"s" if n != 1 else ""}{extra}'
        )
    values = [_parse_field(part, field) for part, field in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    cron = Cron(
        text=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(w % 7 for w in weekdays),
        days_and=parts[2].startswith("*") or parts[4].startswith("*"),
    )
    _check_fires(cron)
    return cron


def _parse_field(text: str, field: _Field) -> set[int]:
    out: set[int] = set()
    for term in text.split(","):
        if not term:
            raise CronError(f"{field.name} {text!r}: an item of the list is empty")
        base, slash, step_text = term.partition("/")
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            a, _, b = base.partition("-")
            low, high = _value(a, term, field), _value(b, term, field)
            if low > high:
                raise CronError(
                    f"{field.name} {term!r}: the range {base} wraps around "
                    f"({a} is after {b}); cron ranges only go upwards, so write "
                    f"{_unwrapped(low, high, field)}"
                )
        else:
            low = _value(base, term, field)
            high = field.high if slash else low  # "10/15" runs to the end: "10-59/15"
        step = 1
        if slash:
            span = field.high - field.low + 1
            if not _NUMBER_RE.fullmatch(step_text):
                raise CronError(
                    f"{field.name} {term!r}: expected a number of steps after /, got {step_text!r}"
                )
            step = int(step_text)
            if not 1 <= step <= span:
                raise CronError(f"{field.name} {term!r}: a step must be 1 to {span}, got {step}")
        out.update(range(low, high + 1, step))
    return out


def _value(text: str, term: str, field: _Field) -> int:
    """One number or name of a field, in its range."""
    if _NUMBER_RE.fullmatch(text):
        n = int(text)
        if not field.low <= n <= field.high:
            raise CronError(
                f"{field.name} {term!r}: {n} is out of range ({field.low}-{field.high})"
            )
        return n
    key = text.lower()
    if field.names and key in field.names:
        return field.names.index(key) + field.name_base
    if _EXTENSION_RE.search(term):
        raise CronError(
            f"{field.name} {term!r}: L, W, # and ? are extensions of other crons; "
            "duly reads cron fields as Vixie cron does (numbers, names, *, ranges, lists "
            "and /steps)"
        )
    if field.names:
        what = (
            "a month (1-12 or jan-dec)"
            if field.name == "month"
            else ("a day of the week (0-7 or sun-sat)")
        )
        raise CronError(f"{field.name} {term!r}: expected {what}, got {text!r}")
    raise CronError(
        f"{field.name} {term!r}: expected a number {field.low}-{field.high}, got {text!r}"
    )


def _unwrapped(low: int, high: int, field: _Field) -> str:
    """How to write a wrapping range a-b as cron reads it (for the error's hint)."""
    if field.name == "day-of-week":
        # 7 is Sunday too, so "fri-sun" is 5-7 and "fri-mon" is 5-7,1
        return f"{low}-7" if high == 0 else f"{low}-7,{'1' if high == 1 else f'1-{high}'}"
    head = f"{low}-{field.high}" if low < field.high else f"{low}"
    tail = f"{field.low}-{high}" if high > field.low else f"{high}"
    return f"{head},{tail}"


def _check_fires(cron: Cron) -> None:
    """Refuse an expression that matches no date at all (``0 0 30 2 *``).

    When the day fields are OR-ed, any allowed weekday comes round in every month, so it
    fires. Otherwise some allowed month must have an allowed day of the month; the weekday
    then comes round too, since every date falls on every weekday over the years.
    """
    if not cron.days_and:
        return
    for month in cron.months:
        if any(day <= _MONTH_DAYS[month - 1] for day in cron.days):
            return
    months = sorted(cron.months)
    days = sorted(cron.days)
    month_text = _join_words([_MONTH_NAMES[m - 1] for m in months])
    day_text = _join_words([str(d) for d in days], "or")
    raise CronError(
        f"never fires: {month_text} {'has' if len(months) == 1 else 'have'} no day {day_text}"
    )


def _join_words(words: list[str], last: str = "and") -> str:
    if len(words) <= 2:
        return f" {last} ".join(words)
    return ", ".join(words[:-1]) + f" {last} " + words[-1]
