"""What a template is rendered with when it is checked or previewed
(:mod:`duly.delivery.templates`): the dispatcher's context, sample data, and the subject,
recipient and collections of a preview.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from duly.core import planner
from duly.core.errors import NotFound
from duly.core.model import Recipient, Subject

if TYPE_CHECKING:
    from duly.delivery.templates import TemplateStore

__all__ = [
    "SAMPLE_RECIPIENT",
    "SAMPLE_SUBJECT",
    "PreviewInput",
    "Variable",
    "VariableGroup",
    "preview_input",
    "preview_parties",
    "real_parties",
    "render_context",
    "variables",
]

# the variables list: attributes of this many recent subjects, at most this many names,
# examples cut at this many characters
VARIABLE_SUBJECTS = 20
MAX_ATTRIBUTES = 100
EXAMPLE_CHARS = 40


SAMPLE_RECIPIENT = Recipient(
    id="sample-recipient",
    name="Sam Sample",
    email="sam@example.com",
    phone="+15550100",
    timezone="UTC",
    locale="en",
)
SAMPLE_SUBJECT = Subject(
    kind="sample",
    key="SAMPLE-1",
    attributes={},
    recipients={"customer": (SAMPLE_RECIPIENT.id,)},
)


def render_context(
    *,
    name: str,
    subject: Subject | None,
    recipient: Recipient | None,
    event: Mapping[str, Any] | None,
    now: datetime,
    timezone: str,
    category: str = "reminder",
    collected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context the dispatcher would give ``name`` (same keys as Dispatcher._context)."""
    return {
        "subject": planner.subject_dict(subject) if subject is not None else None,
        "attributes": subject.attributes if subject is not None else {},
        "recipient": planner.recipient_dict(recipient),
        "event": dict(event) if event is not None else None,
        "rule": {"name": name, "category": category},
        "step": {"name": None, "occurrence": 0},
        "now": now,
        "timezone": timezone,
        "delivery": {"id": 0, "planned_at": now, "due_at": now},
        **(collected or {}),
        "collected": dict(collected or {}),
    }


@dataclass(frozen=True)
class PreviewInput:
    """What a preview renders with: the render context, the subject and recipient it was
    made for (sample ones when ``real`` is False), the zone and locale to render in."""

    context: dict[str, Any]
    subject: Subject
    recipient: Recipient | None
    real: bool
    timezone: str
    locale: str


def preview_parties(
    eng: Any, subject_ref: str | None, recipient_id: str | None
) -> tuple[Subject | None, Recipient | None]:
    """The subject (``KIND/KEY``) and recipient a preview is for; without a recipient, the
    subject's first one. Raises NotFound naming the field (``subject`` or ``recipient``)."""
    subject: Subject | None = None
    recipient: Recipient | None = None
    with eng.db.connect() as conn:
        if subject_ref is not None:
            kind, _, key = subject_ref.partition("/")
            rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key)) if key else None
            if rec is None or rec.deleted:
                raise NotFound(f"no subject {subject_ref}", field="subject")
            subject = rec.subject
        rid = recipient_id
        if rid is None and subject is not None:
            rid = next((r for ids in subject.recipients.values() for r in ids), None)
        if rid is not None:
            recipient = eng.store.get_recipients(conn, [rid]).get(rid)
            if recipient is None and recipient_id is not None:
                raise NotFound(f"no recipient {rid}", field="recipient")
    return subject, recipient


