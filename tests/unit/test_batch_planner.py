"""The planner's per-rule precomputation (duly.core.planner ``_StepPlan``, the restricted
condition context, the anchor read once per zone) plans exactly what the straightforward
planner it replaced did: the earlier ``plan_subject`` is kept below as the reference and
both are run on the same generated rule files, subjects, recipients and clocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duly.core.model import (
    AtExpr,
    Calendar,
    Category,
    Reason,
    Recipient,
    Repeat,
    Rule,
    RuleFile,
    Step,
    Subject,
    Window,
    parse_duration,
)
from duly.core.planner import (
    REPEAT_HORIZON,
    Desired,
    Identity,
    Plan,
    Problem,
    _expr,
    base_priority,
    effective,
    message_channels,
    plan_subject,
    recipient_dict,
    rule_zone,
    subject_dict,
    window_calendar,
)
from duly.core.rules import timemath
from duly.core.rules.expressions import build_context, condition_holds

# --------------------------------------------------------------------------- the reference
# duly.core.planner as it was before the precomputation (commit e27ca31), renamed ref_*.


def ref_resolve_to(
    rf: RuleFile, targets: Sequence[str], subject: Subject | None, notes: list[str] | None = None
) -> list[str]:
    """Recipient ids for ``to`` entries: roles on the subject, ``group:NAME``, ``id:X``.
    A role absent from the subject addresses nobody (noted)."""
    out: list[str] = []
    for t in targets:
        if t.startswith("group:"):
            out.extend(rf.groups.get(t[6:], ()))
        elif t.startswith("id:"):
            out.append(t[3:])
        elif subject is not None:
            ids = subject.recipients.get(t)
            if ids:
                out.extend(ids)
            elif notes is not None:
                notes.append(f"role {t!r} is absent from {subject.ref}")
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def ref_plan_subject(
    rf: RuleFile,
    subject: Subject,
    recipients: Mapping[str, Recipient],
    now: datetime,
) -> Plan:
    """Every delivery the subject's date-relative rules want now (spec: Planning)."""
    plan = Plan()
    cache = _RefConditions(subject, now)
    for rule in rf.rules:
        if rule.kind != "steps" or rule.subject != subject.kind:
            continue
        plan.scope.add(rule.name)
        for step in rule.steps:
            _ref_plan_step(rf, rule, step, subject, recipients, now, plan, cache)
    if subject.hold_until is not None and subject.hold_until > now:
        plan.desired = ref_apply_hold(plan.desired, subject.hold_until)
    return plan


def ref_apply_hold(desired: list[Desired], until: datetime) -> list[Desired]:
    """spec: Hold. Reminder and promotional messages falling due before ``until`` are skipped
    (``held``), except the latest of each rule, recipient and channel, which moves to the
    end of the hold: chasing resumes with one message, never a burst. Transactional
    messages and ``set`` actions are not held."""
    latest: dict[tuple[str, str | None, str | None], Desired] = {}
    for d in desired:
        if _ref_holdable(d, until):
            k = (d.identity.rule, d.identity.recipient, d.identity.channel)
            cur = latest.get(k)
            if cur is None or (d.due_at, d.identity.occurrence) > (
                cur.due_at,
                cur.identity.occurrence,
            ):
                latest[k] = d
    keep = {d.identity for d in latest.values()}
    out = []
    for d in desired:
        if not _ref_holdable(d, until):
            out.append(d)
        elif d.identity in keep:
            out.append(d._replace(due_at=until))
        else:
            out.append(d._replace(skip_reason=Reason.held))
    return out


def _ref_holdable(d: Desired, until: datetime) -> bool:
    return (
        d.skip_reason is None
        and d.identity.recipient is not None
        and d.category != "transactional"
        and d.due_at < until
    )


