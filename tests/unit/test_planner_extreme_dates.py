"""A date attribute at the edge of the calendar (year 1, year 9999) is one subject's bad
data: planning records a problem or skips the step, it never raises. An exception here
would fail the whole batch the subject came in, and every other subject's plan with it."""

from __future__ import annotations

from datetime import UTC, datetime, time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duly.core.model import (
    AtExpr,
    Calendar,
    ChannelConfig,
    Recipient,
    Repeat,
    Rule,
    RuleFile,
    Step,
    Subject,
    Window,
    parse_duration,
)
from duly.core.planner import plan_subject


def _at(attr: str, offsets: list[tuple[int, str]]) -> AtExpr:
    text = " ".join([attr, *(f"{'+' if s > 0 else '-'} {d}" for s, d in offsets)])
    return AtExpr(attr, tuple((s, parse_duration(d)) for s, d in offsets), text)


OFFSETS = st.lists(
    st.tuples(st.sampled_from([1, -1]), st.sampled_from(["1h", "3d", "2w", "1mo", "1y", "2bd"])),
    max_size=2,
)
REPEATS = st.sampled_from(
    [
        None,
        Repeat(every=parse_duration("1d")),  # open-ended: planned up to a horizon
        Repeat(every=parse_duration("1w"), count=3),
        Repeat(every=parse_duration("1mo"), days=("mon", "fri")),
        Repeat(every=parse_duration("1y"), until=_at("due_at", [(1, "3y")])),
    ]
)
EDGES = st.sampled_from(
    [
        "9999-12-31",
        "9999-12-31T23:59:59",
        "9999-12-31T23:59:59Z",
        "9999-12-25",
        "0001-01-01",
        "0001-01-01T00:00:00Z",
        "0001-01-03",
    ]
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    offsets=OFFSETS,
    repeat=REPEATS,
    time_of_day=st.sampled_from([None, time(9, 0), time(23, 30)]),
    window=st.sampled_from(
        [None, Window(days=("mon", "tue", "wed", "thu", "fri"), calendar="biz")]
    ),
    expire=st.sampled_from([None, parse_duration("2d"), parse_duration("1000y")]),
    zone=st.sampled_from(["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/London"]),
    due=EDGES,
    now=st.sampled_from([datetime(2026, 12, 5, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)]),
)
def test_a_date_at_the_edge_of_the_calendar_never_raises(
    offsets, repeat, time_of_day, window, expire, zone, due, now
) -> None:
    step = Step(name="s", at=_at("due_at", offsets), time_of_day=time_of_day, repeat=repeat)
    rule = Rule(
        name="r",
        subject="job",
        to=("owner",),
        steps=(step,),
        window=window,
        expire=expire,
    )
    rf = RuleFile(
        path="t",
        timezone=zone,
        rules=(rule,),
        calendars={"biz": Calendar("biz", closed=("9999-12-31", "0001-01-01"))},
        channels={"email": ChannelConfig("email", "outbox")},
    )
    s = Subject("job", "k", {"due_at": due}, {"owner": ("u1",)})
    people = {"u1": Recipient("u1", email="u1@example.test", timezone=zone)}
    plan = plan_subject(rf, s, people, now)  # must not raise
    for d in plan.desired:
        assert d.due_at.tzinfo is not None
