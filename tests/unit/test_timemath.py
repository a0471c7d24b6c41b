"""Tests for duly.core.rules.timemath: exact time arithmetic
(docs/reference/rules.md, Durations and Time).

The property tests check results against oracles written independently of the module: a
brute-force search for the instants that show a given wall time (for gaps and folds), the
``holidays`` package queried directly (for business days), and a plain reading of the
window rules.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from duly.core.model import WEEKDAYS, AtExpr, Calendar, Duration, Window, parse_duration
from duly.core.rules import timemath
from duly.core.rules.timemath import (
    BadDate,
    UnknownTimezone,
    add_duration,
    anchor_of,
    at_time_of_day,
    eval_at,
    in_window,
    is_open_day,
    next_window_opening,
    parse_instant,
    repeat_times,
    resolve_local,
    zone,
)

ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # DST starts at midnight
    "Asia/Kolkata",  # no DST, +05:30
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/St_Johns",  # -03:30 / -02:30
    "Africa/Casablanca",  # DST suspended during Ramadan: two extra transitions a year
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Tehran",
    "Europe/Moscow",
    "Pacific/Auckland",
    "America/Havana",  # DST at midnight
    "Europe/Dublin",  # "negative DST" in tzdata
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "Asia/Kathmandu",
    "UTC",
    "America/Nuuk",
    "Antarctica/Troll",  # two-hour DST shift
    "Asia/Gaza",
    "America/Asuncion",
]
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
GB = Calendar(name="uk", holidays="GB")

FAST = settings(deadline=None, max_examples=150)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: ZoneInfo, *args: int) -> datetime:
    """An instant given by an unambiguous wall time (test helper; not for gaps or folds)."""
    return datetime(*args, tzinfo=tz).astimezone(UTC)


def wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


# --------------------------------------------------------------------------- oracles


def instants_showing(naive: datetime, tz: ZoneInfo) -> tuple[list[datetime], set[timedelta]]:
    """Brute force: every UTC instant whose wall time in tz is `naive`, and the offsets in
    force around it. Only UTC → local conversions are used (those are never ambiguous)."""
    base = naive.replace(tzinfo=UTC)
    # Offsets lie within -12h..+14h, so the instants that could show `naive` lie within
    # base-14h..base+12h; sample the offsets in force there every 15 minutes.
    offsets = {
        (base + timedelta(minutes=15 * k)).astimezone(tz).utcoffset() for k in range(-60, 52)
    }
    found = sorted(
        {base - off for off in offsets if wall(base - off, tz) == naive},
    )
    return found, offsets


def check_resolution(naive: datetime, tz: ZoneInfo) -> str:
    """Assert resolve_local obeys the spec for `naive`; return which case it was."""
    result = resolve_local(naive, tz)
    assert result.tzinfo is UTC
    found, offsets = instants_showing(naive, tz)
    if len(found) == 1:
        assert result == found[0]
        assert wall(result, tz) == naive
        return "normal"
    if len(found) > 1:  # fold: the earlier instant, i.e. the larger UTC offset
        assert result == found[0]
        assert wall(result, tz) == naive
        assert result.astimezone(tz).utcoffset() == max(f.astimezone(tz).utcoffset() for f in found)
        return "fold"
    # gap: moved forward by the gap's length (offset after - offset before)
    assert len(offsets) == 2, offsets
    gap = max(offsets) - min(offsets)
    assert wall(result, tz) == naive + gap
    assert result == naive.replace(tzinfo=UTC) - min(offsets)
    return "gap"


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """UTC instants (to the minute) where the UTC offset of zone `name` changes, 2000-2040."""
    tz = ZoneInfo(name)
    out = []
    t = utc(2000, 1, 1)
    prev = t.astimezone(tz).utcoffset()
    step = timedelta(hours=12)
    while t.year <= 2040:
        nxt = t + step
        off = nxt.astimezone(tz).utcoffset()
        if off != prev:
            lo, hi = t, nxt
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            prev = off
        t = nxt
    return tuple(out)


DST_ZONES = [z for z in ZONES if z not in ("Asia/Kolkata", "Asia/Tokyo", "UTC", "Asia/Kathmandu")]


@st.composite
def near_transition(draw: st.DrawFn) -> tuple[datetime, ZoneInfo]:
    """A wall time within 3h of a DST transition: lands in gaps and folds often."""
    name = draw(st.sampled_from(DST_ZONES))
    tz = ZoneInfo(name)
    trans = transitions(name)
    assume(trans)
    t = draw(st.sampled_from(trans))
    before = wall(t - timedelta(minutes=1), tz) + timedelta(minutes=1)
    after = wall(t, tz)
    anchor = draw(st.sampled_from([before, after]))
    minutes = draw(st.integers(min_value=-180, max_value=180))
    return anchor + timedelta(minutes=minutes), tz


naive_2000_2040 = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31))
zones = st.sampled_from(ZONES).map(ZoneInfo)


# --------------------------------------------------------------------------- zone


def test_zone_is_cached_and_defaults() -> None:
    assert zone("Europe/London") is zone("Europe/London")
    assert zone(None) == ZoneInfo("UTC")
    assert zone("") == ZoneInfo("UTC")
    assert zone(None, default="Europe/Berlin") == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe/", "../etc/passwd", "not a zone"])
def test_zone_unknown(name: str) -> None:
    with pytest.raises(UnknownTimezone, match="not a known timezone"):
        zone(name)
    assert issubclass(UnknownTimezone, ValueError)


# --------------------------------------------------------------------------- resolve_local


def test_zone_sample_is_wide() -> None:
    assert len(ZONES) >= 20
    for name in ZONES:
        ZoneInfo(name)


@pytest.mark.parametrize(
    ("name", "naive", "expected"),
    [
        # gap 01:00→02:00: 01:30 moves forward an hour to 02:30 BST = 01:30Z
        ("Europe/London", datetime(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 30)),
        # fold 02:00→01:00: 01:30 happens twice; the earlier is 01:30 BST = 00:30Z
        ("Europe/London", datetime(2026, 10, 25, 1, 30), utc(2026, 10, 25, 0, 30)),
        ("Europe/London", datetime(2026, 7, 1, 12, 0), utc(2026, 7, 1, 11, 0)),
        # 30-minute gap 02:00→02:30: 02:15 → 02:45 +11:00
        ("Australia/Lord_Howe", datetime(2026, 10, 4, 2, 15), utc(2026, 10, 3, 15, 45)),
        # 30-minute fold: 01:45 +11:00 is the earlier one
        ("Australia/Lord_Howe", datetime(2026, 4, 5, 1, 45), utc(2026, 4, 4, 14, 45)),
        # gap at midnight 00:00→01:00
        ("America/Santiago", datetime(2026, 9, 6, 0, 30), utc(2026, 9, 6, 4, 30)),
        # gap 02:45→03:45 in +12:45
        ("Pacific/Chatham", datetime(2026, 9, 27, 3, 0), utc(2026, 9, 26, 14, 15)),
        ("America/St_Johns", datetime(2026, 3, 8, 2, 30), utc(2026, 3, 8, 6, 0)),
        ("America/St_Johns", datetime(2026, 11, 1, 1, 30), utc(2026, 11, 1, 4, 0)),  # fold
        # two-hour gap 01:00→03:00
        ("Antarctica/Troll", datetime(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 30)),
        ("America/New_York", datetime(2026, 3, 8, 2, 30), utc(2026, 3, 8, 7, 30)),
        ("America/New_York", datetime(2026, 11, 1, 1, 30), utc(2026, 11, 1, 5, 30)),
        ("Asia/Kolkata", datetime(2026, 3, 29, 1, 30), utc(2026, 3, 28, 20, 0)),
        # the day Samoa skipped: the whole of 2011-12-30 is a 24h gap
        ("Pacific/Apia", datetime(2011, 12, 30, 9, 0), utc(2011, 12, 30, 19, 0)),
    ],
)
def test_resolve_local_known(name: str, naive: datetime, expected: datetime) -> None:
    result = resolve_local(naive, ZoneInfo(name))
    assert result == expected
    assert result.tzinfo is UTC


def test_resolve_local_ignores_fold_attribute_and_accepts_aware() -> None:
    naive = datetime(2026, 10, 25, 1, 30, fold=1)
    assert resolve_local(naive, LONDON) == utc(2026, 10, 25, 0, 30)
    aware = datetime(2026, 1, 1, 9, tzinfo=NEW_YORK)
    assert resolve_local(aware, LONDON) == utc(2026, 1, 1, 14)


@FAST
@given(naive=naive_2000_2040, tz=zones, fold=st.integers(0, 1))
def test_resolve_local_round_trip_anywhere(naive: datetime, tz: ZoneInfo, fold: int) -> None:
    check_resolution(naive.replace(fold=fold), tz)


@settings(deadline=None, max_examples=400)
@given(case=near_transition())
def test_resolve_local_near_transitions(case: tuple[datetime, ZoneInfo]) -> None:
    naive, tz = case
    check_resolution(naive, tz)


def test_resolve_local_sees_every_kind_of_case() -> None:
    # Guard against an oracle that never exercises gaps or folds: walk every transition of
    # a few zones and check the minute inside it.
    kinds: dict[str, int] = {"normal": 0, "gap": 0, "fold": 0}
    for name in ("Europe/London", "Australia/Lord_Howe", "America/Santiago", "Antarctica/Troll"):
        tz = ZoneInfo(name)
        for t in transitions(name)[:20]:
            before = wall(t - timedelta(minutes=1), tz) + timedelta(minutes=1)
            after = wall(t, tz)
            # inside the gap or fold: halfway between the two wall readings
            middle = min(before, after) + abs(after - before) / 2
            kinds[check_resolution(middle, tz)] += 1
            kinds[check_resolution(after + timedelta(hours=3), tz)] += 1
    assert kinds["gap"] >= 30 and kinds["fold"] >= 30 and kinds["normal"] >= 60


# --------------------------------------------------------------------------- parse_instant


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2026-03-15T09:00:00Z", LONDON, utc(2026, 3, 15, 9)),
        ("2026-03-15T09:00:00+02:00", LONDON, utc(2026, 3, 15, 7)),
        ("2026-03-15T09:00:00.250-05:30", LONDON, datetime(2026, 3, 15, 14, 30, 0, 250000, UTC)),
        ("2026-03-15 09:00", NEW_YORK, utc(2026, 3, 15, 13)),
        ("2026-03-15T09:00:00", LONDON, utc(2026, 3, 15, 9)),
        ("2026-07-15T09:00:00", LONDON, utc(2026, 7, 15, 8)),
        ("2026-03-29T01:30:00", LONDON, utc(2026, 3, 29, 1, 30)),  # gap
        ("2026-10-25T01:30:00", LONDON, utc(2026, 10, 25, 0, 30)),  # fold
        ("2026-03-15", LONDON, utc(2026, 3, 15, 0)),
        ("2026-07-15", LONDON, utc(2026, 7, 14, 23)),
        ("2026-07-15", NEW_YORK, utc(2026, 7, 15, 4)),
        # midnight does not exist that day in Santiago: 01:00 -03:00
        ("2026-09-06", ZoneInfo("America/Santiago"), utc(2026, 9, 6, 4)),
        (" 2026-03-15T09:00:00z ", LONDON, utc(2026, 3, 15, 9)),
        (datetime(2026, 3, 15, 9, tzinfo=NEW_YORK), LONDON, utc(2026, 3, 15, 13)),
        (datetime(2026, 3, 15, 9), NEW_YORK, utc(2026, 3, 15, 13)),
        (datetime(2026, 3, 29, 1, 30), LONDON, utc(2026, 3, 29, 1, 30)),
        (date(2026, 7, 15), LONDON, utc(2026, 7, 14, 23)),
        (date(2026, 9, 6), ZoneInfo("America/Santiago"), utc(2026, 9, 6, 4)),
    ],
)
def test_parse_instant_forms(value: object, tz: ZoneInfo, expected: datetime) -> None:
    result = parse_instant(value, tz)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    ["soon", 12, 12.5, True, "2026-13-01", "2026-02-30", "", "2026-03-15T25:00", [], {}, b"x"],
)
def test_parse_instant_rejects_junk(value: object) -> None:
    with pytest.raises(BadDate, match="is not a date") as err:
        parse_instant(value, LONDON)
    assert repr(value) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_parse_instant_out_of_range_is_bad_date() -> None:
    with pytest.raises(BadDate):
        parse_instant("0001-01-01", ZoneInfo("Asia/Tokyo"))
    with pytest.raises(BadDate):
        parse_instant("9999-12-31T23:00:00-05:00", LONDON)


@FAST
@given(
    naive=naive_2000_2040,
    tz=zones,
    offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_parse_instant_strings_round_trip(
    naive: datetime, tz: ZoneInfo, offset_minutes: int
) -> None:
    aware = naive.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_instant(aware.isoformat(), tz) == aware
    assert parse_instant(aware.astimezone(UTC).isoformat().replace("+00:00", "Z"), tz) == aware
    assert parse_instant(naive.isoformat(), tz) == resolve_local(naive, tz)
    day = naive.date()
    assert parse_instant(day.isoformat(), tz) == resolve_local(
        datetime(day.year, day.month, day.day), tz
    )


# --------------------------------------------------------------------------- add_duration


def d(text: str) -> Duration:
    return parse_duration(text)


def test_minus_one_day_keeps_wall_time_across_dst() -> None:
    due = local(LONDON, 2026, 3, 30, 9)  # Monday 09:00 BST = 08:00Z
    assert due == utc(2026, 3, 30, 8)
    assert add_duration(due, d("1d"), -1, LONDON) == utc(2026, 3, 29, 8)  # 09:00 BST
    assert add_duration(due, d("2d"), -1, LONDON) == utc(2026, 3, 28, 9)  # 09:00 GMT
    assert add_duration(due, d("1w"), -1, LONDON) == utc(2026, 3, 23, 9)
    # h units are elapsed time: 48h before is 08:00 GMT, not 09:00
    assert add_duration(due, d("48h"), -1, LONDON) == utc(2026, 3, 28, 8)
    ny_due = local(NEW_YORK, 2026, 11, 2, 9)
    assert wall(add_duration(ny_due, d("3d"), -1, NEW_YORK), NEW_YORK) == datetime(2026, 10, 30, 9)


def test_day_landing_in_gap_then_seconds() -> None:
    start = local(LONDON, 2026, 3, 28, 1, 30)
    # +1d → 2026-03-29 01:30, which does not exist: 02:30 BST (= 01:30Z)
    assert add_duration(start, d("1d"), 1, LONDON) == utc(2026, 3, 29, 1, 30)
    # the exact part comes after resolving the calendar part
    assert add_duration(start, d("1d30m"), 1, LONDON) == utc(2026, 3, 29, 2, 0)
    # fold: the earlier instant
    start = local(LONDON, 2026, 10, 24, 1, 30)
    assert add_duration(start, d("1d"), 1, LONDON) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(
    ("start", "text", "sign", "expected"),
    [
        (date(2026, 1, 31), "1mo", 1, date(2026, 2, 28)),
        (date(2028, 1, 31), "1mo", 1, date(2028, 2, 29)),
        (date(2026, 3, 31), "1mo", -1, date(2026, 2, 28)),
        (date(2026, 5, 31), "1mo", 1, date(2026, 6, 30)),
        (date(2026, 1, 31), "2mo", 1, date(2026, 3, 31)),
        (date(2028, 2, 29), "1y", 1, date(2029, 2, 28)),
        (date(2026, 11, 15), "3mo", 1, date(2027, 2, 15)),
        (date(2026, 2, 15), "14mo", -1, date(2024, 12, 15)),
        # months first, then days: Jan 30 +1mo = Feb 28, +1d = Mar 1
        (date(2026, 1, 30), "1mo1d", 1, date(2026, 3, 1)),
    ],
)
def test_months_clamp(start: date, text: str, sign: int, expected: date) -> None:
    instant = local(LONDON, start.year, start.month, start.day, 10, 15)
    result = add_duration(instant, d(text), sign, LONDON)
    assert wall(result, LONDON) == datetime.combine(expected, time(10, 15))


@pytest.mark.parametrize(
    ("start", "text", "sign", "calendar", "expected"),
    [
        (date(2026, 1, 9), "1bd", 1, None, date(2026, 1, 12)),  # Fri → Mon
        (date(2026, 1, 10), "1bd", 1, None, date(2026, 1, 12)),  # Sat → Mon
        (date(2026, 1, 11), "1bd", -1, None, date(2026, 1, 9)),  # Sun → Fri
        (date(2026, 1, 12), "1bd", -1, None, date(2026, 1, 9)),  # Mon → Fri
        (date(2026, 1, 5), "10bd", 1, None, date(2026, 1, 19)),
        (date(2026, 1, 8), "3bd", 1, None, date(2026, 1, 13)),
        # GB 2026: Fri 25 Christmas, Sat 26 Boxing Day, Mon 28 Boxing Day (observed)
        (date(2026, 12, 24), "1bd", 1, GB, date(2026, 12, 29)),
        (date(2026, 12, 23), "2bd", 1, GB, date(2026, 12, 29)),
        (date(2026, 12, 29), "1bd", -1, GB, date(2026, 12, 24)),
        (date(2026, 12, 25), "1bd", 1, GB, date(2026, 12, 29)),
        # 2027-01-01 (Fri) is a holiday too
        (date(2026, 12, 31), "1bd", 1, GB, date(2027, 1, 4)),
        # closed dates
        (
            date(2026, 12, 23),
            "1bd",
            1,
            Calendar(name="x", holidays="GB", closed=("2026-12-24",)),
            date(2026, 12, 29),
        ),
        (
            date(2026, 12, 24),
            "1bd",
            1,
            Calendar(name="x", holidays="GB", closed=("2026-12-29", "2026-12-30")),
            date(2026, 12, 31),
        ),
        # a calendar's own days: a six-day week
        (
            date(2026, 1, 9),
            "1bd",
            1,
            Calendar(name="x", days=("mon", "tue", "wed", "thu", "fri", "sat")),
            date(2026, 1, 10),
        ),
        # 2bd with days 1d: days first, then business days
        (date(2026, 1, 8), "1d1bd", 1, None, date(2026, 1, 12)),
    ],
)
def test_business_days(
    start: date, text: str, sign: int, calendar: Calendar | None, expected: date
) -> None:
    instant = local(LONDON, start.year, start.month, start.day, 9, 0)
    result = add_duration(instant, d(text), sign, LONDON, calendar)
    assert wall(result, LONDON) == datetime.combine(expected, time(9, 0))


@cache
def _gb_holidays(year: int) -> frozenset[date]:
    """The oracle's own view of GB public holidays, straight from the holidays package."""
    return frozenset(holidays.country_holidays("GB", years=year))


