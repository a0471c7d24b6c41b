"""The engine's front door: what the API, the CLI and the simulator call.

Each method is one write transaction: load what it needs, run the pure planner, store the
reconciled plan and its outcomes, then wake the dispatcher. State changes live here; the
dispatcher only loops.

:class:`Engine` is made of the parts of the engine package, each named for what it does:

- :mod:`duly.engine.service.inputs` — what callers hand it (``SubjectInput``, ``ReminderInput``),
  what it answers (``UpsertResult``, ``Conflict``), and how input is checked.
- :mod:`duly.engine.service.base` — rules, database, clock, store, and waking dispatchers.
- :mod:`duly.engine.service.planning` — recipients and subjects: upserts, deletes,
  acknowledgements, re-planning.
- :mod:`duly.engine.service.triggers` — events, and schedule rules' next occurrences.
- :mod:`duly.engine.service.operations` — an operator's actions on one delivery; one-off reminders.
"""

from __future__ import annotations

from duly.core.rules import timemath as timemath  # the schedule time math (patched by tests)
from duly.engine.service.inputs import (
    REMINDER_RULE,
    Conflict,
    ReminderInput,
    SubjectInput,
    UpsertResult,
)
from duly.engine.service.inputs import _validate_subject as _validate_subject
from duly.engine.service.operations import Operations
from duly.engine.service.planning import Planning
from duly.engine.service.triggers import Triggers

__all__ = ["REMINDER_RULE", "Conflict", "Engine", "ReminderInput", "SubjectInput", "UpsertResult"]


class Engine(Planning, Triggers, Operations):
    """Rules + store + clock. Thread-safe: every call opens its own transaction.

    ``Engine(rules, db, clock=None, on_planned=None)``: see :class:`duly.engine.service.base.EngineBase`.
    """
