"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from duly.core.errors import InvalidInput
from duly.core.validation import check_instant, check_json

Category = Literal["transactional", "reminder", "promotional"]
Id = Field(min_length=1, max_length=200)


def _instant(t: datetime) -> datetime:
    try:
        check_instant(t, "value")
    except InvalidInput as exc:
        raise ValueError(str(exc).removeprefix("value ")) from None
    return t


def _json_object(v: dict[str, Any]) -> dict[str, Any]:
    try:
        check_json(v, "")
    except InvalidInput as exc:
        raise ValueError(str(exc).lstrip(": ")) from None
    return v


# An instant with a UTC offset, in the years 1900 to 9998 once in UTC (duly.core.validation).
Instant = Annotated[AwareDatetime, AfterValidator(_instant)]
HOLD_DOC = (
    'The end of a hold: a time, "indefinite" (until the hold is cleared), or null (not held).'
)
_HOLD_JSON: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": ["indefinite"]},
        {"type": "string", "format": "date-time"},
    ]
}


def _hold(v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """``"indefinite"`` as it is; anything else read as the time it must be (errors name
    the field itself, not a branch of a union)."""
    return v if v == "indefinite" else handler(v)


# A hold_until given: "indefinite" (until cleared, spec: Hold) or an instant as above (the
# batch's items leave the range check to the engine, item by item)
HoldUntil = Annotated[Instant, WrapValidator(_hold), WithJsonSchema(_HOLD_JSON)]
HoldUntilItem = Annotated[AwareDatetime, WrapValidator(_hold), WithJsonSchema(_HOLD_JSON)]
# ... and as the API writes it (the client reads either)
HoldUntilOut = Annotated[Literal["indefinite"] | datetime, WithJsonSchema(_HOLD_JSON)]
# A subject's attributes, an event's data: at most 32 levels deep and 1 MiB as JSON, finite
# numbers, text without NUL or lone surrogates (duly.core.validation).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Consent(Strict):
    promotional: bool | None = None
    reminder: bool | None = None
    channels: dict[str, bool] = Field(default_factory=dict)
    rules: dict[str, bool] = Field(default_factory=dict)


class RecipientIn(Strict):
    name: str | None = Field(None, max_length=500)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40)
    timezone: str | None = Field(None, max_length=64, examples=["Europe/London"])
    locale: str | None = Field(None, max_length=35, examples=["en_GB"])
    addresses: dict[str, str] = Field(default_factory=dict)
    consent: Consent = Field(default_factory=Consent)


class RecipientPut(RecipientIn):
    """The body of ``PUT /v1/recipients/{id}``: a timeline's recipient line, whose ``id``
    may be given (it must then be the path's)."""

    id: str | None = Field(None, min_length=1, max_length=200)


class RecipientOut(RecipientIn):
    id: str


class SubjectIn(Strict):
    attributes: JsonObject = Field(default_factory=dict)
    recipients: dict[str, str | list[str]] = Field(default_factory=dict)
    hold_until: HoldUntil | None = Field(None, description=HOLD_DOC)


class SubjectBatchItem(SubjectIn):
    kind: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=1, max_length=200)
    # Checked item by item by the engine (duly.core.validation), so one bad item is refused in
    # its result and never stops the rest.
    attributes: dict[str, Any] = Field(default_factory=dict)
    hold_until: HoldUntilItem | None = Field(None, description=HOLD_DOC)


class SubjectBatchIn(Strict):
    subjects: list[SubjectBatchItem] = Field(min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    """Every 4xx answer."""

    error: ErrorBody


class BatchResult(BaseModel):
    kind: str
    key: str
    ok: bool
    revision: int | None = None
    planned: int | None = None
    error: ErrorBody | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]
    ok: int
    failed: int


class RecipientBatchItem(RecipientIn):
    id: str = Field(min_length=1, max_length=200)


class RecipientBatchIn(Strict):
    recipients: list[RecipientBatchItem] = Field(min_length=1, max_length=1000)


class RecipientBatchResult(BaseModel):
    id: str
    ok: bool
    created: bool | None = None
    error: ErrorBody | None = None


class RecipientBatchOut(BaseModel):
    results: list[RecipientBatchResult]
    ok: int
    failed: int


class DeliveryOut(BaseModel):
    id: int
    rule: str
    step: str | None
    occurrence: int | str
    subject: str | None
    recipient: str | None
    channel: str | None
    state: str
    reason: str | None
    category: str
    planned_at: datetime
    due_at: datetime | None = Field(
        description="When it is due; null while it waits for an indefinite hold to be "
        "cleared (held_until_cleared)."
    )
    held_until_cleared: bool = Field(
        default=False,
        description="It waits for the end of an indefinite hold: it goes when the hold is "
        "cleared (at once, or at its own planned time if that is later).",
    )
    sent_at: datetime | None = None
    attempts: int
    last_error: str | None = None
    title: str | None = None
    message_id: str | None = None


