"""The rule file as data, and the records duly keeps about an app.

Everything here is plain, immutable data: the loader (``duly.core.rules.loader``) builds it from
YAML, the planner and dispatcher read it. Nothing here does I/O.

Normative source: docs/reference/rules.md and docs/reference/simulate.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Any

__all__ = [
    "HOLD_INDEFINITE",
    "REMINDER_RULE",
    "Action",
    "AtExpr",
    "Batch",
    "Calendar",
    "Category",
    "ChannelConfig",
    "Collect",
    "Duration",
    "DurationError",
    "DurationTooLong",
    "Event",
    "Outcome",
    "Reason",
    "Recipient",
    "RenderLimits",
    "Repeat",
    "Retry",
    "Rule",
    "RuleFile",
    "Step",
    "Subject",
    "SubjectColumn",
    "SubjectView",
    "held_until_cleared",
    "Trigger",
    "WebhookAction",
    "WhatsAppTemplate",
    "WebhookTarget",
    "Window",
    "MAX_DURATION_YEARS",
    "WEEKDAYS",
    "parse_duration",
]

# The rule name of one-off reminders (made through the API or the UI, not the rule file).
REMINDER_RULE = "@reminder"
# A pending delivery counts as late ("overdue") once it is this far past its due time: the
# dispatcher sends what falls due within moments, so a row made due now (Send now) is not late.
LATE_AFTER = timedelta(seconds=60)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Category(StrEnum):
    transactional = "transactional"
    reminder = "reminder"
    promotional = "promotional"


class Outcome(StrEnum):
    sent = "sent"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"
    set = "set"


class Reason(StrEnum):
    past = "past"
    no_date = "no_date"
    condition_false = "condition_false"
    no_consent = "no_consent"
    no_address = "no_address"
    rate_limited = "rate_limited"
    window_missed = "window_missed"
    missed = "missed"
    subject_deleted = "subject_deleted"
    recipient_removed = "recipient_removed"
    render_error = "render_error"
    permanent_error = "permanent_error"
    retries_exhausted = "retries_exhausted"
    manual = "manual"
    held = "held"
    suppressed = "suppressed"
    empty = "empty"
    acknowledged = "acknowledged"
    # Extension (docs/reference/reasons.md): the rule or step that planned it is gone from
    # the rule file, or its repeat no longer reaches this occurrence.
    rule_changed = "rule_changed"
    # Extension: the data the delivery needs is malformed (a date attribute that is not a date).
    bad_data = "bad_data"


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"(\d+)(bd|mo|y|w|d|h|m|s)")
_DURATION_FULL_RE = re.compile(r"^(?:\d+(?:bd|mo|y|w|d|h|m|s))+$")


class DurationError(ValueError):
    """Not a duration: expected e.g. 30s, 15m, 2h, 3d, 2w, 1mo, 1y, 3bd or a sum like 1d12h."""


class DurationTooLong(DurationError):
    """A duration longer than the longest a rule file may write (MAX_DURATION_YEARS)."""


# The longest duration a rule file may write. A thousand years is far beyond any reminder,
# and it keeps date arithmetic in range: a time in the years 1000 to 8999 plus or minus such
# a duration is still a date Python can hold (years 1 to 9999).
MAX_DURATION_YEARS = 1000
# Lengths in days for that check: a year is 365.2425 days (the Gregorian average), a month a
# twelfth of it, a week 7 days, a business day at least one day.
_YEAR_DAYS = Fraction(146_097, 400)
_MAX_DURATION_DAYS = MAX_DURATION_YEARS * _YEAR_DAYS
_MAX_DIGITS = 12  # more digits than this is past the limit in any unit (and int() is slow)


@dataclass(frozen=True, slots=True)
class Duration:
    """A span of time as written in a rule file.

    ``months`` (from ``mo`` and ``y``), ``days`` (from ``d`` and ``w``) and ``business_days``
    are calendar units applied in the recipient's timezone; ``seconds`` (from ``h``, ``m``,
    ``s``) is exact elapsed time.
    """

    months: int = 0
    days: int = 0
    business_days: int = 0
    seconds: int = 0
    text: str = ""

    @property
    def is_exact(self) -> bool:
        """True when the duration has only elapsed-time units (h, m, s)."""
        return not (self.months or self.days or self.business_days)

    def total_seconds_approx(self) -> int:
        """Seconds, counting a month as 30 days and a business day as a day (for limits)."""
        return (self.months * 30 + self.days + self.business_days) * 86400 + self.seconds

    def __str__(self) -> str:
        return self.text or f"{self.seconds}s"


def parse_duration(text: str) -> Duration:
    """Parse ``30s``, ``15m``, ``2h``, ``3d``, ``2w``, ``1mo``, ``1y``, ``3bd``, ``1d12h``."""
    if not isinstance(text, str):
        text = str(text)
    s = text.strip()
    if not s or not _DURATION_FULL_RE.match(s):
        raise DurationError(
            f"{text!r} is not a duration: expected e.g. 30s, 15m, 2h, 3d, 2w, 1mo, 1y, 3bd or a sum like 1d12h"
        )
    months = days = bdays = secs = 0
    for num, unit in _DURATION_RE.findall(s):
        if len(num.lstrip("0")) > _MAX_DIGITS:
            raise _too_long(s)
        n = int(num)
        if unit == "y":
            months += 12 * n
        elif unit == "mo":
            months += n
        elif unit == "w":
            days += 7 * n
        elif unit == "d":
            days += n
        elif unit == "bd":
            bdays += n
        elif unit == "h":
            secs += 3600 * n
        elif unit == "m":
            secs += 60 * n
        else:
            secs += n
    length = months * _YEAR_DAYS / 12 + days + bdays + Fraction(secs, 86_400)
    if length > _MAX_DURATION_DAYS:
        raise _too_long(s)
    return Duration(months=months, days=days, business_days=bdays, seconds=secs, text=s)


def _too_long(text: str) -> DurationTooLong:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return DurationTooLong(
        f"{shown!r} is too long: a duration is at most {MAX_DURATION_YEARS} years "
        f"(e.g. {MAX_DURATION_YEARS}y or {MAX_DURATION_YEARS * 12}mo)"
    )


# --------------------------------------------------------------------------- rule file


@dataclass(frozen=True, slots=True)
class AtExpr:
    """``ATTRIBUTE [+|- DURATION]...``: e.g. ``due_at - 3d`` → attribute="due_at",
    offsets=((-1, Duration(days=3)),)."""

    attribute: str
    offsets: tuple[tuple[int, Duration], ...] = ()
    text: str = ""

    @property
    def is_before_anchor(self) -> bool:
        """True when the net offset is negative (the step comes before its anchor date):
        such a step may never go out after the anchor instant (spec: Deadline)."""
        return any(sign < 0 for sign, _ in self.offsets) and not any(
            sign > 0 for sign, _ in self.offsets
        )


@dataclass(frozen=True, slots=True)
class Calendar:
    name: str
    days: tuple[str, ...] = WEEKDAYS[:5]
    holidays: str | None = None  # ISO 3166 country code (optionally "GB-SCT" subdivision)
    closed: tuple[str, ...] = ()  # ISO dates


@dataclass(frozen=True, slots=True)
class Window:
    """``window: {hours: "09:00-17:00", days: [...], calendar: NAME}``."""

    start: time | None = None  # None: open all day
    end: time | None = None
    days: tuple[str, ...] | None = None
    calendar: str | None = None


@dataclass(frozen=True, slots=True)
class Repeat:
    every: Duration
    days: tuple[str, ...] | None = None
    count: int | None = None
    until: AtExpr | None = None  # a time expression: no occurrence after it


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 3  # retries after the first try
    delay: Duration = field(default_factory=lambda: parse_duration("60s"))
    factor: float = 2.0


@dataclass(frozen=True, slots=True)
class Batch:
    window: Duration


@dataclass(frozen=True, slots=True)
class WebhookAction:
    url: str
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WhatsAppTemplate:
    """A rule's or step's ``whatsapp:``: the approved template its messages use on the
    WhatsApp channels, overriding the channel's (``content_sid`` for ``twilio-whatsapp``,
    ``template`` and ``language`` for ``whatsapp-cloud``), its variables (template
    variable → Jinja text rendered with the message's context) and the ``freeform`` mode."""

    content_sid: str | None = None
    template: str | None = None
    language: str | None = None
    variables: tuple[tuple[str, str], ...] = ()
    freeform: str | None = None


@dataclass(frozen=True, slots=True)
class Action:
    set: dict[str, Any] | None = None
    webhook: WebhookAction | None = None


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event rule's ``on``: either a named event, or a change of one attribute."""

    event: str | None = None
    change: str | None = None  # attribute name
    to: Any = None
    has_to: bool = False
    from_: Any = None
    has_from: bool = False


@dataclass(frozen=True, slots=True)
class Collect:
    name: str
    subject: str | None = None
    condition: str | None = None
    stats: str | None = None  # today | yesterday | last_week | last_month


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a date-relative rule. Fields left None inherit the rule's."""

    name: str | None
    at: AtExpr | None = None
    time_of_day: time | None = None
    repeat: Repeat | None = None
    condition: str | None = None
    to: tuple[str, ...] | None = None
    channels: tuple[str, ...] | None = None
    fallback: tuple[str, ...] | None = None
    category: Category | None = None
    template: str | None = None
    window: Window | None = None
    expire: Duration | None = None
    batch: Batch | None = None
    set: dict[str, Any] | None = None
    webhook: WebhookAction | None = None
    sends_message: bool = True  # False for a step with only `set` / `webhook`
    line: int = 0
    whatsapp: WhatsAppTemplate | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    subject: str | None = None  # subject kind (None for schedule rules)
    condition: str | None = None
    to: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("email",)
    fallback: tuple[str, ...] | None = None
    category: Category = Category.reminder
    template: str | None = None
    window: Window | None = None
    steps: tuple[Step, ...] = ()
    on: Trigger | None = None
    delay: Duration | None = None
    cron: str | None = None
    timezone: str | None = None
    collect: tuple[Collect, ...] = ()
    skip_empty: bool = False
    grace: Duration | None = None
    expire: Duration | None = None
    min_gap: Duration | None = None
    retry: Retry = field(default_factory=Retry)
    priority: int | None = None
    batch: Batch | None = None
    set: dict[str, Any] | None = None
    webhook: WebhookAction | None = None
    sends_message: bool = True
    line: int = 0
    whatsapp: WhatsAppTemplate | None = None

    @property
    def kind(self) -> str:
        """``steps``, ``event`` or ``cron``."""
        if self.cron is not None:
            return "cron"
        if self.on is not None:
            return "event"
        return "steps"

    def step(self, name: str | None) -> Step | None:
        for s in self.steps:
            if s.name == name:
                return s
        return None


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    type: str  # smtp | outbox | inbox | webhook | twilio-sms | twilio-whatsapp | apprise
    options: dict[str, Any] = field(default_factory=dict)  # ${VAR} already expanded


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    events: tuple[str, ...] = ()
    secret_env: str | None = None


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """The rule file's ``render:`` section: what one render may cost (``duly.delivery.rendering``).
    ``timeout`` in seconds (wall clock, which bounds CPU time too); ``max_output`` in
    characters of rendered text; ``max_memory`` in bytes a render may allocate; ``workers``
    the render processes that previews and deliveries share."""

    timeout: float = 2.0
    max_output: int = 10_000_000
    max_memory: int = 256_000_000
    workers: int = 2


@dataclass(frozen=True, slots=True)
class SubjectColumn:
    """One column of a subject list (rule file ``subjects: KIND: columns:``)."""

    label: str
    value: str = ""  # an expression over the subject (an attribute name at simplest)
    format: str = "auto"  # auto | text | date | datetime | money | number | role
    currency: str = ""  # for money: a code such as EUR, or an expression giving one
    role: str = ""  # format "role": the recipients in this role


@dataclass(frozen=True, slots=True)
class SubjectView:
    """How pages show the subjects of one kind: a title and the columns of lists."""

    kind: str
    title: str | None = None  # text with {{ EXPRESSION }} parts, or one expression
    columns: tuple[SubjectColumn, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleFile:
    path: str
    timezone: str = "UTC"
    calendars: dict[str, Calendar] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    limits: dict[str, str] = field(default_factory=dict)
    retention: dict[str, Duration] = field(default_factory=dict)
    webhooks: tuple[WebhookTarget, ...] = ()
    allow_private_targets: bool = False
    templates_dir: str | None = None
    render: RenderLimits = field(default_factory=RenderLimits)
    template_language: str | None = None  # the language of templates that declare none
    subjects: dict[str, SubjectView] = field(default_factory=dict)  # kind → how it shows

    def rule(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None


# --------------------------------------------------------------------------- app records


# Channel types that send email through a provider's HTTP API (duly.delivery.channels.sendgrid …):
# email like smtp's, to the recipient's email address.
EMAIL_API_TYPES = ("sendgrid", "postmark", "mailgun", "ses")


@dataclass(frozen=True, slots=True)
class Recipient:
    id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    locale: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)

    def address_for(self, channel: str, channel_type: str | None = None) -> str | None:
        """The address used on a channel (spec: Policies / Addresses)."""
        if channel == "email" or channel_type in ("smtp", "outbox", *EMAIL_API_TYPES):
            return self.email or self.addresses.get(channel)
        if channel in ("sms", "whatsapp") or channel_type in (
            "twilio-sms",
            "twilio-whatsapp",
            "whatsapp-cloud",
        ):
            return self.phone or self.addresses.get(channel)
        if channel_type == "inbox" or channel == "inbox":
            return self.id
        if channel_type == "webhook":
            # one endpoint for everyone unless the recipient has their own
            return self.addresses.get(channel) or self.id
        return self.addresses.get(channel)


# spec: Hold. An indefinite hold ("hold_until": "indefinite") ends when it is cleared. The
# engine and the store keep it as this instant, far beyond any real hold (and durations of at
# most MAX_DURATION_YEARS still fit after it); deliveries waiting for its end are due then.
# Every surface shows it as "indefinite" / "until the hold is cleared", never as a date (a
# time given as exactly this instant is read the same way).
HOLD_INDEFINITE = datetime(9000, 1, 1, tzinfo=UTC)


def held_until_cleared(t: datetime | None) -> bool:
    """True when ``t`` (a subject's ``hold_until`` or a pending delivery's due time) is the
    end of an indefinite hold: the moment it is cleared, not a date."""
    return t is not None and t == HOLD_INDEFINITE


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str
    key: str
    attributes: dict[str, Any] = field(default_factory=dict)
    recipients: dict[str, tuple[str, ...]] = field(default_factory=dict)
    revision: int = 1
    hold_until: datetime | None = None
    acknowledged: frozenset[str] = frozenset()  # rule names acknowledged on this subject

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.key}"


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    name: str
    subject: str  # "KIND/KEY"
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None
