"""The UI's time helpers: relative times, formatting, reading a form's local time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duly.web.core import fmt_time, parse_local_datetime, relative, safe_next, to_local_input

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "now"),
        (44, "now"),
        (45, "in 1 min"),
        (59, "in 1 min"),
        (-50, "1 min ago"),
        (90, "in 2 min"),
        (3 * 3600, "in 3 h"),
        (-2 * 86400 - 5, "2 d ago"),
    ],
)
def test_relative(seconds: int, text: str) -> None:
    assert relative(NOW + timedelta(seconds=seconds), NOW) == text


@given(st.integers(min_value=-400 * 86400, max_value=400 * 86400))
def test_relative_never_fails(seconds: int) -> None:
    out = relative(NOW + timedelta(seconds=seconds), NOW)
    assert out == "now" or out.startswith("in ") or out.endswith(" ago")


def test_fmt_time_in_the_zone_with_its_abbreviation() -> None:
    assert fmt_time(NOW, "Europe/London") == "Sun 29 Mar 2026, 00:30 GMT"
    assert fmt_time(NOW + timedelta(hours=1), "Europe/London") == "Sun 29 Mar 2026, 02:30 BST"
    assert fmt_time(None) == "—"
    assert fmt_time(NOW, "No/Such_Zone").endswith("UTC")


def test_a_form_time_in_a_spring_forward_gap_moves_forward_and_a_fold_takes_the_earlier() -> None:
    london = ZoneInfo("Europe/London")
    # 01:30 does not exist on 2026-03-29 in London: moved forward by the gap (02:30 BST)
    assert parse_local_datetime("2026-03-29T01:30", london) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # 01:30 happens twice on 2026-10-25: the earlier instant (BST)
    assert parse_local_datetime("2026-10-25T01:30", london) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )
    # an explicit offset wins over the zone
    assert parse_local_datetime("2026-07-01T09:00+02:00", london) == datetime(
        2026, 7, 1, 7, 0, tzinfo=UTC
    )
    for bad in ("", "tomorrow", "2026-13-01T00:00"):
        with pytest.raises(ValueError):
            parse_local_datetime(bad, london)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    )
)
def test_an_instant_shown_in_a_form_reads_back_to_the_same_minute(t: datetime) -> None:
    for zone in ("Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"):
        tz = ZoneInfo(zone)
        back = parse_local_datetime(to_local_input(t, tz), tz)
        # a wall time shown from the second pass of a fold reads back as the first: at most
        # the fold's length (1 h; 30 min on Lord Howe) earlier, never later
        assert timedelta(0) <= t.replace(second=0, microsecond=0) - back <= timedelta(hours=1)


def test_safe_next_stays_on_the_site() -> None:
    assert safe_next("/subjects?kind=x") == "/subjects?kind=x"
    for bad in (None, "", "//evil.example", "https://evil.example", "/\\evil", "evil"):
        assert safe_next(bad) == "/"


def test_frame_store_keeps_previews_per_user_for_a_while_and_drops_the_oldest() -> None:
    from duly.web.core import FrameStore

    store = FrameStore(size=2, ttl=60)
    a = store.put(1, "<p>a</p>")
    assert store.get(1, a) == "<p>a</p>"
    assert store.get(2, a) is None  # another user
    assert store.get(1, "guess") is None
    b, c = store.put(1, "b"), store.put(1, "c")
    assert store.get(1, a) is None and store.get(1, b) == "b" and store.get(1, c) == "c"
    gone = FrameStore(ttl=-1)
    assert gone.get(1, gone.put(1, "x")) is None  # expired
