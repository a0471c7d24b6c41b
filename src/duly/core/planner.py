"""Pure planning and reconciliation (docs/reference/rules.md "Planning").

``plan_subject`` turns (rules, subject state, recipients, now) into the set of deliveries that
should exist for the subject's date-relative rules; ``plan_trigger`` does the same for one
event or attribute change; ``reconcile`` compares a desired set with the stored rows and says
what to create, move, cancel, skip or plan again. Nothing here touches a database or a
clock: every input is an argument, so these functions are tested directly with hypothesis.

The types (``Identity``, ``Desired``, ``Plan``, ...) live in :mod:`duly.core.plantypes` and
reconciliation in :mod:`duly.core.reconcile`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from duly.core.model import (
    Calendar,
    Reason,
    Recipient,
    Rule,
    RuleFile,
    Step,
    Subject,
    Window,
)
from duly.core.planparts import (
    StepPlan,
    SubjectState,
    _expr,
    base_priority,
    base_priority_for,
    effective,
    message_channels,
    recipient_dict,
    resolve_to,
    rules_by_kind,
    subject_dict,
)
from duly.core.plantypes import (
    FINAL_SENT,
    NEVER_SENT,
    PENDING,
    Action,
    Desired,
    Existing,
    Identity,
    Plan,
    Problem,
)
from duly.core.reconcile import cancel_all, outcome_of, reconcile
from duly.core.rules import timemath
from duly.core.rules.expressions import build_context, condition_holds

__all__ = [
    "FINAL_SENT",
    "NEVER_SENT",
    "PENDING",
    "Action",
    "Desired",
    "Existing",
    "Identity",
    "Plan",
    "Problem",
    "base_priority",
    "base_priority_for",
    "cancel_all",
    "effective",
    "message_channels",
    "outcome_of",
    "plan_subject",
    "plan_trigger",
    "recipient_dict",
    "reconcile",
    "resolve_to",
    "subject_dict",
]

# How far ahead an open-ended repeat (no count, no until) is planned. Re-planning the subject
# (any upsert) extends it. See docs/reference/planning.md.
REPEAT_HORIZON = timedelta(days=90)


# --------------------------------------------------------------------------- helpers


def priority_levels(rf: RuleFile) -> set[int]:
    """Every priority the rules (and one-off reminders) give rows, for claiming by level."""
    levels = {base_priority_for(c) for c in ("transactional", "reminder", "promotional")}
    for rule in rf.rules:
        cats = {str(rule.category)} | {str(s.category) for s in rule.steps if s.category}
        for c in cats:
            p = base_priority(rule, c)
            levels |= {p, p - 1}  # p - 1: `set` rows act after their step's messages
    return levels


def rule_zone(rf: RuleFile, rule: Rule, recipient: Recipient | None) -> str:
    """Recipient's timezone, else the rule's, else the file's (spec: Time)."""
    if recipient is not None and recipient.timezone:
        return recipient.timezone
    return rule.timezone or rf.timezone


def window_calendar(rf: RuleFile, window: Window | None) -> Calendar | None:
    if window is not None and window.calendar:
        return rf.calendars.get(window.calendar)
    return None


def check_conditions(
    rule: Rule,
    step: Step | None,
    subject: Subject,
    recipient: Recipient | None,
    rid: str | None,
    tz: str,
    now: datetime,
    event: dict[str, Any] | None = None,
) -> tuple[bool, str | None]:
    """The rule's ``if`` and the step's ``if`` against the subject (both must hold)."""
    exprs = [e for e in (_expr(rule.condition), _expr(step.condition if step else None)) if e]
    if not exprs:
        return True, None
    ctx = build_context(
        subject.attributes,
        now=now,
        tz=timemath.zone(tz),
        subject=subject_dict(subject),
        event=event,
        recipient=recipient_dict(recipient, rid),
        acknowledged=rule.name in subject.acknowledged,
    )
    for e in exprs:
        ok, err = condition_holds(e, ctx)
        if not ok:
            return False, err
    return True, None


# --------------------------------------------------------------------------- planning


def plan_subject(
    rf: RuleFile,
    subject: Subject,
    recipients: Mapping[str, Recipient],
    now: datetime,
) -> Plan:
    """Every delivery the subject's date-relative rules want now (spec: Planning)."""
    plan = Plan()
    rules = rules_by_kind(rf).get(subject.kind)
    if rules:
        cache = SubjectState(subject, now)
        for name, steps in rules:
            plan.scope.add(name)
            for sp in steps:
                _plan_step(rf, sp, subject, recipients, now, plan, cache)
    if subject.hold_until is not None and subject.hold_until > now:
        plan.desired = apply_hold(plan.desired, subject.hold_until)
    return plan


