"""Cron rules read as Vixie/Debian cron reads them, in the rule's zone (duly.core.rules.cron and
timemath.cron_next / cron_prev), and refused with file and line when they are not cron.

The property test compares cron_next and cron_prev with an oracle written here without the
module: expressions are generated as structures (so the oracle knows each field's values
without parsing the text), every wall-clock minute of a day is matched against those values
as crontab(5) says, and each matching wall time is turned into an instant by walking the
zone's UTC minutes: a wall time the clock shows is its earliest instant (a fold takes the
earlier), a wall time it skips moves forward by the length of the gap.

The property test runs ``DULY_CRON_EXAMPLES`` examples (300 by default, well under a minute
here). For a longer search::

    DULY_CRON_EXAMPLES=20000 .venv/bin/python -m pytest -p no:cacheprovider -q \\
        tests/unit/test_cron.py -k oracle
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duly.cli import main
from duly.core.rules import cron, timemath
from duly.core.rules.cron import CronError, parse
from duly.core.rules.loader import RuleFileError, load_rules_text

LONDON = ZoneInfo("Europe/London")
CHATHAM = ZoneInfo("Pacific/Chatham")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
ONE_MINUTE = timedelta(minutes=1)


def fires(expr: str, tz: ZoneInfo, start: datetime, n: int) -> list[datetime]:
    """The first ``n`` occurrences after ``start``, as local times in ``tz``."""
    out = []
    t = start
    for _ in range(n):
        t = timemath.cron_next(expr, tz, t)
        out.append(t.astimezone(tz))
    return out


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


# --------------------------------------------------------------------------- findings


class TestReadAsCron:
    """What croniter read differently from cron (issue 11, finding 4)."""

    def test_a_range_of_one_value_is_that_value(self) -> None:
        got = fires("0 5-5 * * *", UTC, datetime(2026, 3, 1, tzinfo=UTC), 3)
        assert [t.strftime("%d %H:%M") for t in got] == ["01 05:00", "02 05:00", "03 05:00"]

    def test_a_range_of_one_name_is_that_day(self) -> None:
        got = fires("0 9 * * mon-mon", UTC, datetime(2026, 3, 1, tzinfo=UTC), 3)
        assert [t.strftime("%a %d") for t in got] == ["Mon 02", "Mon 09", "Mon 16"]

    def test_a_day_must_match_both_fields_when_one_starts_with_a_star(self) -> None:
        # March 2026: the odd days that are weekdays (cron: */2 starts with *, so AND)
        got = fires("0 9 */2 * mon-fri", UTC, datetime(2026, 3, 1, tzinfo=UTC), 8)
        assert [t.day for t in got] == [3, 5, 9, 11, 13, 17, 19, 23]
        assert all(t.weekday() < 5 and t.day % 2 == 1 for t in got)

    def test_a_day_may_match_either_field_when_both_are_restricted(self) -> None:
        # the 1st and 15th, and every Monday (March 2026: Mondays are 2, 9, 16, ...)
        got = fires("0 9 1,15 * mon", UTC, datetime(2026, 2, 28, tzinfo=UTC), 6)
        assert [t.day for t in got] == [1, 2, 9, 15, 16, 23]

    def test_a_step_from_one_value_runs_to_the_end_of_the_field(self) -> None:
        # 1/2 is 1-7/2: Monday, Wednesday, Friday and Sunday (7)
        got = fires("0 9 * * 1/2", UTC, datetime(2026, 3, 1, 12, tzinfo=UTC), 8)
        assert [t.strftime("%a") for t in got] == [
            "Mon", "Wed", "Fri", "Sun", "Mon", "Wed", "Fri", "Sun",
        ]  # fmt: skip
        got = fires("10/15 * * * *", UTC, datetime(2026, 3, 1, tzinfo=UTC), 5)
        assert [t.strftime("%H:%M") for t in got] == ["00:10", "00:25", "00:40", "00:55", "01:10"]

    def test_seven_and_zero_are_both_sunday(self) -> None:
        start = datetime(2026, 3, 1, 12, tzinfo=UTC)  # a Sunday
        for expr in ("0 9 * * 7", "0 9 * * 0", "0 9 * * SUN", "0 9 * * 0,7"):
            got = fires(expr, UTC, start, 2)
            assert [t.strftime("%a %d") for t in got] == ["Sun 08", "Sun 15"], expr
        got = fires("0 9 * * 6-7", UTC, start, 3)
        assert [t.strftime("%a %d") for t in got] == ["Sat 07", "Sun 08", "Sat 14"]

    def test_a_range_that_wraps_is_an_error(self) -> None:
        for expr in ("0 9 * * 5-1", "50-10 * * * *", "0 22-2 * * *", "0 9 * nov-feb *"):
            with pytest.raises(CronError, match="wraps around"):
                parse(expr)


class TestGapsThatAreNotWholeHours:
    """Real times after a gap were skipped (issue 11, finding 4)."""

    def test_chatham_fires_the_real_times_after_the_gap_and_then_the_moved_ones(self) -> None:
        # 2026-09-27 02:45 +12:45 → 03:45 +13:45: 03:00-03:40 move on by an hour
        got = fires("*/8 3 * * *", CHATHAM, local(CHATHAM, 2026, 9, 27, 0, 0), 10)
        assert [t.strftime("%d %H:%M") for t in got] == [
            "27 03:48", "27 03:56", "27 04:00", "27 04:08", "27 04:16", "27 04:24",
            "27 04:32", "27 04:40", "28 03:00", "28 03:08",
        ]  # fmt: skip
        assert got == sorted(set(got))

    def test_lord_howe_fires_every_time_the_clock_shows_and_every_moved_one(self) -> None:
        # 2021-10-03 02:00 +10:30 → 02:30 +11:00: 02:00 → 02:30 and 02:20 → 02:50
        got = fires("*/20 * * * *", LORD_HOWE, local(LORD_HOWE, 2021, 10, 3, 1, 0), 5)
        assert [t.strftime("%H:%M%z") for t in got] == [
            "01:20+1030", "01:40+1030", "02:30+1100", "02:40+1100", "02:50+1100",
        ]  # fmt: skip

    def test_lord_howe_previous_occurrence_is_the_latest_instant(self) -> None:
        at = local(LORD_HOWE, 2021, 10, 3, 2, 55)
        prev = timemath.cron_prev("*/20 * * * *", LORD_HOWE, at)
        assert prev is not None and prev.astimezone(LORD_HOWE).strftime("%H:%M") == "02:50"
        prev = timemath.cron_prev("*/20 * * * *", LORD_HOWE, prev - ONE_MINUTE)
        assert prev is not None and prev.astimezone(LORD_HOWE).strftime("%H:%M") == "02:40"

    def test_one_hour_gap_collision_is_one_occurrence(self) -> None:
        # New York 2026-03-08 02:00 → 03:00: 02:00 moves to 03:00, which also fires: once
        ny = ZoneInfo("America/New_York")
        got = fires("0 * * * *", ny, local(ny, 2026, 3, 8, 0, 30), 4)
        assert [t.strftime("%H:%M") for t in got] == ["01:00", "03:00", "04:00", "05:00"]

    def test_a_skipped_day_is_one_occurrence_on_the_next(self) -> None:
        # Samoa skipped 2011-12-30: its 09:00 moves a whole day, onto the 31st's 09:00
        apia = ZoneInfo("Pacific/Apia")
        got = fires("0 9 * * *", apia, local(apia, 2011, 12, 29, 0, 0), 3)
        assert [t.isoformat() for t in got] == [
            "2011-12-29T09:00:00-10:00", "2011-12-31T09:00:00+14:00",
            "2012-01-01T09:00:00+14:00",
        ]  # fmt: skip
        prev = timemath.cron_prev("0 9 * * *", apia, got[1] - ONE_MINUTE)
        assert prev == got[0]

    def test_a_fold_fires_once_and_the_previous_occurrence_knows_it(self) -> None:
        # London 2026-10-25 02:00 BST → 01:00 GMT: 01:30 fires at its first instant only
        got = fires("30 1 * * *", LONDON, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
        assert [t.isoformat() for t in got] == [
            "2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00",
        ]  # fmt: skip
        # at 01:10 GMT (the second 01:10) the 01:30 of the day has already fired
        prev = timemath.cron_prev("30 1 * * *", LONDON, datetime(2026, 10, 25, 1, 10, tzinfo=UTC))
        assert prev == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


class TestBoundedSearch:
    def test_the_rarest_day_is_found_across_a_century_without_leap_day(self) -> None:
        # February 29th on a Sunday: 2088, then 2128 (2100 is not a leap year)
        t = timemath.cron_next("0 12 29 2 */7", UTC, datetime(2088, 3, 1, tzinfo=UTC))
        assert t == datetime(2128, 2, 29, 12, tzinfo=UTC)
        assert timemath.cron_prev("0 12 29 2 sun", UTC, t) == t
        prev = timemath.cron_prev("0 12 29 2 */7", UTC, t - ONE_MINUTE)
        assert prev == datetime(2088, 2, 29, 12, tzinfo=UTC)

    def test_no_occurrence_after_9999_is_a_value_error_not_a_hang(self) -> None:
        with pytest.raises(ValueError, match="no occurrence"):
            timemath.cron_next("0 0 1 1 *", UTC, datetime(9999, 6, 1, tzinfo=UTC))
        assert timemath.cron_prev("0 0 1 12 *", UTC, datetime(1, 6, 1, tzinfo=UTC)) is None

    def test_an_invalid_expression_is_a_value_error_at_run_time_too(self) -> None:
        with pytest.raises(ValueError, match="never fires"):
            timemath.cron_next("0 0 30 2 *", UTC, datetime(2026, 1, 1, tzinfo=UTC))
        with pytest.raises(ValueError, match="never fires"):
            timemath.cron_prev("* * 31 4 *", UTC, datetime(2026, 1, 1, tzinfo=UTC))

    @pytest.mark.parametrize("month", range(1, 13))
    @pytest.mark.parametrize("day", range(1, 32))
    def test_a_single_date_fires_exactly_when_some_year_has_it(self, month: int, day: int) -> None:
        longest = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        expr = f"0 0 {day} {month} *"
        if day > longest:
            with pytest.raises(CronError, match="never fires"):
                parse(expr)
            return
        t = timemath.cron_next(expr, UTC, datetime(2026, 1, 1, tzinfo=UTC))
        assert (t.month, t.day, t.hour) == (month, day, 0)
        assert t.year <= 2026 + 8


# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("expr", "same_as"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("0 9 * JAN,jul Sun", "0 9 * 1,7 0"),
        ("0 9 * * MON-fri", "0 9 * * 1-5"),
        ("*/15 * * * *", "0,15,30,45 * * * *"),
        ("0-30/10 * * * *", "0,10,20,30 * * * *"),
        ("05 09 * * *", "5 9 * * *"),
        ("0\t9  *  * *", "0 9 * * *"),
        ("0 0 * * */2", "0 0 * * 0,2,4,6"),
        ("0 0 * * 1-7/2", "0 0 * * 1,3,5,0"),
        ("0 0 1-31/10 * *", "0 0 1,11,21,31 * *"),
        ("*/60 */24 * * *", "0 0 * * *"),
        ("0 0 * * *,1", "0 0 * * *"),
    ],
)
def test_accepted_forms(expr: str, same_as: str) -> None:
    a, b = parse(expr), parse(same_as)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays, a.days_and) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays, b.days_and,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 8 * *", "expected 5 fields"),
        ("0 0 8 * * 1", "seconds and years are not supported"),
        ("0 8 * * 1-5 2026", "seconds and years are not supported"),
        ("", "got 0 fields"),
        ("@reboot", "@reboot has no meaning"),
        ("@every 5m", "expected 5 fields"),
        ("@fortnightly", "not a cron macro"),
        ("0 0 L * *", "extensions of other crons"),
        ("0 0 15W * *", "extensions of other crons"),
        ("0 0 LW * *", "extensions of other crons"),
        ("0 0 * * 5L", "extensions of other crons"),
        ("0 0 * * 5#2", "extensions of other crons"),
        ("0 0 ? * 1", "extensions of other crons"),
        ("60 * * * *", "60 is out of range (0-59)"),
        ("0 24 * * *", "24 is out of range (0-23)"),
        ("0 0 0 * *", "0 is out of range (1-31)"),
        ("0 0 32 * *", "32 is out of range (1-31)"),
        ("0 0 * 13 *", "13 is out of range (1-12)"),
        ("0 0 * * 8", "8 is out of range (0-7)"),
        ("*/0 * * * *", "a step must be 1 to 60, got 0"),
        ("*/61 * * * *", "a step must be 1 to 60, got 61"),
        ("*/x * * * *", "expected a number of steps"),
        ("1/2/3 * * * *", "expected a number of steps"),
        ("1,,2 * * * *", "an item of the list is empty"),
        ("-5 * * * *", "expected a number 0-59"),
        ("1-2-3 * * * *", "expected a number 0-59"),
        ("+5 * * * *", "expected a number 0-59"),
        ("٣ * * * *", "expected a number 0-59"),  # an Arabic-Indic digit is not a number here
        ("0 8 * * funday", "expected a day of the week"),
        ("0 8 * * monday", "expected a day of the week"),
        ("0 8 * january *", "expected a month"),
        ("0 8 mon * *", "expected a number 1-31"),
        ("0 9 * * sat-sun", "wraps around"),
        ("0 0 30 2 *", "never fires: February has no day 30"),
        ("0 0 30,31 2 *", "never fires: February has no day 30 or 31"),
        ("* * 31 4 *", "never fires: April has no day 31"),
        ("0 0 31 4,jun,9,11 *", "never fires: April, June, September and November have"),
        ("0 0 */30 2 *", None),  # */30 is 1 and 31: the 1st fires
        ("0 0 31 2 */2", "never fires"),  # a day must match both: none can
        ("0 0 31 2 mon", None),  # both restricted: every Monday of February fires
        ("x" * 1001, "at most 1000 characters"),
    ],
)
def test_refused_forms(expr: str, message: str | None) -> None:
    if message is None:
        parse(expr)
        return
    with pytest.raises(CronError) as exc:
        parse(expr)
    assert message in str(exc.value)


def test_the_wrap_hint_is_a_range_that_means_the_same() -> None:
    for expr, hint in [
        ("0 9 * * 5-1", "5-7,1"),
        ("0 9 * * fri-sun", "5-7"),
        ("0 9 * * sat-tue", "6-7,1-2"),
        ("50-10 * * * *", "50-59,0-10"),
        ("0 23-0 * * *", "23,0"),
    ]:
        with pytest.raises(CronError) as exc:
            parse(expr)
        assert str(exc.value).endswith(f"write {hint}"), str(exc.value)


# --------------------------------------------------------------------------- rule files


def rule_file(cron_value: str) -> str:
    return textwrap.dedent(
        f"""\
        timezone: Europe/London
        rules:
          - name: fine
            cron: "0 8 * * mon-fri"
            webhook: {{url: "https://hooks.test/x"}}
          - name: leap-only
            cron: "{cron_value}"
            webhook: {{url: "https://hooks.test/x"}}
        """
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0 0 30 2 *", "never fires: February has no day 30"),
        ("* * 31 4 *", "never fires: April has no day 31"),
        ("0 9 * * 5-1", "day-of-week '5-1': the range 5-1 wraps around"),
        ("0 0 L * *", "day-of-month 'L': L, W, # and ? are extensions of other crons"),
    ],
)
def test_rules_check_names_the_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "duly.yaml"
    path.write_text(rule_file(value))
    res = CliRunner().invoke(main, ["rules", "check", "--no-templates", str(path)])
    assert res.exit_code == 2, res.output
    assert f"{path}:7: rules[1].cron: cron '{value}': {message}" in res.stderr
    assert "OK" not in res.stdout


def test_rules_check_accepts_a_macro_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "duly.yaml"
    path.write_text(rule_file("@weekly"))
    res = CliRunner().invoke(main, ["rules", "check", "--no-templates", str(path)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"{path}: OK, 2 rules\n"
    rf = load_rules_text(rule_file("  @weekly "), check_templates=False)
    assert rf.rules[1].cron == "@weekly"


def test_load_reports_every_bad_cron_at_once() -> None:
    text = rule_file("0 0 30 2 *").replace("0 8 * * mon-fri", "0 8 * * fri-mon")
    with pytest.raises(RuleFileError) as exc:
        load_rules_text(text, check_templates=False)
    assert [(e.line, e.field) for e in exc.value.errors] == [
        (4, "rules[0].cron"),
        (7, "rules[1].cron"),
    ]


def test_simulate_refuses_a_never_firing_rule_with_exit_2(tmp_path: Path) -> None:
    rules = tmp_path / "duly.yaml"
    rules.write_text(rule_file("0 0 30 2 *"))
    timeline = tmp_path / "t.jsonl"
    timeline.write_text('{"at": "2026-03-02T00:00:00Z", "recipient": {"id": "m1"}}\n')
    res = CliRunner().invoke(
        main,
        ["simulate", str(rules), str(timeline), "--until", "2026-03-04T00:00:00Z", "--no-render"],
    )
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert f"{rules}:7: rules[1].cron" in res.stderr
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- the oracle

ORACLE_ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "America/Santiago",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]
# (name, low, high, names, first name's number)
SPECS = [
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("dom", 1, 31, (), 0),
    ("month", 1, 12, ("jan feb mar apr may jun jul aug sep oct nov dec").split(), 1),
    ("dow", 0, 7, ("sun mon tue wed thu fri sat").split(), 0),
]
LONGEST = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


@dataclass(frozen=True)
class Expr:
    """An expression and the values of its fields, worked out from how it was built."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]  # as written: 0-7
    dom_star: bool
    dow_star: bool

    def day_ok(self, d: date) -> bool:
        """crontab(5): the month must match; the day must match both day fields when
        either starts with *, and either of them when both are restricted."""
        if d.month not in self.months:
            return False
        sunday_based = d.isoweekday() % 7  # Sunday 0 ... Saturday 6
        dom = d.day in self.doms
        dow = sunday_based in self.dows or (sunday_based == 0 and 7 in self.dows)
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def ever_fires(self) -> bool:
        """Some real date matches: 2000-2027 has every date of the year on every weekday,
        February 29th included, so trying each of its days is enough."""
        d = date(2000, 1, 1)
        while d.year < 2028:
            if self.day_ok(d):
                return True
            d += timedelta(days=1)
        return False