class _RefConditions:
    """Evaluates ``if`` expressions for one subject, building each recipient's context once
    (a subject's steps share it) and remembering each expression's result."""

    def __init__(self, subject: Subject, now: datetime) -> None:
        self.subject, self.now = subject, now
        self._ctx: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._results: dict[tuple[str, str | None, str, bool], tuple[bool, str | None]] = {}

    def holds(
        self, rule: Rule, step: Step | None, recipient: Recipient | None, rid: str | None, tz: str
    ) -> tuple[bool, str | None]:
        ack = rule.name in self.subject.acknowledged
        for text in (rule.condition, step.condition if step is not None else None):
            if text is None:
                continue
            key = (text, rid, tz, ack)
            res = self._results.get(key)
            if res is None:
                ctx = self._ctx.get((rid, tz))
                if ctx is None:
                    ctx = self._ctx[(rid, tz)] = build_context(
                        self.subject.attributes,
                        now=self.now,
                        tz=timemath.zone(tz),
                        subject=subject_dict(self.subject),
                        recipient=recipient_dict(recipient, rid),
                    )
                ctx["acknowledged"] = ack
                res = self._results[key] = condition_holds(_expr(text), ctx)
            if not res[0]:
                return res
        return True, None


def _ref_targets(
    rf: RuleFile, rule: Rule, step: Step | None, subject: Subject, plan: Plan
) -> list[str | None]:
    if not (step.sends_message if step is not None else rule.sends_message):
        return []
    return list(ref_resolve_to(rf, effective(step, rule, "to") or (), subject, plan.notes))


def _ref_plan_step(
    rf: RuleFile,
    rule: Rule,
    step: Step,
    subject: Subject,
    recipients: Mapping[str, Recipient],
    now: datetime,
    plan: Plan,
    conditions: _RefConditions,
) -> None:
    key = (rule.name, step.name)
    category = str(effective(step, rule, "category") or Category.reminder)
    priority = base_priority(rule, category)
    window = effective(step, rule, "window")
    expire = effective(step, rule, "expire")
    rids = _ref_targets(rf, rule, step, subject, plan)
    plan.addressed[key] = {r for r in rids if r}
    if step.at is None:
        return
    channels: tuple[str | None, ...] = message_channels(step, rule)
    chain = effective(step, rule, "fallback") if not step.channels else None
    if chain:
        plan.fallback[key] = tuple(chain)
    # each recipient on each channel; plus one row without recipient for a `set` action
    targets: list[tuple[str | None, tuple[str | None, ...]]] = [(r, channels) for r in rids]
    if step.set is not None or step.webhook is not None:
        targets.append((None, (None,)))
    cal = window_calendar(rf, window)
    if step.repeat is not None and rule.name in subject.acknowledged:
        # spec: once acknowledged, repeats of the rule stop (pending ones are cancelled)
        plan.unwanted[key] = Reason.acknowledged
        return
    # the step's messages go out no later than its `set` acts: when the action changes what
    # the rule's `if` reads, the step's own messages (planned in each recipient's zone) are
    # not cancelled by it
    latest: dict[int, datetime] = {}
    for rid, chans in targets:
        recipient = recipients.get(rid) if rid else None
        tzname = rule_zone(rf, rule, recipient)
        try:
            tz = timemath.zone(tzname)
        except ValueError as exc:
            plan.problems.append(Problem(subject.ref, rule.name, "timezone", str(exc)))
            continue
        ok, err = conditions.holds(rule, step, recipient, rid, tzname)
        if not ok:
            plan.unwanted[key] = Reason.condition_false
            if err:
                plan.problems.append(Problem(subject.ref, rule.name, "if", err))
            continue
        try:
            first = timemath.eval_at(step.at, subject.attributes, tz, cal)
            anchor = timemath.anchor_of(step.at, subject.attributes, tz)
        except ValueError as exc:
            plan.problems.append(Problem(subject.ref, rule.name, step.at.attribute, str(exc)))
            first = anchor = None
            skip: Reason | None = Reason.bad_data
        else:
            skip = Reason.no_date if first is None else None
        if first is None:
            for channel in chans:
                ident = Identity(rule.name, step.name, 0, subject.ref, rid, channel)
                plan.desired.append(
                    Desired(ident, now, now, None, category, priority, skip_reason=skip)
                )
            continue
        if step.time_of_day is not None:
            first = timemath.at_time_of_day(first, step.time_of_day, tz)
        changes = dict(step.set) if (rid is None and step.set) else None
        for index, planned in _ref_occurrences(step, subject, first, tz, cal, now):
            deadline = anchor if (step.at.is_before_anchor and anchor is not None) else None
            exp = _ref_expiry(planned, expire, tz, cal)
            if exp is not None:
                deadline = exp if deadline is None else min(deadline, exp)
            due = planned
            skip = None
            if window is not None and rid is not None:
                try:
                    due = timemath.next_window_opening(planned, window, tz, rf.calendars)
                except ValueError as exc:
                    plan.problems.append(Problem(subject.ref, rule.name, "window", str(exc)))
                    skip = Reason.window_missed
                if deadline is not None and due > deadline:
                    skip = Reason.window_missed
            if rid is not None:
                latest[index] = max(latest.get(index, due), due)
            else:
                planned = due = max(planned, latest.get(index, planned))
            for channel in chans:
                ident = Identity(rule.name, step.name, index, subject.ref, rid, channel)
                plan.desired.append(
                    Desired(
                        ident,
                        planned,
                        due,
                        deadline,
                        category,
                        # after the step's messages when due at the same instant
                        priority - 1 if rid is None else priority,
                        skip,
                        changes,
                    )
                )


