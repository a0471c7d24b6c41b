"""The engine's front door: what the API, the CLI and the simulator call.

Each method is one write transaction: load what it needs, run the pure planner, store the
reconciled plan and its outcomes, then wake the dispatcher. State changes live here; the
dispatcher only loops.

:class:`Engine` is made of the parts of the engine package, each named for what it does:

- :mod:`duly.engine.inputs` — what callers hand it (``SubjectInput``, ``ReminderInput``),
  what it answers (``UpsertResult``, ``Conflict``), and how input is checked.
- :mod:`duly.engine.base` — rules, database, clock, store, and waking dispatchers.
- :mod:`duly.engine.planning` — recipients and subjects: upserts, deletes,
  acknowledgements, re-planning.
- :mod:`duly.engine.triggers` — events, and schedule rules' next occurrences.
- :mod:`duly.engine.operations` — an operator's actions on one delivery; one-off reminders.
"""

from __future__ import annotations

from duly.engine.inputs import (
    REMINDER_RULE,
    Conflict,
    ReminderInput,
    SubjectInput,
    UpsertResult,
)
from duly.engine.inputs import _validate_subject as _validate_subject
from duly.engine.operations import Operations
from duly.engine.planning import Planning
from duly.engine.triggers import Triggers
from duly.rules import timemath as timemath  # the schedule time math (patched by tests)

__all__ = ["REMINDER_RULE", "Conflict", "Engine", "ReminderInput", "SubjectInput", "UpsertResult"]


class Engine(Planning, Triggers, Operations):
    """Rules + store + clock. Thread-safe: every call opens its own transaction.

    ``Engine(rules, db, clock=None, on_planned=None)``: see :class:`duly.engine.base.EngineBase`.
    """