@st.composite
def field_text(draw: st.DrawFn, index: int) -> tuple[str, set[int]]:
    name, low, high, names, base = SPECS[index]

    def number(n: int) -> str:
        if names and draw(st.booleans()) and n - base < len(names) and n >= base:
            word = names[n - base]
            return draw(st.sampled_from([word, word.upper(), word.title()]))
        return str(n)

    terms, values = [], set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["one", "one", "range", "star", "star_step", "range_step",
                                     "one_step"]))  # fmt: skip
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        step = draw(st.integers(1, high - low + 1))
        if kind == "one":
            terms.append(number(a))
            values.add(a)
        elif kind == "range":
            terms.append(f"{number(a)}-{number(b)}")
            values.update(range(a, b + 1))
        elif kind == "star":
            terms.append("*")
            values.update(range(low, high + 1))
        elif kind == "star_step":
            terms.append(f"*/{step}")
            values.update(range(low, high + 1, step))
        elif kind == "range_step":
            terms.append(f"{number(a)}-{number(b)}/{step}")
            values.update(range(a, b + 1, step))
        else:
            terms.append(f"{number(a)}/{step}")
            values.update(range(a, high + 1, step))
    return ",".join(terms), values


MACRO_FIELDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@st.composite
def expressions(draw: st.DrawFn) -> Expr:
    if draw(st.integers(0, 19)) == 0:
        macro = draw(st.sampled_from(sorted(MACRO_FIELDS)))
        m, h, dom, mon, dow = MACRO_FIELDS[macro].split()
        everything = {
            "minute": set(range(60)), "hour": set(range(24)), "dom": set(range(1, 32)),
            "month": set(range(1, 13)), "dow": set(range(8)),
        }  # fmt: skip
        return Expr(
            macro,
            frozenset({0}),
            frozenset(everything["hour"] if h == "*" else {0}),
            frozenset(everything["dom"] if dom == "*" else {1}),
            frozenset(everything["month"] if mon == "*" else {1}),
            frozenset(everything["dow"] if dow == "*" else {0}),
            dom == "*",
            dow == "*",
        )
    fields = [draw(field_text(i)) for i in range(5)]
    # days: usually "*" so that the time fields and zones get the attention
    for i in (2, 3, 4):
        if draw(st.integers(0, 2)) == 0:
            fields[i] = ("*", set(range(SPECS[i][1], SPECS[i][2] + 1)))
    sep = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    texts = [f[0] for f in fields]
    return Expr(
        sep.join(texts),
        frozenset(fields[0][1]),
        frozenset(fields[1][1]),
        frozenset(fields[2][1]),
        frozenset(fields[3][1]),
        frozenset(fields[4][1]),
        texts[2].startswith("*"),
        texts[4].startswith("*"),
    )