def _ref_expiry(planned: datetime, expire: Any, tz: Any, cal: Calendar | None) -> datetime | None:
    """``planned + expire``; None without ``expire`` or when that is past the year 9999 (a
    rule file's durations are at most 1000 years, but a date attribute may be late)."""
    if expire is None:
        return None
    try:
        return timemath.add_duration(planned, expire, 1, tz, cal)
    except OverflowError:
        return None


def _ref_occurrences(
    step: Step,
    subject: Subject,
    first: datetime,
    tz: Any,
    cal: Calendar | None,
    now: datetime,
) -> list[tuple[int, datetime]]:
    rep = step.repeat
    if rep is None:
        return [(0, first)]
    until = None
    if rep.until is not None:
        until = timemath.eval_at(rep.until, subject.attributes, tz, cal)
    horizon = max(now, first) + REPEAT_HORIZON
    return timemath.repeat_times(
        first,
        rep.every,
        tz,
        days=rep.days,
        count=rep.count,
        until=until,
        horizon=horizon
        if (rep.count is None and until is None)
        else datetime.max.replace(tzinfo=UTC),
        calendar=cal,
    )


# --------------------------------------------------------------------------- generated cases

ZONES = [None, "UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Tokyo"]
BAD_ZONE = "Mars/Olympus"


def _at(text: str) -> AtExpr:
    attr, *rest = text.split()
    offsets = [
        (1 if sign == "+" else -1, parse_duration(dur))
        for sign, dur in zip(rest[::2], rest[1::2], strict=True)
    ]
    return AtExpr(attr, tuple(offsets), text)


ATS = [
    None,
    "due_at",
    "due_at - 3d",
    "due_at + 1h",
    "due_at + 2bd",
    "due_at - 1mo + 2h",
    "due_at + 1d + 1d",
    "start_at + 1d",
    "due_at + 1000y",
]
CONDITIONS = [
    None,
    "status == 'open'",
    "due_at < now + 30d",
    "subject.key != 'k0'",
    "recipient.timezone == 'Europe/London'",
    "not acknowledged",
    "missing_attr > 3",
    "amount > 10",
    "status == 'open' and due_at > '2026-01-01'",
    "subject.attributes.due_at > now",
    "event == null",
]
TARGETS = [("owner",), ("owner", "watcher"), ("watcher", "owner", "owner"), ("group:team",),
           ("id:x1", "owner"), ("nobody",), ()]  # fmt: skip
