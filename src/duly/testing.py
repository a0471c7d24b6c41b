"""Helpers for testing rules and the planner without a database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from duly.core.planner import Action, Existing, Identity

__all__ = ["MemoryPlan"]


class MemoryPlan:
    """The stored plan of one subject, kept in memory: applies reconciliation actions the
    way ``Store.apply`` does, so planner properties can be checked without a database."""

    def __init__(self) -> None:
        self.rows: dict[Identity, Existing] = {}
        self._next = 1

    def existing(self) -> list[Existing]:
        return list(self.rows.values())

    def apply(self, actions: Iterable[Action]) -> None:
        for a in actions:
            if a.kind == "create":
                d = a.desired
                assert d is not None and a.state is not None
                assert d.identity not in self.rows, f"duplicate identity {d.identity}"
                self.rows[d.identity] = Existing(
                    self._next, d.identity, a.state, a.reason, d.planned_at, d.due_at
                )
                self._next += 1
                continue
            ex = a.existing
            assert ex is not None
            d = a.desired
            if a.kind in ("move", "replan"):
                assert d is not None and a.state is not None or a.kind == "move"
                state = "pending" if a.kind == "move" else a.state
                self.rows[ex.identity] = Existing(
                    ex.id, ex.identity, state or "pending", a.reason, d.planned_at, d.due_at
                )
            else:
                state = "cancelled" if a.kind == "cancel" else "skipped"
                self.rows[ex.identity] = Existing(
                    ex.id,
                    ex.identity,
                    state,
                    a.reason,
                    d.planned_at if d else ex.planned_at,
                    d.due_at if d else ex.due_at,
                )

    def mark(self, identity: Identity, state: str) -> None:
        """Pretend the dispatcher finished a row (e.g. sent it)."""
        ex = self.rows[identity]
        self.rows[identity] = Existing(ex.id, identity, state, None, ex.planned_at, ex.due_at)

    def pending(self) -> dict[Identity, datetime]:
        return {i: e.due_at for i, e in self.rows.items() if e.state == "pending"}