def _oracle_open(day: date, calendar: Calendar | None) -> bool:
    if calendar is None:
        return day.weekday() < 5
    if WEEKDAYS[day.weekday()] not in calendar.days:
        return False
    if day.isoformat() in calendar.closed:
        return False
    assert calendar.holidays in (None, "GB")
    return not (calendar.holidays and day in _gb_holidays(day.year))


@FAST
@given(
    start=st.dates(min_value=date(2025, 1, 1), max_value=date(2028, 12, 31)),
    n=st.integers(min_value=1, max_value=30),
    sign=st.sampled_from([1, -1]),
    calendar=st.sampled_from(
        [None, GB, Calendar(name="c", holidays="GB", closed=("2026-12-24", "2027-04-06"))]
    ),
)
def test_business_days_property(start: date, n: int, sign: int, calendar: Calendar | None) -> None:
    instant = local(LONDON, start.year, start.month, start.day, 12)
    result = add_duration(instant, Duration(business_days=n), sign, LONDON, calendar)
    end = wall(result, LONDON)
    assert end.time() == time(12)
    end_day = end.date()
    assert _oracle_open(end_day, calendar)
    # exactly n open days in (start, end] going forward, [end, start) going back
    lo, hi = (start, end_day) if sign > 0 else (end_day, start)
    assert (hi > lo) and (end_day > start if sign > 0 else end_day < start)
    span = [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]
    if sign > 0:
        counted = [x for x in span if x > start and _oracle_open(x, calendar)]
    else:
        counted = [x for x in span if x < start and _oracle_open(x, calendar)]
    assert len(counted) == n