class Attempt(BaseModel):
    attempt: int | None
    at: datetime
    error: str | None
    receipt: str | None
    outcome: str | None = Field(
        default=None,
        description='"unknown": the process sending it stopped before recording what the '
        "provider answered, so the message may have gone out (a resend keeps its Message-ID)",
    )


class HistoryItem(BaseModel):
    at: datetime
    outcome: str | None
    reason: str | None


class Content(BaseModel):
    to: str | None
    title: str | None
    text: str | None
    html: str | None


class ReceiptOut(BaseModel):
    """What the provider reported after accepting the message (a status callback)."""

    status: str = Field(
        description="accepted | delivered | read | undelivered | bounced | complained"
    )
    hard: bool = Field(description="a permanent failure of the address (it is suppressed)")
    provider: str
    provider_message_id: str
    occurred_at: datetime
    received_at: datetime
    detail: str | None = None


class DeliveryDetail(DeliveryOut):
    deadline_at: datetime | None = None
    receipt: str | None = None
    content: Content
    attempt_log: list[Attempt]
    possibly_sent_before: bool = Field(
        default=False,
        description="An attempt's outcome is unknown: the message may have gone out more "
        "than once (each time with the same Message-ID).",
    )
    history: list[HistoryItem]
    changes: dict[str, Any] | None = None
    receipts: list[ReceiptOut] = Field(
        default_factory=list,
        description="provider reports (delivered, bounced …), in the order they happened",
    )


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class SubjectOut(BaseModel):
    kind: str
    key: str
    revision: int
    attributes: dict[str, Any]
    recipients: dict[str, list[str]]
    hold_until: HoldUntilOut | None = Field(description=HOLD_DOC)
    acknowledged: list[str] = Field(default_factory=list)
    plan: list[DeliveryOut]
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class SubjectDetail(SubjectOut):
    history: list[DeliveryOut]
    errors: list[dict[str, Any]] = Field(default_factory=list)


class EventIn(Strict):
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=3, max_length=301, examples=["invoice/INV-1"])
    data: JsonObject = Field(default_factory=dict)


class EventOut(BaseModel):
    id: str
    accepted: bool = Field(description="false when an event with this id was seen before")


class ReminderIn(Strict):
    title: str = Field(min_length=1, max_length=500)
    message: str = Field("", max_length=20000)
    recipients: list[str] = Field(min_length=1, max_length=1000)
    send_at: Instant
    channels: list[str] = Field(default_factory=lambda: ["email"], min_length=1, max_length=20)
    subject: str | None = Field(None, max_length=301)
    category: Category = "reminder"


class ReminderPatch(Strict):
    title: str | None = Field(None, min_length=1, max_length=500)
    message: str | None = Field(None, max_length=20000)
    recipients: list[str] | None = Field(None, min_length=1, max_length=1000)
    send_at: Instant | None = None
    channels: list[str] | None = Field(None, min_length=1, max_length=20)
    subject: str | None = Field(None, max_length=301)
    category: Category | None = None


class ReminderCounts(BaseModel):
    total: int
    pending: int
    sent: int
    overdue: int
    failed: int


class ReminderOut(BaseModel):
    id: int
    title: str
    message: str
    recipients: list[str]
    send_at: datetime
    channels: list[str]
    subject: str | None
    category: str
    created_at: datetime
    updated_at: datetime
    counts: ReminderCounts
    deliveries: list[DeliveryOut]


class RuleOut(BaseModel):
    name: str
    kind: str
    subject: str | None
    category: str
    channels: list[str]
    steps: list[str | None]
    trigger: str | None = None
    line: int


class RulesOut(BaseModel):
    path: str
    timezone: str
    rules: list[RuleOut]


class RulesCheckIn(Strict):
    rules: str = Field(description="the rule file's YAML text", max_length=1_000_000)


class RuleErrorOut(BaseModel):
    file: str
    line: int | None
    field: str
    message: str


class RulesCheckOut(BaseModel):
    ok: bool
    rules: int = 0
    errors: list[RuleErrorOut] = Field(default_factory=list)


class SimulateIn(Strict):
    rules: str = Field(max_length=1_000_000)
    timeline: str = Field(description="JSON lines, as in a timeline file", max_length=5_000_000)
    until: Instant | None = None
    templates: dict[str, str] | None = Field(
        None, description="template files by name (e.g. 'x.email.txt'); none: no rendering"
    )


class SimulateOut(BaseModel):
    rows: list[dict[str, Any]]
    warnings: list[str]
