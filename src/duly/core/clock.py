"""One injectable clock for every component, so a simulation runs the real engine over
weeks of virtual time in seconds."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class VirtualClock:
    """A clock that moves only when told to (simulation, tests)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("VirtualClock needs an aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, t: datetime) -> None:
        with self._lock:
            if t < self._now:
                raise ValueError(f"virtual time cannot go back from {self._now} to {t}")
            self._now = t.astimezone(UTC)