def apply_hold(desired: list[Desired], until: datetime) -> list[Desired]:
    """spec: Hold. Reminder and promotional messages falling due before ``until`` are skipped
    (``held``), except the latest of each rule, recipient and channel, which moves to the
    end of the hold: chasing resumes with one message, never a burst. Transactional
    messages and ``set`` actions are not held."""
    latest: dict[tuple[str, str | None, str | None], Desired] = {}
    for d in desired:
        if _holdable(d, until):
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
        if not _holdable(d, until):
            out.append(d)
        elif d.identity in keep:
            out.append(d._replace(due_at=until))
        else:
            out.append(d._replace(skip_reason=Reason.held))
    return out


def _holdable(d: Desired, until: datetime) -> bool:
    return (
        d.skip_reason is None
        and d.identity.recipient is not None
        and d.category != "transactional"
        and d.due_at < until
    )


def _targets(
    rf: RuleFile, rule: Rule, step: Step | None, subject: Subject, plan: Plan
) -> list[str | None]:
    if not (step.sends_message if step is not None else rule.sends_message):
        return []
    return list(resolve_to(rf, effective(step, rule, "to") or (), subject, plan.notes))


_NO_CHANNEL: tuple[str | None, ...] = (None,)
# Identity(...) and Desired(...) with every field given, without the named tuple's own
# __new__ (a Python function; the planner makes one of each per delivery)
_new = tuple.__new__


def _plan_step(
    rf: RuleFile,
    sp: StepPlan,
    subject: Subject,
    recipients: Mapping[str, Recipient],
    now: datetime,
    plan: Plan,
    conditions: SubjectState,
) -> None:
    key = sp.key
    rids: list[str | None] = (
        conditions.targets(rf, sp.to, plan.notes) if sp.sends else []  # type: ignore[assignment]
    )
    plan.addressed[key] = {r for r in rids if r}
    at = sp.at
    if at is None:
        return
    if sp.chain:
        plan.fallback[key] = sp.chain
    step, rule = sp.step, sp.rule
    rule_name, step_name, ref = sp.rule_name, sp.step_name, conditions.ref
    category, priority, window, expire = sp.category, sp.priority, sp.window, sp.expire
    # each recipient on each channel; plus one row without recipient for a `set` action
    channels = sp.channels
    targets: list[tuple[str | None, tuple[str | None, ...]]] = [(r, channels) for r in rids]
    action = sp.action  # a row without recipient, timed after the recipients' (latest)
    if action:
        targets.append((None, _NO_CHANNEL))
    cal = rf.calendars.get(sp.cal_name) if sp.cal_name else None
    if step.repeat is not None and rule_name in subject.acknowledged:
        # spec: once acknowledged, repeats of the rule stop (pending ones are cancelled)
        plan.unwanted[key] = Reason.acknowledged
        return
    desired = plan.desired
    # the step's messages go out no later than its `set` acts: when the action changes what
    # the rule's `if` reads, the step's own messages (planned in each recipient's zone) are
    # not cancelled by it
    latest: dict[int, datetime] = {}
    for rid, chans in targets:
        recipient = recipients.get(rid) if rid else None
        if recipient is not None and recipient.timezone:
            tzname = recipient.timezone
        else:
            tzname = rule.timezone or rf.timezone
        try:
            tz = timemath.zone(tzname)
        except ValueError as exc:
            plan.problems.append(Problem(ref, rule_name, "timezone", str(exc)))
            continue
        if sp.conds:
            ok, err = conditions.holds(sp, recipient, rid, tzname)
            if not ok:
                plan.unwanted[key] = Reason.condition_false
                if err:
                    plan.problems.append(Problem(ref, rule_name, "if", err))
                continue
        mark, latest_before = len(desired), dict(latest) if action else latest
        try:
            # what timemath.eval_at and anchor_of answer, the attribute read once per zone
            anchor = conditions.anchor(at.attribute, tz)
            first = (
                timemath.offset_from(anchor, at, subject.attributes, tz, cal)
                if anchor is not None and at.offsets
                else anchor
            )
            if first is None:
                _undated(desired, sp, ref, rid, chans, now, Reason.no_date)
                continue
            if step.time_of_day is not None:
                first = timemath.at_time_of_day(first, step.time_of_day, tz)
            changes = dict(step.set) if (rid is None and step.set) else None
            occurrences = (
                ((0, first),)
                if step.repeat is None
                else _occurrences(step, subject, first, tz, cal, now)
            )
            for index, planned in occurrences:
                deadline = anchor if (sp.before_anchor and anchor is not None) else None
                if expire is not None:
                    exp = _expiry(planned, expire, tz, cal)
                    if exp is not None:
                        deadline = exp if deadline is None else min(deadline, exp)
                due = planned
                skip = None
                if window is not None and rid is not None:
                    try:
                        due = timemath.next_window_opening(planned, window, tz, rf.calendars)
                    except ValueError as exc:
                        plan.problems.append(Problem(ref, rule_name, "window", str(exc)))
                        skip = Reason.window_missed
                    if deadline is not None and due > deadline:
                        skip = Reason.window_missed
                if rid is not None:
                    if action:
                        latest[index] = max(latest.get(index, due), due)
                    prio = priority
                else:
                    planned = due = max(planned, latest.get(index, planned))
                    prio = priority - 1  # after the step's messages when due at the same instant
                for channel in chans:
                    ident = _new(Identity, (rule_name, step_name, index, ref, rid, channel))
                    desired.append(
                        _new(
                            Desired, (ident, planned, due, deadline, category, prio, skip, changes)
                        )
                    )
        except (OverflowError, ValueError) as exc:
            # the date cannot be read, or it is at the edge of the calendar (year 1 or 9999)
            # and an offset, a repeat, a time of day or a window carries it past (or a
            # repeat's `until` cannot be read): this subject's bad data, recorded and the
            # step skipped for it, never an error for the whole batch
            del desired[mark:]
            if action:
                latest.clear()
                latest.update(latest_before)
            message = (
                str(exc)
                if isinstance(exc, ValueError)
                else "a date worked out from it is out of the supported range of dates"
            )
            plan.problems.append(Problem(ref, rule_name, at.attribute, message))
            _undated(desired, sp, ref, rid, chans, now, Reason.bad_data)