@FAST
@given(
    instant=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)).map(
        lambda x: x.replace(tzinfo=UTC)
    ),
    tz=zones,
    hours=st.integers(min_value=0, max_value=24 * 400),
    minutes=st.integers(min_value=0, max_value=59),
    sign=st.sampled_from([1, -1]),
)
def test_exact_units_are_elapsed_time(
    instant: datetime, tz: ZoneInfo, hours: int, minutes: int, sign: int
) -> None:
    dur = Duration(seconds=hours * 3600 + minutes * 60)
    result = add_duration(instant, dur, sign, tz)
    assert result - instant == sign * timedelta(hours=hours, minutes=minutes)
    assert result.tzinfo is UTC


@FAST
@given(
    naive=naive_2000_2040.map(lambda x: x.replace(second=0, microsecond=0)),
    tz=zones,
    days=st.integers(min_value=0, max_value=800),
    sign=st.sampled_from([1, -1]),
)
def test_days_keep_wall_clock_time(naive: datetime, tz: ZoneInfo, days: int, sign: int) -> None:
    instant = resolve_local(naive, tz)
    start_wall = wall(instant, tz)
    result = add_duration(instant, Duration(days=days), sign, tz)
    target = start_wall + sign * timedelta(days=days)
    found, offsets = instants_showing(target, tz)
    if found:  # the wall time exists: kept exactly, earlier instant in a fold
        assert result == found[0]
    else:  # a gap: moved forward by its length
        assert wall(result, tz) == target + (max(offsets) - min(offsets))


