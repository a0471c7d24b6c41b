"""Planner and reconciliation: pure functions, checked with hypothesis (spec: Planning)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duly.core.model import (
    AtExpr,
    Calendar,
    ChannelConfig,
    Reason,
    Recipient,
    Repeat,
    Rule,
    RuleFile,
    Step,
    Subject,
    Trigger,
    Window,
    parse_duration,
)
from duly.core.planner import Identity, change_fires, plan_subject, plan_trigger, reconcile
from duly.testing import MemoryPlan

ZONES = [
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "America/Santiago",
    "America/St_Johns",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Africa/Casablanca",
    "Asia/Tehran",
]


def at(text: str) -> AtExpr:
    attr, *rest = text.split()
    offsets = []
    for sign, dur in zip(rest[::2], rest[1::2], strict=True):
        offsets.append((1 if sign == "+" else -1, parse_duration(dur)))
    return AtExpr(attr, tuple(offsets), text)


def ladder(**rule_kw: object) -> RuleFile:
    steps = (
        Step(name="due-soon", at=at("due_at - 3d"), time_of_day=time(9, 0)),
        Step(name="overdue-1", at=at("due_at + 1d")),
        Step(
            name="final",
            at=at("due_at + 14d"),
            time_of_day=time(12, 0),
            repeat=Repeat(every=parse_duration("1d"), days=("mon", "wed", "fri"), count=6),
        ),
    )
    rule = Rule(
        name="invoice-reminders",
        subject="invoice",
        condition="status == 'sent'",
        to=("customer",),
        steps=steps,
        **rule_kw,  # type: ignore[arg-type]
    )
    return RuleFile(
        path="test",
        timezone="Europe/London",
        rules=(rule,),
        channels={"email": ChannelConfig("email", "outbox")},
    )


def invoice(
    due: str, status: str = "sent", customer: str | tuple[str, ...] = "c1", rev: int = 1
) -> Subject:
    ids = (customer,) if isinstance(customer, str) else customer
    return Subject(
        "invoice", "INV-1", {"status": status, "due_at": due}, {"customer": ids}, revision=rev
    )


def people(tz: str = "Europe/London") -> dict[str, Recipient]:
    return {
        "c1": Recipient("c1", email="c1@example.test", timezone=tz),
        "c2": Recipient("c2", email="c2@example.test", timezone=tz),
    }


def replan(rf: RuleFile, mem: MemoryPlan, subject: Subject, recipients: dict, now: datetime):
    plan = plan_subject(rf, subject, recipients, now)
    actions = reconcile(plan, mem.existing(), now, rule_names={r.name for r in rf.rules})
    mem.apply(actions)
    return actions


instants = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2039, 12, 31), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-60 * 86400, max_value=60 * 86400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(now=instants, due_offset=offsets, zone=st.sampled_from(ZONES))
def test_planning_twice_is_a_no_op(now: datetime, due_offset: int, zone: str) -> None:
    rf = ladder()
    due = (now + timedelta(seconds=due_offset)).isoformat()
    mem = MemoryPlan()
    first = replan(rf, mem, invoice(due), people(zone), now)
    assert first, "the first plan creates rows"
    again = replan(rf, mem, invoice(due), people(zone), now)
    assert again == []
    later = now + timedelta(hours=5)
    assert replan(rf, mem, invoice(due), people(zone), later) == []


@settings(max_examples=150, deadline=None)
@given(now=instants, due_offset=offsets, move=offsets, zone=st.sampled_from(ZONES))
def test_no_new_or_moved_delivery_is_planned_in_the_past(
    now: datetime, due_offset: int, move: int, zone: str
) -> None:
    rf = ladder()
    mem = MemoryPlan()
    due = now + timedelta(seconds=due_offset)
    later = now + timedelta(days=2)
    rounds = [
        (now, replan(rf, mem, invoice(due.isoformat()), people(zone), now)),
        (
            later,
            replan(
                rf, mem, invoice((due + timedelta(seconds=move)).isoformat()), people(zone), later
            ),
        ),
    ]
    for when, actions in rounds:
        for a in actions:
            becomes_pending = a.kind == "move" or (
                a.kind in ("create", "replan") and a.state == "pending"
            )
            if becomes_pending:
                assert a.desired is not None and a.desired.planned_at >= when
            if a.kind == "create" and a.desired.planned_at < when:  # type: ignore[union-attr]
                assert a.state == "skipped" and a.reason == Reason.past


def test_a_pending_overdue_delivery_whose_time_did_not_change_is_left_alone() -> None:
    rf = ladder()
    mem = MemoryPlan()
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    replan(rf, mem, invoice("2026-03-15"), people(), now)
    # the engine was down: days later, the same subject is upserted again, unchanged
    later = datetime(2026, 3, 13, 8, tzinfo=UTC)  # due-soon (12 March 09:00) is overdue now
    assert replan(rf, mem, invoice("2026-03-15", rev=2), people(), later) == []
    overdue = [i for i, due in mem.pending().items() if due < later]
    assert [i.step for i in overdue] == ["due-soon"]


def test_a_step_already_past_when_first_planned_is_skipped_past_once() -> None:
    rf = ladder()
    mem = MemoryPlan()
    now = datetime(2026, 3, 14, 8, tzinfo=UTC)
    actions = replan(rf, mem, invoice("2026-03-15"), people(), now)
    skipped = [(a.desired.identity.step, a.reason) for a in actions if a.state == "skipped"]  # type: ignore[union-attr]
    assert skipped == [("due-soon", Reason.past)]
    assert replan(rf, mem, invoice("2026-03-15", rev=2), people(), now) == []


def test_deliveries_move_with_their_date_and_a_cancelled_future_identity_returns() -> None:
    rf = ladder()
    mem = MemoryPlan()
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    replan(rf, mem, invoice("2026-03-15"), people(), now)
    before = mem.pending()
    actions = replan(rf, mem, invoice("2026-03-22", rev=2), people(), now)
    assert {a.kind for a in actions} == {"move"}
    after = mem.pending()
    for ident, due in before.items():
        if ident.step != "final":
            assert after[ident] - due == timedelta(days=7)
    # paid → every pending row cancelled (condition_false); unpaid again → planned again
    actions = replan(rf, mem, invoice("2026-03-22", status="paid", rev=3), people(), now)
    assert {(a.kind, a.reason) for a in actions} == {("cancel", Reason.condition_false)}
    assert mem.pending() == {}
    actions = replan(rf, mem, invoice("2026-03-22", rev=4), people(), now)
    assert {a.kind for a in actions} == {"replan"}
    assert mem.pending() == after


def test_sent_deliveries_are_never_touched_again() -> None:
    rf = ladder()
    mem = MemoryPlan()
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    replan(rf, mem, invoice("2026-03-15"), people(), now)
    ident = next(i for i in mem.pending() if i.step == "due-soon")
    mem.mark(ident, "sent")
    actions = replan(rf, mem, invoice("2026-04-15", rev=2), people(), now)
    assert all(a.existing is None or a.existing.identity != ident for a in actions)
    assert mem.rows[ident].state == "sent"


def test_a_role_given_to_someone_else_cancels_with_recipient_removed() -> None:
    rf = ladder()
    mem = MemoryPlan()
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    replan(rf, mem, invoice("2026-03-15", customer="c1"), people(), now)
    actions = replan(rf, mem, invoice("2026-03-15", customer="c2", rev=2), people(), now)
    cancelled = {a.existing.identity.recipient for a in actions if a.kind == "cancel"}  # type: ignore[union-attr]
    created = {a.desired.identity.recipient for a in actions if a.kind == "create"}  # type: ignore[union-attr]
    assert cancelled == {"c1"} and created == {"c2"}
    assert {a.reason for a in actions if a.kind == "cancel"} == {Reason.recipient_removed}


def test_missing_date_is_no_date_and_a_bad_date_is_a_problem_not_a_crash() -> None:
    rf = ladder()
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    s = Subject("invoice", "X", {"status": "sent"}, {"customer": ("c1",)})
    plan = plan_subject(rf, s, people(), now)
    assert {d.skip_reason for d in plan.desired} == {Reason.no_date}
    bad = Subject(
        "invoice", "Y", {"status": "sent", "due_at": "next tuesday"}, {"customer": ("c1",)}
    )
    plan = plan_subject(rf, bad, people(), now)
    assert plan.problems and plan.problems[0].field == "due_at"
    assert "next tuesday" in plan.problems[0].message
    assert {d.skip_reason for d in plan.desired} == {Reason.bad_data}


def test_role_absent_from_subject_plans_nothing_and_is_noted() -> None:
    rf = ladder()
    s = Subject("invoice", "X", {"status": "sent", "due_at": "2026-05-01"}, {})
    plan = plan_subject(rf, s, people(), datetime(2026, 3, 1, tzinfo=UTC))
    assert plan.desired == []
    assert any("customer" in n for n in plan.notes)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(min_value=datetime(2001, 1, 1).date(), max_value=datetime(2039, 12, 31).date()),
    hh=st.integers(0, 23),
    mm=st.sampled_from([0, 15, 30, 45]),
)
def test_time_of_day_step_lands_at_that_local_time_or_the_gap_rule(
    zone: str, day, hh: int, mm: int
) -> None:
    tz = ZoneInfo(zone)
    rule = Rule(
        name="r",
        subject="appointment",
        to=("client",),
        steps=(Step(name="s", at=at("starts_at - 1d"), time_of_day=time(hh, mm)),),
    )
    rf = RuleFile(path="t", rules=(rule,))
    s = Subject(
        "appointment", "A", {"starts_at": (day + timedelta(days=1)).isoformat()}, {"client": ("p",)}
    )
    now = datetime(2000, 1, 1, tzinfo=UTC)
    plan = plan_subject(rf, s, {"p": Recipient("p", email="p@x.test", timezone=zone)}, now)
    (d,) = plan.desired
    local = d.planned_at.astimezone(tz)
    wanted = datetime(day.year, day.month, day.day, hh, mm)
    if local.replace(tzinfo=None) != wanted:
        # only allowed in a spring-forward gap: moved forward by the gap's length
        before = datetime.fromtimestamp(d.planned_at.timestamp() - 6 * 3600, tz)
        gap = before.utcoffset() - local.utcoffset()  # type: ignore[operator]
        gap = -gap
        assert gap > timedelta(0), f"{wanted} in {zone} landed at {local}"
        assert local.replace(tzinfo=None) == wanted + gap
    else:
        # in a fold, the earlier instant
        other = datetime(day.year, day.month, day.day, hh, mm, fold=1, tzinfo=tz)
        assert d.planned_at <= other.astimezone(UTC)


@pytest.mark.parametrize(
    ("zone", "due", "expected_utc"),
    [
        # due_at - 1d keeps the wall-clock time across the spring-forward change
        ("Europe/London", "2026-03-30T09:00:00", "2026-03-29T08:00:00+00:00"),
        ("America/New_York", "2026-11-02T09:00:00", "2026-11-01T14:00:00+00:00"),
    ],
)
def test_calendar_day_offsets_keep_local_time_across_dst(
    zone: str, due: str, expected_utc: str
) -> None:
    rule = Rule(name="r", subject="x", to=("p",), steps=(Step(name="s", at=at("due_at - 1d")),))
    rf = RuleFile(path="t", rules=(rule,))
    s = Subject("x", "1", {"due_at": due}, {"p": ("p",)})
    plan = plan_subject(
        rf, s, {"p": Recipient("p", timezone=zone)}, datetime(2020, 1, 1, tzinfo=UTC)
    )
    assert plan.desired[0].planned_at == datetime.fromisoformat(expected_utc)


def test_window_moves_due_time_and_a_before_anchor_step_is_skipped_past_its_deadline() -> None:
    cal = Calendar("uk", days=("mon", "tue", "wed", "thu", "fri"))
    win = Window(start=time(9), end=time(17), calendar="uk")
    rule = Rule(
        name="r",
        subject="appt",
        to=("p",),
        window=win,
        steps=(
            Step(name="early", at=at("starts_at - 2d")),
            Step(name="late", at=at("starts_at - 2h")),
        ),
    )
    rf = RuleFile(path="t", timezone="Europe/London", calendars={"uk": cal}, rules=(rule,))
    # Monday 08:00 appointment: "early" Saturday 08:00 → Monday 09:00 is past the anchor
    s = Subject("appt", "1", {"starts_at": "2026-06-08T08:00:00+01:00"}, {"p": ("p",)})
    plan = plan_subject(
        rf, s, {"p": Recipient("p", timezone="Europe/London")}, datetime(2026, 6, 1, tzinfo=UTC)
    )
    by_step = {d.identity.step: d for d in plan.desired}
    assert by_step["early"].skip_reason == Reason.window_missed
    assert by_step["late"].skip_reason == Reason.window_missed
    # Wednesday 15:00: early (Monday 15:00) stays, late (13:00) stays inside the window
    s = Subject("appt", "1", {"starts_at": "2026-06-10T15:00:00+01:00"}, {"p": ("p",)})
    plan = plan_subject(
        rf, s, {"p": Recipient("p", timezone="Europe/London")}, datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert all(d.skip_reason is None and d.due_at == d.planned_at for d in plan.desired)
    # Wednesday 08:30: late (06:30) moves to 09:00 — still before the anchor? No: 09:00 > 08:30
    s = Subject("appt", "1", {"starts_at": "2026-06-10T10:30:00+01:00"}, {"p": ("p",)})
    plan = plan_subject(
        rf, s, {"p": Recipient("p", timezone="Europe/London")}, datetime(2026, 6, 1, tzinfo=UTC)
    )
    late = {d.identity.step: d for d in plan.desired}["late"]
    assert late.planned_at == datetime(2026, 6, 10, 7, 30, tzinfo=UTC)
    assert late.due_at == datetime(2026, 6, 10, 8, 0, tzinfo=UTC)
    assert late.skip_reason is None


def test_repeat_is_planned_ahead_on_listed_days_up_to_count() -> None:
    rf = ladder()
    plan = plan_subject(rf, invoice("2026-03-02"), people(), datetime(2026, 2, 1, tzinfo=UTC))
    finals = sorted(d.planned_at for d in plan.desired if d.identity.step == "final")
    assert len(finals) == 6
    assert [t.astimezone(ZoneInfo("Europe/London")).strftime("%a %H:%M") for t in finals] == [
        "Mon 12:00",
        "Wed 12:00",
        "Fri 12:00",
        "Mon 12:00",
        "Wed 12:00",
        "Fri 12:00",
    ]
    occ = sorted(d.identity.occurrence for d in plan.desired if d.identity.step == "final")
    assert occ == [0, 1, 2, 3, 4, 5]


def test_set_step_plans_one_row_without_recipient_or_channel() -> None:
    rule = Rule(
        name="docs",
        subject="document",
        to=("contractor",),
        steps=(
            Step(
                name="expiring",
                at=at("expires_at - 30d"),
                set={"status": "EXPIRING_SOON"},
                template="doc-expiring",
            ),
            Step(
                name="expired", at=at("expires_at"), set={"status": "EXPIRED"}, sends_message=False
            ),
        ),
    )
    rf = RuleFile(path="t", rules=(rule,))
    s = Subject("document", "D1", {"expires_at": "2026-09-01"}, {"contractor": ("k",)})
    plan = plan_subject(rf, s, {}, datetime(2026, 1, 1, tzinfo=UTC))
    idents = sorted(
        (d.identity.step, d.identity.recipient or "", d.changes is not None) for d in plan.desired
    )
    assert idents == [("expired", "", True), ("expiring", "", True), ("expiring", "k", False)]


def test_change_trigger_counts_absent_as_null() -> None:
    rule = Rule(name="paid", subject="order", on=Trigger(change="status", to="paid", has_to=True))
    assert change_fires(rule, None, {"status": "paid"})
    assert change_fires(rule, {"status": "open"}, {"status": "paid"})
    assert not change_fires(rule, {"status": "paid"}, {"status": "paid"})
    assert not change_fires(rule, {"status": "open"}, {"status": "void"})
    from_open = Rule(
        name="x",
        subject="order",
        on=Trigger(change="status", to="paid", has_to=True, from_="open", has_from=True),
    )
    assert change_fires(from_open, {"status": "open"}, {"status": "paid"})
    assert not change_fires(from_open, None, {"status": "paid"})


def test_event_trigger_plans_once_per_occurrence_with_delay() -> None:
    rule = Rule(
        name="r",
        subject="order",
        on=Trigger(event="order.paid"),
        to=("buyer",),
        delay=parse_duration("10m"),
    )
    rf = RuleFile(path="t", rules=(rule,))
    s = Subject("order", "O1", {}, {"buyer": ("b",)})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    plan = plan_trigger(rf, rule, s, {}, "evt-1", now)
    (d,) = plan.desired
    assert d.identity == Identity("r", None, "evt-1", "order/O1", "b", "email")
    assert d.planned_at == now + timedelta(minutes=10)
    mem = MemoryPlan()
    mem.apply(reconcile(plan, [], now))
    assert reconcile(plan, mem.existing(), now) == []


def test_identity_round_trips_through_its_stored_form() -> None:
    for ident in (
        Identity("r", None, 0, "a/b", "c", "email"),
        Identity("r", "s", "evt-1", None, None, None),
        Identity("r", "s", "2026-01-01T09:00:00Z", "k/1", "x", "sms"),
    ):
        assert Identity.from_db(*ident.db_key()) == ident


def test_a_steps_own_channels_win_over_the_rules_fallback() -> None:
    rule = Rule(
        name="r",
        subject="x",
        to=("p",),
        channels=(),
        fallback=("sms", "email"),
        steps=(
            Step(name="a", at=at("due_at")),
            Step(name="b", at=at("due_at"), channels=("inbox", "email")),
        ),
    )
    rf = RuleFile(path="t", rules=(rule,))
    s = Subject("x", "1", {"due_at": "2030-01-01"}, {"p": ("p",)})
    plan = plan_subject(rf, s, {}, datetime(2026, 1, 1, tzinfo=UTC))
    got = sorted((d.identity.step, d.identity.channel) for d in plan.desired)
    assert got == [("a", "sms"), ("b", "email"), ("b", "inbox")]


def test_a_due_time_moved_by_the_dispatcher_is_kept_but_a_hold_moves_rows_both_ways() -> None:
    from duly.core.planner import Existing

    rf = ladder()
    now = datetime(2026, 3, 12, 9, 1, tzinfo=UTC)
    plan = plan_subject(rf, invoice("2026-03-15"), people(), datetime(2026, 3, 1, tzinfo=UTC))
    due_soon = next(d for d in plan.desired if d.identity.step == "due-soon")
    # waiting for a retry: planned 12 March 09:00, due again 09:02
    retrying = Existing(
        1,
        due_soon.identity,
        "pending",
        None,
        due_soon.planned_at,
        due_soon.planned_at + timedelta(minutes=2),
    )
    again = plan_subject(rf, invoice("2026-03-15", rev=2), people(), now)
    acts = reconcile(again, [retrying], now)
    assert [a for a in acts if a.existing is not None and a.existing.id == 1] == []
    # a hold until 20 March moves the pending overdue-1 (16 March) to the hold's end …
    mem = MemoryPlan()
    replan(rf, mem, invoice("2026-03-15"), people(), datetime(2026, 3, 1, tzinfo=UTC))
    hold = datetime(2026, 3, 20, 12, tzinfo=UTC)
    s = invoice("2026-03-15", rev=2)
    s = Subject(s.kind, s.key, s.attributes, s.recipients, 2, hold_until=hold)
    replan(rf, mem, s, people(), datetime(2026, 3, 13, tzinfo=UTC))
    ov = next(e for i, e in mem.rows.items() if i.step == "overdue-1")
    assert ov.state == "pending" and ov.due_at == hold
    # … and clearing it puts it back at its planned time
    replan(rf, mem, invoice("2026-03-15", rev=3), people(), datetime(2026, 3, 14, tzinfo=UTC))
    ov = next(e for i, e in mem.rows.items() if i.step == "overdue-1")
    assert ov.due_at == ov.planned_at == datetime(2026, 3, 16, 0, tzinfo=UTC)
