"""What callers hand the engine, what it answers, and how their input is checked.

Subjects, one-off reminders and recipients are validated here before any transaction opens:
a refusal names the field (``InvalidInput``) and nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from duly.core.errors import DulyError, InvalidInput
from duly.core.model import HOLD_INDEFINITE, REMINDER_RULE, Recipient, RuleFile, Subject
from duly.core.rules import timemath
from duly.core.validation import check_instant, check_json, check_text
from duly.store.store import SubjectRecord

__all__ = ["REMINDER_RULE", "Conflict", "ReminderInput", "SubjectInput", "UpsertResult"]


# The reserved rule name of one-off reminders: rule names in files start with a letter or a
# digit, so it can never clash with one.


@dataclass(frozen=True, slots=True)
class SubjectInput:
    """A subject's whole current state, as an app sends it."""

    kind: str
    key: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    recipients: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    # spec: Hold. A time, "indefinite" (until cleared: kept as HOLD_INDEFINITE), or None.
    hold_until: datetime | str | None = None


@dataclass(frozen=True, slots=True)
class ReminderInput:
    """A one-off reminder."""

    title: str
    message: str
    send_at: datetime
    recipients: Sequence[str]
    channels: Sequence[str] = ("email",)
    subject: str | None = None
    category: str = "reminder"


class Conflict(DulyError):
    """The record is not in a state that allows this (e.g. it was sent already)."""

    code = "conflict"


@dataclass(slots=True)
class UpsertResult:
    ref: str
    revision: int
    created: int = 0
    moved: int = 0
    cancelled: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_due: datetime | None = None  # the earliest due time it made pending, if any
    subject: Subject | None = None  # the state stored


# --------------------------------------------------------------------------- validation


def _dedupe(r: ReminderInput) -> ReminderInput:
    """A recipient or channel named twice is one delivery, not two."""
    return ReminderInput(
        r.title,
        r.message,
        r.send_at,
        list(dict.fromkeys(r.recipients)),
        list(dict.fromkeys(r.channels)),
        r.subject,
        r.category,
    )


def _validate_reminder(rf: RuleFile, r: ReminderInput, now: datetime) -> None:
    """send time not in the past, at least one channel and recipient."""
    if not isinstance(r.title, str) or not r.title.strip():
        raise InvalidInput("a reminder needs a title", field="title")
    if not isinstance(r.message, str):
        raise InvalidInput("a reminder needs a message", field="message")
    check_text(r.title, "title")
    check_text(r.message, "message")
    check_text(r.subject, "subject")
    check_instant(r.send_at, "send_at")
    if r.send_at < now - timedelta(seconds=1):
        raise InvalidInput("send_at is in the past", field="send_at")
    if not r.channels:
        raise InvalidInput("choose at least one channel", field="channels")
    for ch in r.channels:
        check_text(ch, "channels")
        if ch not in rf.channels:
            known = ", ".join(sorted(rf.channels))
            raise InvalidInput(f"unknown channel {ch!r}; configured: {known}", field="channels")
    if not r.recipients:
        raise InvalidInput("choose at least one recipient", field="recipients")
    for p in r.recipients:
        if not isinstance(p, str) or not p or len(p) > 200:
            raise InvalidInput("recipients are recipient ids", field="recipients")
        check_text(p, "recipients")
    if r.subject is not None:
        kind, sep, key = r.subject.partition("/")
        if not (kind and sep and key):
            raise InvalidInput(
                f"subject must be KIND/KEY (or null for none), got {r.subject!r}", field="subject"
            )
    if r.category not in ("transactional", "reminder", "promotional"):
        raise InvalidInput("category is transactional, reminder or promotional", field="category")


def _validate_recipient(r: Recipient) -> None:
    if not isinstance(r.id, str) or not r.id or len(r.id) > 200:
        raise InvalidInput("a recipient needs an id of 1 to 200 characters", field="id")
    for name in ("id", "name", "email", "phone", "timezone", "locale"):
        check_text(getattr(r, name), name)
    check_json(dict(r.addresses or {}), "addresses", max_depth=1)
    check_json(dict(r.consent or {}), "consent", max_depth=2)
    if r.timezone:
        try:
            timemath.zone(r.timezone)
        except ValueError:
            raise InvalidInput(
                f"unknown timezone {r.timezone!r}: expected an IANA name such as Europe/London",
                field="timezone",
            ) from None


def _validate_subject(s: SubjectInput) -> None:
    if not isinstance(s.kind, str) or not s.kind or "/" in s.kind or len(s.kind) > 100:
        raise InvalidInput("a subject needs a kind: 1 to 100 characters, no '/'", field="kind")
    if not isinstance(s.key, str) or not s.key or len(s.key) > 200:
        raise InvalidInput("a subject needs a key of 1 to 200 characters", field="key")
    check_text(s.kind, "kind")
    check_text(s.key, "key")
    if not isinstance(s.attributes, Mapping):
        raise InvalidInput("attributes must be an object", field="attributes")
    check_json(s.attributes, "attributes")
    if not isinstance(s.recipients, Mapping):
        raise InvalidInput("recipients must be an object of role → id or [ids]", field="recipients")
    for role, v in s.recipients.items():
        ids = [v] if isinstance(v, str) else v
        if not isinstance(ids, (list, tuple)) or not all(
            isinstance(i, str) and 0 < len(i) <= 200 for i in ids
        ):
            raise InvalidInput(
                f"recipient role {role!r} must be an id or a list of ids",
                field=f"recipients.{role}",
            )
    check_json(dict(s.recipients), "recipients", max_depth=2)
    if isinstance(s.hold_until, str):
        if s.hold_until != "indefinite":
            raise InvalidInput(
                'hold_until must be a time with offset, "indefinite" or null', field="hold_until"
            )
    else:
        check_instant(s.hold_until, "hold_until")


def _to_subject(s: SubjectInput, old: SubjectRecord | None) -> Subject:
    rec = {k: ((v,) if isinstance(v, str) else tuple(v)) for k, v in s.recipients.items()}
    rev = 1 if old is None else old.subject.revision + 1
    ack = frozenset() if (old is None or old.deleted) else old.subject.acknowledged
    return Subject(
        kind=s.kind,
        key=s.key,
        attributes=dict(s.attributes),
        recipients=rec,
        revision=rev,
        hold_until=HOLD_INDEFINITE if isinstance(s.hold_until, str) else s.hold_until,
        acknowledged=ack,
    )