@FAST
@given(
    day=st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 1)),
    tz=zones,
    months=st.integers(min_value=0, max_value=60),
    sign=st.sampled_from([1, -1]),
)
def test_months_property(day: date, tz: ZoneInfo, months: int, sign: int) -> None:
    instant = resolve_local(datetime.combine(day, time(12)), tz)
    result_day = wall(add_duration(instant, Duration(months=months), sign, tz), tz).date()
    total = day.year * 12 + day.month - 1 + sign * months
    assert (result_day.year, result_day.month) == (total // 12, total % 12 + 1)
    next_month = date(result_day.year + result_day.month // 12, result_day.month % 12 + 1, 1)
    last_day = (next_month - timedelta(days=1)).day
    assert result_day.day == min(day.day, last_day)


def test_add_duration_rejects_naive_and_normalises_to_utc() -> None:
    with pytest.raises(ValueError):
        add_duration(datetime(2026, 1, 1), d("1d"), 1, LONDON)
    aware = datetime(2026, 3, 28, 12, tzinfo=NEW_YORK)
    result = add_duration(aware, d("2h"), 1, LONDON)
    assert result.tzinfo is UTC and result == utc(2026, 3, 28, 18)


# --------------------------------------------------------------------------- eval_at


def test_eval_at_and_anchor() -> None:
    at = AtExpr("due_at", ((-1, d("3d")),), "due_at - 3d")
    attrs = {"due_at": "2026-04-01T09:00:00+01:00"}
    assert anchor_of(at, attrs, LONDON) == utc(2026, 4, 1, 8)
    assert eval_at(at, attrs, LONDON) == utc(2026, 3, 29, 8)  # 09:00 BST kept
    assert eval_at(at, {}, LONDON) is None
    assert eval_at(at, {"due_at": None}, LONDON) is None
    assert anchor_of(at, {"due_at": None}, LONDON) is None
    with pytest.raises(BadDate, match="'soon' is not a date"):
        eval_at(at, {"due_at": "soon"}, LONDON)
    # offsets apply in order: Jan 31 + 1mo = Feb 28, - 1d = Feb 27
    at = AtExpr("d", ((1, d("1mo")), (-1, d("1d"))))
    assert eval_at(at, {"d": "2026-01-31"}, LONDON) == utc(2026, 2, 27)
    at = AtExpr("d", ((-1, d("1d")), (1, d("1mo"))))
    assert eval_at(at, {"d": "2026-01-31"}, LONDON) == utc(2026, 2, 28)
    # business days use the calendar
    at = AtExpr("d", ((1, d("1bd")),))
    assert eval_at(at, {"d": "2026-12-24"}, LONDON, GB) == utc(2026, 12, 29)
    assert eval_at(at, {"d": "2026-12-24"}, LONDON) == utc(2026, 12, 25)
    # bare anchor
    assert eval_at(AtExpr("d"), {"d": date(2026, 7, 1)}, LONDON) == utc(2026, 6, 30, 23)


def test_eval_at_out_of_range_is_bad_date() -> None:
    at = AtExpr("d", ((1, d("1d")),))
    with pytest.raises(BadDate):
        eval_at(at, {"d": "9999-12-31"}, LONDON)
    at = AtExpr("d", ((1, d("1mo")),))
    with pytest.raises(BadDate):
        eval_at(at, {"d": "9999-12-05"}, LONDON)


# --------------------------------------------------------------------------- at_time_of_day


def test_at_time_of_day_known() -> None:
    instant = utc(2026, 3, 28, 23, 30)  # 23:30 GMT, 28 March
    assert at_time_of_day(instant, time(9), LONDON) == utc(2026, 3, 28, 9)
    # 00:30 BST 30 March is 23:30Z on the 29th: the local date decides
    assert at_time_of_day(utc(2026, 3, 29, 23, 30), time(9), LONDON) == utc(2026, 3, 30, 8)
    assert at_time_of_day(utc(2026, 3, 29, 12), time(1, 30), LONDON) == utc(2026, 3, 29, 1, 30)
    assert at_time_of_day(utc(2026, 10, 25, 12), time(1, 30), LONDON) == utc(2026, 10, 25, 0, 30)
    assert at_time_of_day(utc(2026, 3, 15, 3), time(9), NEW_YORK) == utc(2026, 3, 14, 13)


@FAST
@given(
    instant=st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2040, 1, 1)).map(
        lambda x: x.replace(tzinfo=UTC)
    ),
    tz=zones,
    t=st.times(),
)
def test_at_time_of_day_property(instant: datetime, tz: ZoneInfo, t: time) -> None:
    result = at_time_of_day(instant, t, tz)
    target = datetime.combine(wall(instant, tz).date(), t)
    found, offsets = instants_showing(target, tz)
    if found:
        assert result == found[0]
    else:
        assert wall(result, tz) == target + (max(offsets) - min(offsets))


