"""Plain words for the engine's codes, for the people who run duly.

Every delivery state, outcome, reason (core.model.Reason, extensions included) and channel
health (the circuit breaker's closed / open / half-open) has a sentence an office worker
understands; where it helps, the sentence names the subject's kind ("the invoice") and its
current status ("Not needed: the invoice is now paid"). The pages show these words and the
code beside them, small, in ``<code class="code">`` (see macros.html ``state``), so people
who search logs still find it. The API and the database keep the codes: this module only
reads them.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from duly.core.model import REMINDER_RULE, Reason

# A delivery's state (and "overdue", a pending row past its time; "unknown", an attempt
# whose result never came back) as a short badge.
STATES: dict[str, str] = {
    "pending": "Waiting to send",
    "sending": "Being sent",
    "sent": "Sent",
    "failed": "Failed",
    "skipped": "Not sent",
    "cancelled": "Cancelled",
    "set": "Data updated",
    "overdue": "Late",
    "unknown": "Result unknown",
}

# What the deliveries filter offers, in the order it offers them.
STATE_FILTER: dict[str, str] = {
    "pending": "Waiting to send",
    "overdue": "Late (waiting, past its time)",
    "sending": "Being sent",
    "sent": "Sent",
    "failed": "Failed",
    "skipped": "Not sent (skipped)",
    "cancelled": "Cancelled",
    "set": "Data updated (no message)",
}

# Why: "{kind}" is the subject's kind ("invoice"), "the item" when there is none.
_REASONS: dict[str, str] = {
    Reason.past: "Not sent: its time had already passed when it was planned",
    Reason.no_date: "Not sent: the {kind} has no date for this rule",
    Reason.condition_false: "Not needed: the {kind} no longer meets the rule's condition",
    Reason.no_consent: "Not sent: the recipient has not agreed to this kind of message",
    Reason.no_address: "Not sent: the recipient has no address for this channel",
    Reason.rate_limited: "Not sent: the recipient already had as many messages as allowed",
    Reason.window_missed: "Not sent: no allowed sending time came before its deadline",
    Reason.missed: "Not sent: too late, its sending time passed long ago",
    Reason.subject_deleted: "Not needed: the {kind} was deleted",
    Reason.recipient_removed: "Not needed: the recipient is no longer on the {kind}",
    Reason.render_error: "Failed: the message template has an error",
    Reason.permanent_error: "Failed: the provider refused the message",
    Reason.retries_exhausted: "Failed: every retry failed",
    Reason.manual: "By an operator, by hand",
    Reason.held: "Not sent: the {kind} is on hold",
    Reason.suppressed: "Not sent: the address is blocked (it bounced or complained)",
    Reason.empty: "Not sent: there was nothing to report",
    Reason.acknowledged: "Not needed: someone already acknowledged it",
    Reason.rule_changed: "Not needed: the rule that planned it changed or was removed",
    Reason.bad_data: "Not sent: the {kind}'s data is malformed",
}
REASONS: dict[str, str] = {str(k): v for k, v in _REASONS.items()}

# A status longer than this is not quoted in a sentence (the generic words are used).
_PLAIN_STATUS = 40


def subject_kind(subject: str | None) -> str | None:
    """The kind of a subject reference ``kind/key`` (None for none)."""
    if not subject or "/" not in subject:
        return None
    return subject.split("/", 1)[0] or None


def _kind_words(subject: str | None) -> str:
    kind = subject_kind(subject)
    return kind.replace("_", " ").replace("-", " ") if kind else "item"


def state_words(state: str | None) -> str:
    """A delivery state (or outcome) in words; an unknown code is returned as it is."""
    if not state:
        return ""
    return STATES.get(str(state), str(state))


def reason_words(
    reason: str | None, subject: str | None = None, status: object | None = None
) -> str:
    """A reason in words, naming the subject's kind; for ``condition_false`` with the
    subject's current ``status`` known, what it is now ("Not needed: the invoice is now
    paid"). An unknown code is returned as it is."""
    if not reason:
        return ""
    kind = _kind_words(subject)
    if reason == Reason.condition_false and isinstance(status, str | int | float) and status != "":
        text = str(status).replace("_", " ")
        if len(text) <= _PLAIN_STATUS:
            return f"Not needed: the {kind} is now {text}"
    template = REASONS.get(str(reason))
    if template is None:
        return str(reason)
    return template.format(kind=kind)


def code_of(state: str | None, reason: str | None = None) -> str:
    """The codes as a log shows them: ``failed`` or ``failed: retries_exhausted``."""
    if state and reason:
        return f"{state}: {reason}"
    return str(state or reason or "")


def rule_words(name: str | None) -> str:
    """A rule's name for people: the engine's one-off reminders rule in words."""
    if name == REMINDER_RULE:
        return "One-off reminder"
    return name or ""


def breaker_words(state: str, until: datetime | None = None, tz: ZoneInfo | None = None) -> str:
    """A channel's health: "Working", "Failing, paused until 10:42", "Testing again"."""
    if state == "closed":
        return "Working"
    if state == "open":
        if until is not None:
            t = until.astimezone(tz) if tz is not None else until
            return f"Failing, paused until {t:%H:%M}"
        return "Failing, paused"
    if state == "half-open":
        return "Testing again"
    return state


BREAKER_HINTS: dict[str, str] = {
    "closed": "messages go out normally",
    "open": "after repeated failures duly waits before trying again; deliveries wait, none is lost",
    "half-open": "one delivery is being tried to see whether the channel is back",
}


def filters() -> dict[str, object]:
    """The Jinja filters this module gives the pages."""
    return {
        "state_words": state_words,
        "reason_words": reason_words,
        "rule_words": rule_words,
        "code_of": code_of,
    }
