"""The planner's parts (:mod:`duly.core.planner` re-exports the public ones): a step's
values as the rule file gives them (``effective``, priority, channels), recipients by role,
the dicts conditions read, and what planning works out once rather than per delivery: each
rule file's date-relative steps compiled once (:class:`StepPlan`), and per subject the
conditions' results, the recipients of each ``to`` and its date attributes read per zone
(:class:`SubjectState`). Pure: every input is an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from duly.core.model import Category, Recipient, Rule, RuleFile, Step, Subject
from duly.core.rules import timemath
from duly.core.rules.expressions import (
    Expression,
    build_context,
    compile_expression,
    condition_holds,
)

_EXPR_CACHE: dict[str, Expression] = {}


def _expr(text: str | None) -> Expression | None:
    if text is None:
        return None
    e = _EXPR_CACHE.get(text)
    if e is None:
        e = _EXPR_CACHE[text] = compile_expression(text)
    return e


_UNSET = object()


def effective(step: Step | None, rule: Rule, attr: str) -> Any:
    """A step's own value for ``attr``, else the rule's (spec: steps may override)."""
    if step is not None:
        v = getattr(step, attr, None)
        if v is not None:
            return v
    return getattr(rule, attr, None)


def base_priority_for(category: str) -> int:
    return {"transactional": 300, "reminder": 200, "promotional": 100}.get(category, 100)


def base_priority(rule: Rule, category: str) -> int:
    """Higher goes first: transactional, reminder, promotional, then schedule rules;
    ``priority: N`` on a rule overrides (spec: Priority)."""
    if rule.priority is not None:
        return rule.priority
    if rule.cron is not None:
        return 0
    return base_priority_for(category)


def resolve_to(
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
    if len(out) < 2:
        return out
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def message_channels(step: Step | None, rule: Rule) -> tuple[str, ...]:
    """Channels a message goes out on. The step's own ``channels`` or ``fallback`` win over
    the rule's. With ``fallback`` the first channel is planned; moving along the chain is the
    dispatcher's job (issue: channels)."""
    for owner in (step, rule):
        if owner is None:
            continue
        if owner.channels:
            return tuple(owner.channels)
        if owner.fallback:
            return (owner.fallback[0],)
    return ("email",)


def subject_dict(subject: Subject) -> dict[str, Any]:
    return {
        "kind": subject.kind,
        "key": subject.key,
        "ref": subject.ref,
        "attributes": subject.attributes,
        "recipients": {k: list(v) for k, v in subject.recipients.items()},
        "revision": subject.revision,
    }


def recipient_dict(r: Recipient | None, rid: str | None = None) -> dict[str, Any]:
    if r is None:
        return {"id": rid}
    return {
        "id": r.id,
        "name": r.name,
        "email": r.email,
        "phone": r.phone,
        "timezone": r.timezone,
        "locale": r.locale,
        "addresses": r.addresses,
    }


class StepPlan:
    """What planning one step needs that does not depend on the subject, worked out once
    per rule file (``effective`` lookups, priority, channels, the condition texts)."""

    __slots__ = (
        "action at before_anchor cal_name category chain channels conds expire key priority"
        " rule rule_name sends step step_name to window"
    ).split()

    def __init__(self, rule: Rule, step: Step) -> None:
        self.rule, self.step = rule, step
        self.rule_name, self.step_name = rule.name, step.name
        self.key = (rule.name, step.name)
        self.category = str(effective(step, rule, "category") or Category.reminder)
        self.priority = base_priority(rule, self.category)
        self.window = effective(step, rule, "window")
        self.expire = effective(step, rule, "expire")
        self.sends = step.sends_message
        self.to = tuple(effective(step, rule, "to") or ())
        self.at = step.at
        self.before_anchor = step.at is not None and step.at.is_before_anchor
        self.channels: tuple[str | None, ...] = message_channels(step, rule)
        chain = effective(step, rule, "fallback") if not step.channels else None
        self.chain = tuple(chain) if chain else None
        self.action = step.set is not None or step.webhook is not None
        w = self.window
        self.cal_name = w.calendar if w is not None and w.calendar else None
        self.conds = tuple(t for t in (rule.condition, step.condition) if t is not None)


# rule file (by identity; the file itself kept, so its id is not reused) → subject kind →
# its date-relative rules, each as (name, step plans), in file order
_COMPILED: dict[int, tuple[RuleFile, dict[str, list[tuple[str, tuple[StepPlan, ...]]]]]] = {}


