"""The planner's vocabulary: delivery identities, desired and stored rows, actions, plans.

:mod:`duly.core.planner` produces these, :mod:`duly.core.reconcile` compares them, and the store and
the engine persist and apply them. Plain named tuples and dataclasses: no behaviour beyond
the stored form of an :class:`Identity`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from duly.core.model import Reason

PENDING = "pending"
NEVER_SENT = ("cancelled", "skipped")
FINAL_SENT = ("sent", "failed", "set", "sending")


class Identity(NamedTuple):
    """(rule, step, occurrence, subject, recipient, channel). None stands for null.

    The planner makes one of these (and one Desired) per delivery, hundreds of thousands
    in a bulk import: named tuples are several times cheaper to build than frozen
    dataclasses."""

    rule: str
    step: str | None
    occurrence: int | str
    subject: str | None
    recipient: str | None
    channel: str | None

    def db_key(self) -> tuple[str, str, str, str, str, str]:
        """The stored form: "" for null, occurrence as JSON text."""
        return (
            self.rule,
            self.step or "",
            # an int's JSON text is its decimal (the common case: no json.dumps)
            str(self.occurrence) if type(self.occurrence) is int else json.dumps(self.occurrence),
            self.subject or "",
            self.recipient or "",
            self.channel or "",
        )

    @classmethod
    def from_db(
        cls, rule: str, step: str, occurrence: str, subject: str, recipient: str, channel: str
    ) -> Identity:
        return cls(
            rule,
            step or None,
            json.loads(occurrence),
            subject or None,
            recipient or None,
            channel or None,
        )


class Desired(NamedTuple):
    identity: Identity
    planned_at: datetime  # before windows and holds
    due_at: datetime  # after the window
    deadline_at: datetime | None
    category: str
    priority: int
    skip_reason: Reason | None = None  # no_date, bad_data, window_missed: recorded at planning
    changes: dict[str, Any] | None = None  # `set` rows


class Existing(NamedTuple):
    id: int
    identity: Identity
    state: str
    reason: str | None
    planned_at: datetime
    due_at: datetime


class Action(NamedTuple):
    """One change to the stored plan.

    kind: ``create`` (new row, state pending or skipped), ``move`` (pending row, new times),
    ``cancel`` / ``skip`` (pending row → final state with reason), ``replan`` (a never-sent row
    back to pending, or re-recorded as skipped with a new reason).
    """

    kind: str
    desired: Desired | None = None
    existing: Existing | None = None
    state: str | None = None
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Bad data on one subject (malformed date, unknown timezone, failing expression)."""

    subject: str
    rule: str | None
    field: str | None
    message: str


@dataclass(slots=True)
class Plan:
    desired: list[Desired] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # why a rule/step wants nothing: (rule, step) → reason; step None means the whole rule
    unwanted: dict[tuple[str, str | None], Reason] = field(default_factory=dict)
    # recipients each (rule, step) currently addresses
    addressed: dict[tuple[str, str | None], set[str]] = field(default_factory=dict)
    # rule names whose rows this plan speaks for (date-relative rules on this subject kind)
    scope: set[str] = field(default_factory=set)
    # (rule, step) → its fallback chain: rows on later channels are the dispatcher's
    fallback: dict[tuple[str, str | None], tuple[str, ...]] = field(default_factory=dict)