def preview_input(
    ts: TemplateStore,
    eng: Any,
    name: str,
    subject: Subject | None,
    recipient: Recipient | None,
    *,
    now: datetime,
    event: Mapping[str, Any] | None = None,
) -> PreviewInput:
    """The context the dispatcher would give ``name`` for this subject and recipient (sample
    data when neither is given); a schedule rule's collections (``collect:``) come from the
    database, as when it sends."""
    real = subject is not None or recipient is not None
    if not real:
        subject, recipient = SAMPLE_SUBJECT, SAMPLE_RECIPIENT
    assert subject is not None
    tz = (recipient.timezone if recipient else None) or eng.rules.timezone
    collected = ts.sample_collections(name)
    rule = next((r for r in ts.rules_using(name) if r.collect), None)
    if rule is not None:
        from zoneinfo import ZoneInfo

        from duly.engine.collect import collect_all

        with eng.db.connect() as conn:
            collected = collect_all(conn, rule, now, ZoneInfo(rule.timezone or eng.rules.timezone))
    ctx = render_context(
        name=name,
        subject=subject,
        recipient=recipient,
        event=event,
        now=now,
        timezone=tz,
        collected=collected,
    )
    locale = (recipient.locale if recipient else None) or "en"
    return PreviewInput(ctx, subject, recipient, real, tz, locale)


def real_parties(
    ts: TemplateStore, name: str, n: int, per_subject: int
) -> list[tuple[Subject, Recipient | None]]:
    """TemplateStore.real_subjects: the ``n`` newest subjects (not deleted) of the kinds the
    rules using ``name`` work on, each with up to ``per_subject`` of its recipients (those of
    the roles the rules send to first). A subject without recipients comes once, with None."""
    from duly.store import templates as store
    from duly.store.db import is_postgres
    from duly.store.store import Store

    kinds = ts.kinds_of(name)
    if not kinds:
        return []
    roles = [t for r in ts.rules_using(name) for t in r.to]
    with ts.db.connect() as conn:
        reader = Store(postgres=is_postgres(conn))
        refs = store.newest_subject_refs(conn, kinds, n)
        records = reader.get_subjects(conn, refs)
        found = [records[ref].subject for ref in refs if ref in records]
        chosen: dict[str, list[str]] = {}
        for s in found:
            ordered = sorted(s.recipients.items(), key=lambda kv: kv[0] not in roles)
            ids = list(dict.fromkeys(i for _, people in ordered for i in people))
            chosen[s.ref] = ids[:per_subject]
        people = reader.get_recipients(conn, [i for ids in chosen.values() for i in ids])
    out: list[tuple[Subject, Recipient | None]] = []
    for s in found:
        known = [people[i] for i in chosen[s.ref] if i in people]
        out += [(s, r) for r in known] or [(s, None)]
    return out


# --------------------------------------------------------------------------- variables


@dataclass(frozen=True)
class Variable:
    """One name a template can read: what to insert, an example value, a note."""

    name: str
    insert: str
    example: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class VariableGroup:
    title: str
    items: list[Variable] = field(default_factory=list)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# names a dict answers itself in Jinja (attributes.items is the method): read with [...]
_DICT_NAMES = frozenset(dir({}))


def _example(value: Any) -> str | None:
    if value is None or value == "" or value == [] or value == {}:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _var(name: str, example: Any = None, note: str | None = None) -> Variable:
    return Variable(name, "{{ " + name + " }}", _example(example), note)


def _attr_name(key: str) -> str:
    if _IDENT.match(key) and key not in _DICT_NAMES:
        return f"attributes.{key}"
    return "attributes[" + json.dumps(key).replace('"', "'") + "]"


HELPERS = (
    ("date", "{{ date(VALUE) }}", "a date in the template's language: 8 Dec 2026"),
    ("time", "{{ time(VALUE) }}", "a time in the recipient's timezone: 09:00"),
    ("datetime", "{{ datetime(VALUE) }}", "a date and time"),
    ("money", "{{ money(AMOUNT, CURRENCY) }}", "an amount: €1,234.50"),
    ("number", "{{ number(VALUE) }}", "a number: 1,234.5"),
    ("relative", "{{ relative(VALUE) }}", "from now: in 3 days, 2 hours ago"),
    ("ack_link", "{{ ack_link() }}", "a signed link that acknowledges the message"),
)