WINDOWS = [
    None,
    Window(start=time(9), end=time(17)),
    Window(start=time(22), end=time(6), days=("mon", "tue", "wed")),
    Window(start=time(9), end=time(17), calendar="biz"),
    Window(start=time(9), end=time(17), calendar="absent"),
]
REPEATS = [
    None,
    Repeat(every=parse_duration("1d"), count=3),
    Repeat(every=parse_duration("1w"), days=("mon", "wed")),
    Repeat(every=parse_duration("12h"), until=_at("due_at + 2d")),
    Repeat(every=parse_duration("1mo"), count=2),
]
DURATIONS = [None, parse_duration("2h"), parse_duration("1d"), parse_duration("3bd")]


@st.composite
def steps(draw: st.DrawFn, i: int) -> Step:
    text = draw(st.sampled_from(ATS))
    return Step(
        name=f"s{i}",
        at=None if text is None else _at(text),
        time_of_day=draw(st.sampled_from([None, time(9), time(1, 30), time(2, 15)])),
        repeat=draw(st.sampled_from(REPEATS)),
        condition=draw(st.sampled_from(CONDITIONS)),
        to=draw(st.sampled_from([None, *TARGETS])),
        channels=draw(st.sampled_from([None, ("email",), ("sms", "email")])),
        fallback=draw(st.sampled_from([None, ("sms", "email")])),
        category=draw(st.sampled_from([None, *Category])),
        window=draw(st.sampled_from(WINDOWS)),
        expire=draw(st.sampled_from(DURATIONS)),
        set=draw(st.sampled_from([None, {"status": "done"}])),
        sends_message=draw(st.booleans()),
    )


@st.composite
def rule_files(draw: st.DrawFn) -> RuleFile:
    rules = []
    for r in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 3))
        rules.append(
            Rule(
                name=f"r{r}",
                subject=draw(st.sampled_from(["job", "job", "other", None])),
                condition=draw(st.sampled_from(CONDITIONS)),
                to=draw(st.sampled_from(TARGETS)),
                channels=draw(st.sampled_from([("email",), ("email", "sms")])),
                fallback=draw(st.sampled_from([None, ("email", "sms")])),
                category=draw(st.sampled_from(list(Category))),
                window=draw(st.sampled_from(WINDOWS)),
                steps=tuple(draw(steps(i)) for i in range(n)),
                timezone=draw(st.sampled_from([None, "America/New_York", BAD_ZONE])),
                expire=draw(st.sampled_from(DURATIONS)),
                priority=draw(st.sampled_from([None, 7])),
            )
        )
    return RuleFile(
        path="t",
        timezone=draw(st.sampled_from(["UTC", "Europe/London", "Australia/Lord_Howe"])),
        calendars={"biz": Calendar("biz", closed=("2026-12-25", "2027-01-01"))},
        groups={"team": ("u1", "u3")},
        rules=tuple(rules),
    )


DATES = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
        lambda d: d.replace(microsecond=0).isoformat()
    ),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
        lambda d: d.replace(microsecond=0).isoformat() + "Z"
    ),
    st.dates(min_value=date(2025, 1, 1), max_value=date(2028, 12, 31)).map(str),
    st.sampled_from(["garbage", "9999-12-31", "2026-03-29T01:30", "2026-10-25T01:30", 12]),
)
IDS = st.sampled_from(["u1", "u2", "u3", "x1", "ghost"])


@st.composite
def subjects(draw: st.DrawFn, rule_names: Sequence[str]) -> Subject:
    attrs: dict[str, Any] = {}
    for name, strat in (
        ("status", st.sampled_from(["open", "closed"])),
        ("due_at", DATES),
        ("start_at", DATES),
        ("amount", st.sampled_from([5, 50, "x"])),
    ):
        if draw(st.booleans()) or name == "due_at":
            attrs[name] = draw(strat)
    roles = {}
    for role in ("owner", "watcher"):
        ids = draw(st.lists(IDS, max_size=2))
        if ids or draw(st.booleans()):
            roles[role] = tuple(ids)
    return Subject(
        kind="job",
        key=draw(st.sampled_from(["k0", "k1"])),
        attributes=attrs,
        recipients=roles,
        revision=draw(st.integers(1, 3)),
        hold_until=draw(
            st.sampled_from(
                [None, datetime(2026, 6, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)]
            )
        ),
        acknowledged=frozenset(draw(st.lists(st.sampled_from(list(rule_names)), max_size=2))),
    )


