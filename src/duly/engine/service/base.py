"""What every part of the engine shares: rules, database, clock, store, and waking.

:class:`EngineBase` holds the state; the parts of :class:`duly.engine.service.Engine`
(planning, triggers, operations) add the calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from duly.core.clock import Clock, SystemClock
from duly.core.model import REMINDER_RULE, RuleFile
from duly.store.db import Connection, is_postgres
from duly.store.db import Engine as Database
from duly.store.notify import notify_planned
from duly.store.store import Store

__all__ = ["EngineBase"]

log = logging.getLogger("duly.engine")


class EngineBase:
    """Rules + store + clock. Thread-safe: every call opens its own transaction."""

    def __init__(
        self,
        rules: RuleFile,
        db: Database,
        *,
        clock: Clock | None = None,
        on_planned: Callable[[datetime | None], None] | None = None,
    ) -> None:
        self.rules = rules
        self.db = db
        self.clock = clock or SystemClock()
        self.store = Store(postgres=is_postgres(db))
        self._wake_hooks: list[Callable[[datetime | None], None]] = (
            [on_planned] if on_planned else []
        )
        # rules whose rows a re-plan keeps; a one-off reminder about a subject is no rule of
        # the file, and re-planning the subject must not cancel it (rule_changed)
        self._rule_names = {r.name for r in rules.rules} | {REMINDER_RULE}
        # schedule rules whose planning failed: name → (when, error); cleared on success
        self.schedule_errors: dict[str, tuple[datetime, str]] = {}

    def add_wake_hook(self, hook: Callable[[datetime | None], None]) -> None:
        """Called after a transaction that made deliveries pending (wakes dispatchers), with
        the earliest due time among them; None when not known (wake and look)."""
        self._wake_hooks.append(hook)

    def _wake(self, conn: Connection | None = None, due: datetime | None = None) -> None:
        if conn is not None and self.store.postgres:
            # the payload lets a dispatcher asleep until before ``due`` sleep on
            notify_planned(conn, due, self.clock.now())
        for h in self._wake_hooks:
            h(due)
