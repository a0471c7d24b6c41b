"""The circuit breaker of a channel (spec: Circuit breaker).

It decides whether a send on its channel may start now (``acquire``: closed, resting while
open, or this send is the half-open probe) and when a delivery that met it open tries again
(``retry_at``). The dispatcher keeps one per channel (``Dispatcher.breakers``), asks it
before each send (policies.py) and tells it each send's result (sending.py). Thread-safe:
sends report to it from the worker threads.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

__all__ = ["Breaker"]


class Breaker:
    """spec: Circuit breaker. After ``failures`` consecutive temporary failures on a channel,
    sending on it pauses for ``cooldown``; then one delivery probes: success closes the
    breaker, failure opens it again. Deliveries wait meanwhile; they do not fail and it
    costs them no attempt."""

    def __init__(self, failures: int = 5, cooldown: timedelta = timedelta(seconds=60)) -> None:
        self.threshold, self.cooldown = failures, cooldown
        self.failures = 0
        self.open_until: datetime | None = None
        self.probing = False
        self._lock = threading.Lock()

    def acquire(self, now: datetime) -> tuple[datetime | None, bool]:
        """(when to try again, or None to send now; whether this send is the probe)."""
        with self._lock:
            if self.open_until is None:
                return None, False
            if now < self.open_until:
                return self.open_until, False
            if not self.probing:
                self.probing = True  # this one is the probe
                return None, True
            return now + min(self.cooldown, timedelta(seconds=5)), False

    def retry_at(self, now: datetime) -> datetime:
        """When a delivery that failed while the breaker is open should try again."""
        with self._lock:
            return self.open_until if self.open_until and self.open_until > now else now

    def ok(self) -> None:
        with self._lock:
            self.failures, self.open_until, self.probing = 0, None, False

    def fail(self, now: datetime) -> None:
        with self._lock:
            self.failures += 1
            self.probing = False
            if self.failures >= self.threshold:
                self.open_until = now + self.cooldown

    def state(self, now: datetime) -> str:
        with self._lock:
            if self.open_until is None:
                return "closed"
            return "open" if now < self.open_until else "half-open"
