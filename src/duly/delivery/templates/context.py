"""What a template is rendered with when it is checked or previewed
(:mod:`duly.delivery.templates`): the dispatcher's context, sample data, and the subject,
recipient and collections of a preview.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    "preview_input",
    "preview_parties",
    "render_context",
]


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