# --------------------------------------------------------------------------- open days


def test_is_open_day() -> None:
    christmas, boxing, tuesday = date(2026, 12, 25), date(2026, 12, 26), date(2026, 12, 29)
    saturday = date(2026, 1, 10)
    assert is_open_day(saturday, None, None)
    assert not is_open_day(saturday, ("mon", "tue", "wed", "thu", "fri"), None)
    assert not is_open_day(saturday, None, GB)  # calendar days default to Mon-Fri
    assert is_open_day(saturday, ("sat",), GB)  # the window's days override the calendar's
    assert not is_open_day(boxing, ("sat",), GB)  # but holidays still close
    assert not is_open_day(christmas, None, GB)
    assert is_open_day(christmas, None, None)
    assert is_open_day(tuesday, None, GB)
    closing = Calendar(name="c", closed=("2026-12-29",))
    assert not is_open_day(tuesday, None, closing)
    assert not is_open_day(date(2026, 1, 7), [], None)
    # subdivisions: St Andrew's Day is a holiday in Scotland only
    st_andrews = date(2026, 11, 30)
    assert is_open_day(st_andrews, None, GB)
    assert not is_open_day(st_andrews, None, Calendar(name="sc", holidays="GB-SCT"))
    # July 4th 2026 is a Saturday, observed Friday 3rd
    assert not is_open_day(date(2026, 7, 3), None, Calendar(name="us", holidays="US-CA"))
    with pytest.raises(ValueError, match="not a weekday"):
        is_open_day(saturday, ("someday",), None)
    with pytest.raises(ValueError, match="holiday"):
        is_open_day(tuesday, None, Calendar(name="x", holidays="XX"))


# --------------------------------------------------------------------------- windows

OFFICE = Window(start=time(9), end=time(17), days=("mon", "tue", "wed", "thu", "fri"))
UK_OFFICE = Window(start=time(9), end=time(17), calendar="uk")
NIGHT = Window(start=time(22), end=time(6), days=("mon", "tue", "wed", "thu", "fri"))
CALS = {"uk": GB, "uk-closed": Calendar(name="uk-closed", holidays="GB", closed=("2026-12-29",))}