@cache
def walls_of_day(zone: str, d: date) -> dict[datetime, datetime]:
    """Every wall-clock minute of local day ``d`` → its instant, by walking UTC minutes.

    A wall time the clock shows maps to the first instant that shows it (a fold takes the
    earlier). A wall time it skips — a gap, where the clock jumps from g-1 to g+L — moves
    forward by the gap's length L: to the instant that shows the wall time plus L.
    """
    tz = ZoneInfo(zone)
    # UTC minutes enough for offsets from -12:00 to +15:00 and a gap of up to a day
    start = datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(hours=15)
    shown: dict[datetime, datetime] = {}
    gaps: list[tuple[datetime, datetime]] = []  # [first skipped, first shown after)
    before = None
    for i in range((15 + 24 + 12 + 25) * 60):
        t = start + i * ONE_MINUTE
        wall = t.astimezone(tz).replace(tzinfo=None)
        shown.setdefault(wall, t)
        if before is not None and wall - before > ONE_MINUTE:
            gaps.append((before + ONE_MINUTE, wall))
        before = wall
    out: dict[datetime, datetime] = {}
    day_start = datetime(d.year, d.month, d.day)
    for k in range(24 * 60):
        wall = day_start + k * ONE_MINUTE
        if wall in shown:
            out[wall] = shown[wall]
            continue
        (skipped_from, shown_again) = next(g for g in gaps if g[0] <= wall < g[1])
        out[wall] = shown[wall + (shown_again - skipped_from)]
    return out