def rules_by_kind(rf: RuleFile) -> dict[str, list[tuple[str, tuple[StepPlan, ...]]]]:
    hit = _COMPILED.get(id(rf))
    if hit is not None and hit[0] is rf:
        return hit[1]
    by_kind: dict[str, list[tuple[str, tuple[StepPlan, ...]]]] = {}
    for rule in rf.rules:
        if rule.kind != "steps" or not isinstance(rule.subject, str):
            continue
        steps = tuple(StepPlan(rule, step) for step in rule.steps)
        by_kind.setdefault(rule.subject, []).append((rule.name, steps))
    if len(_COMPILED) >= 64:  # rule files are reloaded rarely; tests make many
        _COMPILED.clear()
    _COMPILED[id(rf)] = (rf, by_kind)
    return by_kind


class SubjectState:
    """What one subject's planning works out once and its steps share: each ``if``
    expression's result (its context built once per recipient and zone, holding only the
    names the expressions read), the subject's ref, and its date attributes read per zone."""

    __slots__ = ("_anchors", "_ctx", "_holds", "_results", "_to", "now", "ref", "subject")

    def __init__(self, subject: Subject, now: datetime) -> None:
        self.subject, self.now = subject, now
        self.ref = subject.ref
        self._ctx: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._results: dict[tuple[str, str | None, str, bool], tuple[bool, str | None]] = {}
        self._holds: dict[tuple[Any, ...], tuple[bool, str | None]] = {}
        self._anchors: dict[tuple[str, Any], Any] = {}
        self._to: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    def targets(self, rf: RuleFile, to: tuple[str, ...], notes: list[str]) -> list[str]:
        """``resolve_to(rf, to, subject, notes)``, worked out once per ``to`` (steps
        inheriting the rule's share it); its notes are added each time, as it adds them.
        The list is shared: not to be changed."""
        hit = self._to.get(to)
        if hit is None:
            mine: list[str] = []
            hit = self._to[to] = (resolve_to(rf, to, self.subject, mine), mine)
        if hit[1]:
            notes.extend(hit[1])
        return hit[0]

    def holds(
        self, sp: StepPlan, recipient: Recipient | None, rid: str | None, tz: str
    ) -> tuple[bool, str | None]:
        """The step's conditions (the rule's ``if``, then its own) for one recipient."""
        key = (sp.rule_name, sp.conds, rid, tz)
        res = self._holds.get(key)
        if res is None:
            res = self._holds[key] = self._holds_all(sp, recipient, rid, tz)
        return res

    def _holds_all(
        self, sp: StepPlan, recipient: Recipient | None, rid: str | None, tz: str
    ) -> tuple[bool, str | None]:
        ack = sp.rule_name in self.subject.acknowledged
        for text in sp.conds:
            key = (text, rid, tz, ack)
            res = self._results.get(key)
            if res is None:
                expr = _expr(text)
                assert expr is not None
                names = expr.names
                ctx = self._ctx.get((rid, tz))
                if ctx is None or not names <= ctx.keys():
                    # only the names this expression reads: it can read no other
                    part = build_context(
                        self.subject.attributes,
                        now=self.now,
                        tz=timemath.zone(tz),
                        subject=subject_dict(self.subject) if "subject" in names else None,
                        recipient=recipient_dict(recipient, rid) if "recipient" in names else None,
                        only=names,
                    )
                    if ctx is None:
                        ctx = self._ctx[(rid, tz)] = part
                    else:
                        ctx.update(part)
                ctx["acknowledged"] = ack
                res = self._results[key] = condition_holds(expr, ctx)
            if not res[0]:
                return res
        return True, None

    def anchor(self, attribute: str, tz: Any) -> datetime | None:
        """The attribute's instant in ``tz`` (``timemath.anchor_of``), read once per zone;
        raises its BadDate again each time it is asked."""
        key = (attribute, tz)
        hit = self._anchors.get(key, _UNSET)
        if hit is _UNSET:
            value = self.subject.attributes.get(attribute)
            try:
                hit = None if value is None else timemath.parse_instant(value, tz)
            except ValueError as exc:
                hit = exc
            self._anchors[key] = hit
        if isinstance(hit, ValueError):
            raise hit
        return hit  # type: ignore[no-any-return]