@pytest.mark.parametrize(
    ("window", "tz", "instant", "inside", "opening"),
    [
        # Wednesday 2026-01-07, London = UTC in winter
        (OFFICE, LONDON, utc(2026, 1, 7, 10), True, utc(2026, 1, 7, 10)),
        (OFFICE, LONDON, utc(2026, 1, 7, 9), True, utc(2026, 1, 7, 9)),  # start inclusive
        (OFFICE, LONDON, utc(2026, 1, 7, 7), False, utc(2026, 1, 7, 9)),  # before start
        (OFFICE, LONDON, utc(2026, 1, 7, 17), False, utc(2026, 1, 8, 9)),  # end exclusive
        (OFFICE, LONDON, utc(2026, 1, 7, 16, 59, 59), True, utc(2026, 1, 7, 16, 59, 59)),
        (OFFICE, LONDON, utc(2026, 1, 9, 18), False, utc(2026, 1, 12, 9)),  # Friday evening
        (OFFICE, LONDON, utc(2026, 1, 10, 12), False, utc(2026, 1, 12, 9)),  # weekend
        # recipient's timezone: 09:00 in New York is 14:00Z
        (OFFICE, NEW_YORK, utc(2026, 1, 7, 10), False, utc(2026, 1, 7, 14)),
        (OFFICE, NEW_YORK, utc(2026, 1, 7, 21, 59), True, utc(2026, 1, 7, 21, 59)),
        # summer time: 09:00 BST is 08:00Z
        (OFFICE, LONDON, utc(2026, 7, 1, 7, 30), False, utc(2026, 7, 1, 8)),
        # holidays from the calendar: Christmas Eve evening → Tuesday 29th
        (UK_OFFICE, LONDON, utc(2026, 12, 24, 18), False, utc(2026, 12, 29, 9)),
        (UK_OFFICE, LONDON, utc(2026, 12, 25, 10), False, utc(2026, 12, 29, 9)),
        (UK_OFFICE, LONDON, utc(2026, 12, 24, 10), True, utc(2026, 12, 24, 10)),
        (
            Window(start=time(9), end=time(17), calendar="uk-closed"),
            LONDON,
            utc(2026, 12, 24, 18),
            False,
            utc(2026, 12, 30, 9),
        ),
        # overnight window 22:00-06:00 opening Mon-Fri
        (NIGHT, LONDON, utc(2026, 1, 7, 23), True, utc(2026, 1, 7, 23)),
        (NIGHT, LONDON, utc(2026, 1, 8, 3), True, utc(2026, 1, 8, 3)),  # Wed's window
        (NIGHT, LONDON, utc(2026, 1, 7, 12), False, utc(2026, 1, 7, 22)),
        (NIGHT, LONDON, utc(2026, 1, 7, 6), False, utc(2026, 1, 7, 22)),  # end exclusive
        (NIGHT, LONDON, utc(2026, 1, 10, 3), True, utc(2026, 1, 10, 3)),  # Sat 03:00: Friday's
        (NIGHT, LONDON, utc(2026, 1, 10, 23), False, utc(2026, 1, 12, 22)),  # Sat night
        (NIGHT, LONDON, utc(2026, 1, 12, 3), False, utc(2026, 1, 12, 22)),  # Sunday's: closed
        # window that ends at midnight
        (Window(start=time(18), end=time(0)), LONDON, utc(2026, 1, 7, 23, 59), True, None),
        (
            Window(start=time(18), end=time(0)),
            LONDON,
            utc(2026, 1, 8, 0),
            False,
            utc(2026, 1, 8, 18),
        ),
        # all-day windows with days / calendar
        (Window(calendar="uk"), LONDON, utc(2026, 1, 10, 12), False, utc(2026, 1, 12)),
        (Window(calendar="uk"), LONDON, utc(2026, 1, 12, 12), True, utc(2026, 1, 12, 12)),
        (Window(days=("sat", "sun")), LONDON, utc(2026, 1, 7), False, utc(2026, 1, 10)),
        (Window(start=time(0), end=time(0)), LONDON, utc(2026, 1, 7, 3), True, None),
        # window start inside the spring-forward gap: opens at 02:30 BST = 01:30Z
        (
            Window(start=time(1, 30), end=time(4)),
            LONDON,
            utc(2026, 3, 29, 0, 10),
            False,
            utc(2026, 3, 29, 1, 30),
        ),
        # a window wholly inside the gap does not open that day
        (
            Window(start=time(1), end=time(1, 45)),
            LONDON,
            utc(2026, 3, 29, 0, 10),
            False,
            utc(2026, 3, 30, 0),
        ),
    ],
)
def test_windows_known(
    window: Window, tz: ZoneInfo, instant: datetime, inside: bool, opening: datetime | None
) -> None:
    assert in_window(instant, window, tz, CALS) is inside
    result = next_window_opening(instant, window, tz, CALS)
    assert result == (opening or instant)
    assert result.tzinfo is UTC


def test_window_that_never_opens() -> None:
    with pytest.raises(ValueError, match="does not open"):
        next_window_opening(utc(2026, 1, 7), Window(days=()), LONDON, CALS)
    # Mondays only, and every 1st-28th of 2026 closed: the first open day is Monday 30 March
    mostly_closed = Calendar(
        name="s",
        days=("mon",),
        closed=tuple(f"2026-{m:02d}-{day:02d}" for m in range(1, 13) for day in range(1, 29)),
    )
    opening = next_window_opening(
        utc(2026, 1, 1), Window(calendar="s"), LONDON, {"s": mostly_closed}
    )
    assert wall(opening, LONDON) == datetime(2026, 3, 30, 0)
    with pytest.raises(ValueError, match="not defined"):
        in_window(utc(2026, 1, 7), Window(calendar="nope"), LONDON, CALS)


def _oracle_in_window(instant: datetime, window: Window, tz: ZoneInfo) -> bool:
    """The window rules read plainly (spec: window), for the windows the strategy makes."""
    w = wall(instant, tz)
    cal = CALS.get(window.calendar) if window.calendar else None
    days = window.days if window.days is not None else (cal.days if cal else WEEKDAYS)

    def open_day(x: date) -> bool:
        if WEEKDAYS[x.weekday()] not in days:
            return False
        if cal is None:
            return True
        if x.isoformat() in cal.closed:
            return False
        return x not in _gb_holidays(x.year)

    if window.start is None or window.start == window.end:
        return open_day(w.date())
    start, end = window.start, window.end
    if start < end:
        return open_day(w.date()) and start <= w.time() < end
    if w.time() >= start:
        return open_day(w.date())
    return w.time() < end and open_day(w.date() - timedelta(days=1))