def _undated(
    desired: list[Desired],
    sp: StepPlan,
    ref: str,
    rid: str | None,
    chans: Sequence[str | None],
    now: datetime,
    reason: Reason,
) -> None:
    """The step's rows for one recipient when it has no date (``no_date``) or a date that
    cannot be worked with (``bad_data``): occurrence 0 on each channel, skipped now."""
    for channel in chans:
        ident = _new(Identity, (sp.rule_name, sp.step_name, 0, ref, rid, channel))
        desired.append(
            _new(Desired, (ident, now, now, None, sp.category, sp.priority, reason, None))
        )


def _expiry(planned: datetime, expire: Any, tz: Any, cal: Calendar | None) -> datetime | None:
    """``planned + expire``; None without ``expire`` or when that is past the year 9999 (a
    rule file's durations are at most 1000 years, but a date attribute may be late)."""
    if expire is None:
        return None
    try:
        return timemath.add_duration(planned, expire, 1, tz, cal)
    except OverflowError:
        return None


def _occurrences(
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


def plan_trigger(
    rf: RuleFile,
    rule: Rule,
    subject: Subject,
    recipients: Mapping[str, Recipient],
    occurrence: int | str,
    at: datetime,
    event: dict[str, Any] | None = None,
) -> Plan:
    """Deliveries for one event (occurrence = event id) or attribute change (occurrence =
    the subject's revision) of an event rule, planned at ``at`` + the rule's delay."""
    plan = Plan()
    plan.scope.add(rule.name)
    category = str(rule.category)
    priority = base_priority(rule, category)
    rids = _targets(rf, rule, None, subject, plan)
    slots: list[tuple[str | None, str | None]] = [
        (r, c) for r in rids for c in message_channels(None, rule)
    ]
    if rule.set is not None or rule.webhook is not None:
        slots.append((None, None))
    for rid, channel in slots:
        recipient = recipients.get(rid) if rid else None
        tzname = rule_zone(rf, rule, recipient)
        try:
            tz = timemath.zone(tzname)
        except ValueError as exc:
            plan.problems.append(Problem(subject.ref, rule.name, "timezone", str(exc)))
            continue
        ok, err = check_conditions(rule, None, subject, recipient, rid, tzname, at, event)
        if not ok:
            if err:
                plan.problems.append(Problem(subject.ref, rule.name, "if", err))
            continue
        planned = at
        if rule.delay is not None:
            planned = timemath.add_duration(at, rule.delay, 1, tz, None)
        due, skip = planned, None
        deadline = _expiry(planned, rule.expire, tz, None)
        if rule.window is not None and rid is not None:
            due = timemath.next_window_opening(planned, rule.window, tz, rf.calendars)
            if deadline is not None and due > deadline:
                skip = Reason.window_missed
        ident = Identity(rule.name, None, occurrence, subject.ref, rid, channel)
        plan.desired.append(
            Desired(
                ident,
                planned,
                due,
                deadline,
                category,
                priority,
                skip_reason=skip,
                changes=dict(rule.set) if (rid is None and rule.set) else None,
            )
        )
    return plan


def change_fires(rule: Rule, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Does an upsert from ``old`` to ``new`` attributes fire ``on: {change: ...}``?
    An absent or null value counts as null, so creation with ``status: paid`` is a change
    from null (spec: Kinds of rule)."""
    trig = rule.on
    if trig is None or trig.change is None:
        return False
    before = (old or {}).get(trig.change)
    after = new.get(trig.change)
    if before == after:
        return False
    if trig.has_to and after != trig.to:
        return False
    return not (trig.has_from and before != trig.from_)