def variables(ts: TemplateStore, name: str) -> list[VariableGroup]:
    """What template ``name`` can read, grouped: the subject with the attributes of the kind's
    recent subjects (VARIABLE_SUBJECTS of them, at most MAX_ATTRIBUTES names, each with an
    example value cut at EXAMPLE_CHARS), the recipient (a real one's values), the rule, step,
    event, time and delivery, a schedule rule's collections, and the helpers."""
    from duly.store import templates as store
    from duly.store.db import is_postgres
    from duly.store.store import Store

    kinds = ts.kinds_of(name)
    found: list[Subject] = []
    if kinds:
        with ts.db.connect() as conn:
            reader = Store(postgres=is_postgres(conn))
            refs = store.newest_subject_refs(conn, kinds, VARIABLE_SUBJECTS)
            records = reader.get_subjects(conn, refs)
            found = [records[ref].subject for ref in refs if ref in records]
    newest = found[0] if found else None
    examples: dict[str, Any] = {}
    for s in found:  # newest first: the newest non-empty value is the example
        for key, value in s.attributes.items():
            if key not in examples and len(examples) < MAX_ATTRIBUTES:
                examples[key] = value
            elif examples.get(key) in (None, "", [], {}):
                examples[key] = value
    subject = VariableGroup(
        "Subject",
        [
            _var("subject.key", newest.key if newest else None),
            _var("subject.kind", newest.kind if newest else (kinds[0] if kinds else None)),
            _var("subject.ref", newest.ref if newest else None),
        ]
        + [_var(_attr_name(k), v) for k, v in sorted(examples.items())],
    )
    parties = real_parties(ts, name, 1, 1) if newest else []
    person = parties[0][1] if parties else None
    recipient = VariableGroup(
        "Recipient",
        [
            _var(f"recipient.{f}", getattr(person, f, None) if person else None)
            for f in ("name", "email", "phone", "id", "timezone", "locale")
        ],
    )
    rules = ts.rules_using(name)
    rule = VariableGroup(
        "Rule and step",
        [
            _var("rule.name", rules[0].name if rules else None),
            _var("rule.category", rules[0].category if rules else None),
            _var("step.name", next((st.name for r in rules for st in r.steps), None)),
            _var("step.occurrence", None, "0, then 1, 2… for repeats"),
        ],
    )
    event = VariableGroup(
        "Event",
        [
            _var("event.name", None, "event rules only; empty otherwise"),
            _var("event.data", None, "what the event carried"),
            _var("event.at", None, "when it happened"),
        ],
    )
    time = VariableGroup(
        "Time and delivery",
        [
            _var("now", None, "when the message is made"),
            _var("timezone", None, "the recipient's timezone"),
            _var("delivery.due_at", None, "when it was due to go"),
            _var("delivery.id"),
        ],
    )
    groups = [subject, recipient, rule, event, time]
    collections = ts.sample_collections(name) if rules else {}
    if collections:
        groups.append(
            VariableGroup("Collections", [_var(c, None, "a list") for c in sorted(collections)])
        )
    groups.append(VariableGroup("Helpers", _helpers(examples)))
    return groups


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _helpers(examples: Mapping[str, Any]) -> list[Variable]:
    """The helpers, inserted with the kind's own attributes where one fits (a date, an
    amount, a currency), else with placeholders to replace."""

    def first(test: Any) -> str | None:
        return next((_attr_name(k) for k, v in sorted(examples.items()) if test(v)), None)

    day = first(lambda v: isinstance(v, str) and _ISO_DATE.match(v)) or "VALUE"
    number = first(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
    currency = first(lambda v: isinstance(v, str) and _CURRENCY.match(v))
    fill = {
        "VALUE": day,
        "AMOUNT": number or "AMOUNT",
        "CURRENCY": currency or "CURRENCY",
    }
    out = []
    for h, insert, note in HELPERS:
        for placeholder, value in fill.items():
            insert = insert.replace(placeholder, value)
        if h == "number" and number:
            insert = "{{ number(" + number + ") }}"
        out.append(Variable(h, insert, None, note))
    return out