quarter_hours = st.integers(min_value=0, max_value=95).map(lambda q: time(q // 4, q % 4 * 15))


@st.composite
def windows(draw: st.DrawFn) -> Window:
    all_day = draw(st.integers(0, 4)) == 0
    start = None if all_day else draw(quarter_hours)
    end = None if all_day else draw(quarter_hours.filter(lambda t: t != start))
    days = draw(
        st.none()
        | st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True).map(tuple)
    )
    calendar = draw(st.sampled_from([None, "uk", "uk-closed"]))
    return Window(start=start, end=end, days=days, calendar=calendar)


@settings(deadline=None, max_examples=200)
@given(
    window=windows(),
    tz=zones,
    instant=st.datetimes(min_value=datetime(2025, 12, 1), max_value=datetime(2027, 12, 31)).map(
        lambda x: x.replace(tzinfo=UTC)
    ),
)
def test_next_window_opening_property(window: Window, tz: ZoneInfo, instant: datetime) -> None:
    inside = in_window(instant, window, tz, CALS)
    assert inside == _oracle_in_window(instant, window, tz)
    result = next_window_opening(instant, window, tz, CALS)
    assert result >= instant
    assert in_window(result, window, tz, CALS)
    assert _oracle_in_window(result, window, tz)
    if inside:
        assert result == instant
        return
    # nothing earlier was open: probe the span every 15 minutes (starts are on quarter
    # hours) and the moment just before the opening
    assert not _oracle_in_window(result - timedelta(seconds=1), window, tz) or (
        result - timedelta(seconds=1) < instant
    )
    probe = instant
    while probe < result:
        assert not _oracle_in_window(probe, window, tz), probe
        probe += timedelta(minutes=15)


# --------------------------------------------------------------------------- repeat_times

MWF = ("mon", "wed", "fri")
FAR = utc(2100, 1, 1)


def test_repeat_days_filter_and_count() -> None:
    first = local(LONDON, 2026, 1, 5, 12)  # Monday
    got = repeat_times(first, d("1d"), LONDON, days=MWF, count=6, until=None, horizon=FAR)
    assert [i for i, _ in got] == [0, 1, 2, 3, 4, 5]
    assert [wall(t, LONDON) for _, t in got] == [
        datetime(2026, 1, day, 12) for day in (5, 7, 9, 12, 14, 16)
    ]
    # the first occurrence is filtered like the others: Tuesday start
    got = repeat_times(
        first + timedelta(days=1), d("1d"), LONDON, days=MWF, count=2, until=None, horizon=FAR
    )
    assert [wall(t, LONDON).date() for _, t in got] == [date(2026, 1, 7), date(2026, 1, 9)]


def test_repeat_until_inclusive_and_horizon() -> None:
    first = local(LONDON, 2026, 1, 5, 12)
    until = local(LONDON, 2026, 1, 9, 12)
    got = repeat_times(first, d("1d"), LONDON, days=None, count=None, until=until, horizon=FAR)
    assert len(got) == 5 and got[-1] == (4, until)
    got = repeat_times(
        first,
        d("1d"),
        LONDON,
        days=None,
        count=None,
        until=until - timedelta(seconds=1),
        horizon=FAR,
    )
    assert len(got) == 4
    # count and until together: whichever comes first
    got = repeat_times(first, d("1d"), LONDON, days=None, count=2, until=until, horizon=FAR)
    assert len(got) == 2
    # open-ended: the horizon bounds it (inclusive)
    got = repeat_times(
        first,
        d("1w"),
        LONDON,
        days=None,
        count=None,
        until=None,
        horizon=first + timedelta(days=28),
    )
    assert len(got) == 5
    # until before first: nothing
    got = repeat_times(
        first, d("1d"), LONDON, days=None, count=None, until=first - timedelta(1), horizon=FAR
    )
    assert got == []
    # with a count, the horizon does not cut planning short
    got = repeat_times(first, d("1d"), LONDON, days=None, count=10, until=None, horizon=first)
    assert len(got) == 10


def test_repeat_months_do_not_drift() -> None:
    first = local(LONDON, 2026, 1, 31, 9)
    got = repeat_times(first, d("1mo"), LONDON, days=None, count=4, until=None, horizon=FAR)
    assert [wall(t, LONDON) for _, t in got] == [
        datetime(2026, 1, 31, 9),
        datetime(2026, 2, 28, 9),
        datetime(2026, 3, 31, 9),  # BST by then: wall time still 09:00
        datetime(2026, 4, 30, 9),
    ]


def test_repeat_keeps_wall_time_across_dst_and_hours_stay_exact() -> None:
    first = local(LONDON, 2026, 3, 27, 9)
    got = repeat_times(first, d("1d"), LONDON, days=None, count=4, until=None, horizon=FAR)
    assert all(wall(t, LONDON).time() == time(9) for _, t in got)
    got = repeat_times(first, d("24h"), LONDON, days=None, count=4, until=None, horizon=FAR)
    assert [wall(t, LONDON).hour for _, t in got] == [9, 9, 10, 10]


def test_repeat_guards() -> None:
    monday = local(LONDON, 2026, 1, 5, 12)
    # every 7 days from a Monday never lands on a Tuesday: stops, does not hang
    assert (
        repeat_times(monday, d("7d"), LONDON, days=("tue",), count=3, until=None, horizon=FAR) == []
    )
    assert repeat_times(monday, d("1d"), LONDON, days=(), count=3, until=None, horizon=FAR) == []
    assert repeat_times(monday, d("1d"), LONDON, days=None, count=0, until=None, horizon=FAR) == []
    with pytest.raises(ValueError):
        repeat_times(monday, Duration(), LONDON, days=None, count=3, until=None, horizon=FAR)


def test_repeat_business_days() -> None:
    first = local(LONDON, 2026, 12, 23, 9)
    got = repeat_times(
        first, d("1bd"), LONDON, days=None, count=4, until=None, horizon=FAR, calendar=GB
    )
    assert [wall(t, LONDON).date() for _, t in got] == [
        date(2026, 12, 23),
        date(2026, 12, 24),
        date(2026, 12, 29),
        date(2026, 12, 30),
    ]


@FAST
@given(
    naive=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)),
    tz=zones,
    every=st.sampled_from(["1d", "2d", "1w", "12h", "25h", "1mo", "1d6h", "3bd", "1y"]).map(
        parse_duration
    ),
    days=st.none()
    | st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True).map(tuple),
    count=st.none() | st.integers(min_value=1, max_value=15),
    until_days=st.none() | st.integers(min_value=0, max_value=120),
)
def test_repeat_property(
    naive: datetime,
    tz: ZoneInfo,
    every: Duration,
    days: tuple[str, ...] | None,
    count: int | None,
    until_days: int | None,
) -> None:
    first = resolve_local(naive, tz)
    until = first + timedelta(days=until_days) if until_days is not None else None
    horizon = first + timedelta(days=60)
    got = repeat_times(first, every, tz, days=days, count=count, until=until, horizon=horizon)

    # oracle: walk k = 0, 1, … with the public add_duration on every·k
    expected: list[tuple[int, datetime]] = []
    stop = until if until is not None else (horizon if count is None else None)
    for k in range(2000):
        mult = Duration(
            months=every.months * k,
            days=every.days * k,
            business_days=every.business_days * k,
            seconds=every.seconds * k,
        )
        try:
            at = add_duration(first, mult, 1, tz)
        except OverflowError:  # past year 9999: e.g. 1y on a weekday that rarely comes up
            break
        if stop is not None and at > stop:
            break
        if days is not None and WEEKDAYS[at.astimezone(tz).weekday()] not in days:
            continue
        expected.append((len(expected), at))
        if count is not None and len(expected) == count:
            break
    assert got == expected
    instants = [t for _, t in got]
    assert instants == sorted(instants) and len(set(instants)) == len(instants)
    if count is not None:
        assert len(got) <= count