def occurrences_on(expr: Expr, zone: str, d: date) -> list[datetime]:
    if not expr.day_ok(d):
        return []
    walls = walls_of_day(zone, d)
    day_start = datetime(d.year, d.month, d.day)
    return [
        walls[day_start + timedelta(hours=h, minutes=m)]
        for h in sorted(expr.hours)
        for m in sorted(expr.minutes)
    ]


def oracle_next(expr: Expr, zone: str, after: datetime, inclusive: bool = False) -> datetime:
    d = after.astimezone(ZoneInfo(zone)).date() - timedelta(days=2)
    best, found_on = None, None
    while found_on is None or d <= found_on + timedelta(days=1):
        for t in occurrences_on(expr, zone, d):
            if (t > after or (inclusive and t == after)) and (best is None or t < best):
                best = t
        if best is not None and found_on is None:
            found_on = d
        d += timedelta(days=1)
    assert best is not None
    return best


def oracle_prev(expr: Expr, zone: str, at: datetime) -> datetime:
    d = at.astimezone(ZoneInfo(zone)).date() + timedelta(days=2)
    best, found_on = None, None
    while found_on is None or d >= found_on - timedelta(days=1):
        for t in occurrences_on(expr, zone, d):
            if t <= at and (best is None or t > best):
                best = t
        if best is not None and found_on is None:
            found_on = d
        d -= timedelta(days=1)
    assert best is not None
    return best