@st.composite
def people(draw: st.DrawFn) -> dict[str, Recipient]:
    out = {}
    for rid in ("u1", "u2", "u3", "x1"):
        if draw(st.integers(0, 3)):
            tz = draw(st.sampled_from([*ZONES, BAD_ZONE]))
            out[rid] = Recipient(rid, email=f"{rid}@example.test", timezone=tz)
    return out


NOWS = st.datetimes(
    min_value=datetime(2025, 6, 1), max_value=datetime(2028, 6, 1), timezones=st.just(UTC)
)


def _same(rf: RuleFile, s: Subject, people: dict[str, Recipient], now: datetime) -> None:
    try:
        want = ref_plan_subject(rf, s, people, now)
    except (OverflowError, ValueError):
        # the reference raised on a date at the edge of the calendar; the planner records
        # it as the subject's problem instead (tests/unit/test_planner_extreme_dates.py)
        got = plan_subject(rf, s, people, now)
        assert got.problems
        return
    except Exception as exc:  # noqa: BLE001 - the new planner must fail alike
        try:
            plan_subject(rf, s, people, now)
        except Exception as mine:  # noqa: BLE001
            assert (type(mine), str(mine)) == (type(exc), str(exc))
            return
        raise AssertionError(f"the reference raised {exc!r}, the planner did not") from None
    got = plan_subject(rf, s, people, now)
    assert got == want
    # the same objects too, not only equal ones: instants in UTC, the same reasons
    assert repr(got.desired) == repr(want.desired)
    assert repr(got.problems) == repr(want.problems)
    assert got.notes == want.notes
    assert got.unwanted == want.unwanted and got.addressed == want.addressed
    assert got.scope == want.scope and got.fallback == want.fallback


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rf=rule_files(), people=people(), now=NOWS)
def test_batch_planner_plans_what_the_reference_planner_plans(
    data: st.DataObject, rf: RuleFile, people: dict[str, Recipient], now: datetime
) -> None:
    s = data.draw(subjects([r.name for r in rf.rules]))
    _same(rf, s, people, now)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rf=rule_files(), people=people(), now=NOWS)
def test_batch_planner_one_rule_file_many_subjects(
    data: st.DataObject, rf: RuleFile, people: dict[str, Recipient], now: datetime
) -> None:
    """The precomputation is per rule file: many subjects planned in turn from one file
    (as a batch upsert does) each get the reference's plan."""
    names = [r.name for r in rf.rules]
    for _ in range(5):
        _same(rf, data.draw(subjects(names)), people, now)


def test_batch_planner_bench_workload() -> None:
    """bench/api.py's rule: one condition, three steps on a date attribute, one role."""
    step = [Step(name=n, at=_at(t)) for n, t in
            (("first", "due_at"), ("second", "due_at + 1h"), ("third", "due_at + 2h"))]  # fmt: skip
    rule = Rule(name="bench", subject="job", condition="status == 'open'", to=("owner",),
                steps=tuple(step))  # fmt: skip
    rf = RuleFile(path="t", rules=(rule,))
    now = datetime(2026, 1, 5, 8, tzinfo=UTC)
    due = (now + timedelta(days=30)).isoformat()
    for i in range(20):
        status = "open" if i % 3 else "closed"
        s = Subject("job", f"k{i}", {"status": status, "due_at": due}, {"owner": (f"u{i % 4}",)})
        _same(rf, s, {"u1": Recipient("u1", timezone="Asia/Tokyo")}, now)
    assert len(plan_subject(rf, s, {}, now).desired) == 3