# --------------------------------------------------------------------------- cron


class TestCron:
    def test_daily_nine_stays_nine_local_across_dst(self) -> None:
        tz = ZoneInfo("Europe/London")
        t = datetime(2026, 3, 27, 12, tzinfo=UTC)
        got = []
        for _ in range(4):
            t = timemath.cron_next("0 9 * * *", tz, t)
            got.append(t.astimezone(tz).strftime("%m-%d %H:%M %Z"))
        assert got == ["03-28 09:00 GMT", "03-29 09:00 BST", "03-30 09:00 BST", "03-31 09:00 BST"]

    def test_a_time_in_the_spring_gap_runs_shifted_forward_once(self) -> None:
        tz = ZoneInfo("Europe/London")  # 29 March 2026: 01:00 → 02:00 local
        t = timemath.cron_next("30 1 * * *", tz, datetime(2026, 3, 28, 12, tzinfo=UTC))
        assert t == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 01:30 GMT does not exist → 02:30 BST
        assert t.astimezone(tz).strftime("%H:%M") == "02:30"
        nxt = timemath.cron_next("30 1 * * *", tz, t)
        assert nxt == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)

    def test_a_time_in_the_fall_back_hour_runs_once_at_the_earlier_instant(self) -> None:
        tz = ZoneInfo("Europe/London")  # 25 October 2026: 02:00 BST → 01:00 GMT
        t = timemath.cron_next("30 1 * * *", tz, datetime(2026, 10, 24, 12, tzinfo=UTC))
        assert t == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 01:30 BST, the earlier one
        nxt = timemath.cron_next("30 1 * * *", tz, t)
        assert nxt == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # not again at 01:30 GMT

    def test_every_half_hour_through_a_gap_never_repeats_an_instant(self) -> None:
        tz = ZoneInfo("America/New_York")  # 8 March 2026: 02:00 → 03:00
        t = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
        seen = []
        for _ in range(6):
            t = timemath.cron_next("*/30 * * * *", tz, t)
            seen.append(t)
        assert seen == sorted(set(seen))
        assert [x.astimezone(tz).strftime("%H:%M") for x in seen] == [
            "00:30",
            "01:00",
            "01:30",
            "03:00",
            "03:30",
            "04:00",
        ]

    @settings(max_examples=200, deadline=None)
    @given(
        zone=st.sampled_from(
            [
                "Europe/London",
                "America/New_York",
                "Australia/Sydney",
                "Australia/Lord_Howe",
                "America/Santiago",
                "Pacific/Chatham",
                "Asia/Kolkata",
                "America/St_Johns",
            ]
        ),
        start=st.datetimes(
            min_value=datetime(2001, 1, 1), max_value=datetime(2039, 1, 1), timezones=st.just(UTC)
        ),
        hh=st.integers(0, 23),
        mm=st.sampled_from([0, 15, 30, 45]),
    )
    def test_daily_schedule_property(self, zone: str, start: datetime, hh: int, mm: int) -> None:
        """Each day's occurrence is at HH:MM local, or shifted forward by the gap; strictly
        increasing; one per local day."""
        tz = ZoneInfo(zone)
        t = start
        days = set()
        for _ in range(5):
            nxt = timemath.cron_next(f"{mm} {hh} * * *", tz, t)
            assert nxt > t
            local = nxt.astimezone(tz)
            wall = local.replace(tzinfo=None)
            want = wall.replace(hour=hh, minute=mm)
            if wall != want:  # only in a gap: moved forward by its length
                before = (nxt - timedelta(hours=3)).astimezone(tz)
                gap = local.utcoffset() - before.utcoffset()  # type: ignore[operator]
                assert gap > timedelta(0) and wall - want == gap, (zone, nxt, local)
                day = want.date()
            else:
                day = wall.date()
            assert day not in days
            days.add(day)
            t = nxt