@cache
def transitions(zone: str) -> list[datetime]:
    """The instants 2001-2039 at which the zone's offset changes (to the minute)."""
    tz = ZoneInfo(zone)
    out = []
    t = datetime(2001, 1, 1, tzinfo=UTC)
    end = datetime(2040, 1, 1, tzinfo=UTC)
    step = timedelta(hours=12)
    while t < end:
        u = t + step
        if t.astimezone(tz).utcoffset() != u.astimezone(tz).utcoffset():
            lo, hi = t, u  # offset(lo) != offset(hi): bisect to the minute
            while hi - lo > ONE_MINUTE:
                mid = lo + (hi - lo) // 2
                mid = mid.replace(second=0, microsecond=0)
                if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        t = u
    return out


@st.composite
def zones_and_starts(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ORACLE_ZONES))
    changes = transitions(zone)
    if changes and draw(st.booleans()):
        near = draw(st.sampled_from(changes))
        start = near + timedelta(minutes=draw(st.integers(-180, 180)))
        if draw(st.booleans()):
            start += timedelta(seconds=draw(st.integers(0, 59)))
        return zone, start
    return zone, draw(
        st.datetimes(datetime(2001, 1, 1), datetime(2039, 12, 31), timezones=st.just(UTC))
    )


EXAMPLES = int(os.environ.get("DULY_CRON_EXAMPLES", "300"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(expr=expressions(), where=zones_and_starts())
@example(  # the Chatham finding
    expr=Expr("*/8 3 * * *", frozenset(range(0, 60, 8)), frozenset({3}),
              frozenset(range(1, 32)), frozenset(range(1, 13)), frozenset(range(8)), True, True),
    where=("Pacific/Chatham", datetime(2026, 9, 26, 13, 0, tzinfo=UTC)),
)  # fmt: skip
@example(  # the Lord Howe finding
    expr=Expr("*/20 * * * *", frozenset({0, 20, 40}), frozenset(range(24)),
              frozenset(range(1, 32)), frozenset(range(1, 13)), frozenset(range(8)), True, True),
    where=("Australia/Lord_Howe", datetime(2021, 10, 2, 15, 25, tzinfo=UTC)),
)  # fmt: skip
def test_cron_next_and_prev_agree_with_the_oracle(expr: Expr, where: tuple[str, datetime]) -> None:
    zone, start = where
    if not expr.ever_fires():
        with pytest.raises(CronError, match="never fires"):
            parse(expr.text)
        return
    tz = ZoneInfo(zone)
    t = start
    for _ in range(3):
        got = timemath.cron_next(expr.text, tz, t)
        assert got == oracle_next(expr, zone, t), (expr.text, zone, t)
        assert timemath.cron_next(expr.text, tz, got, inclusive=True) == got
        assert timemath.cron_prev(expr.text, tz, got) == got
        t = got
    assert timemath.cron_prev(expr.text, tz, start) == oracle_prev(expr, zone, start), (
        expr.text, zone, start,
    )  # fmt: skip
    before = timemath.cron_prev(expr.text, tz, start - ONE_MINUTE)
    assert before == oracle_prev(expr, zone, start - ONE_MINUTE)


def test_the_oracle_zones_have_changes_to_test_near() -> None:
    assert transitions("UTC") == [] and transitions("Asia/Kolkata") == []
    for zone in ORACLE_ZONES[1:]:
        if zone != "Asia/Kolkata":
            assert len(transitions(zone)) >= 40, zone
    assert cron.SEARCH_YEARS == 400


def test_simulate_runs_the_lord_howe_schedule_in_instant_order(tmp_path: Path) -> None:
    """End to end: the engine plans each next occurrence from the last one, so the real
    02:40 after the half-hour gap is sent between the moved 02:30 and 02:50."""
    rules = tmp_path / "duly.yaml"
    rules.write_text(
        "timezone: Australia/Lord_Howe\n"
        "rules:\n"
        "  - name: tick\n"
        '    cron: "*/20 * * * *"\n'
        "    to: [id:m1]\n"
    )
    timeline = tmp_path / "t.jsonl"
    timeline.write_text(
        '{"at": "2021-10-02T15:00:00Z", "recipient": {"id": "m1", "email": "m1@x.test"}}\n'
    )
    res = CliRunner().invoke(
        main,
        ["simulate", str(rules), str(timeline), "--until", "2021-10-02T16:10:00Z", "--no-render"],
    )
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(r["outcome"] == "sent" for r in rows)
    assert [
        datetime.fromisoformat(r["occurrence"]).astimezone(LORD_HOWE).strftime("%H:%M")
        for r in rows
    ] == ["01:40", "02:30", "02:40", "02:50", "03:00"]
