"""Prometheus metrics: the dispatcher's instruments and gauges read from the database.

One :class:`Metrics` per runtime, with a ``CollectorRegistry`` of its own (never the
process-global one: two runtimes in one process — tests — must not share counters). The
dispatcher calls three hooks when it has one (``Dispatcher.metrics``; None in simulations,
which therefore never pay for it):

- :meth:`Metrics.claimed` after each claim transaction,
- :meth:`Metrics.sent` after each ``channel.send()``, successful or not,
- :meth:`Metrics.recorded` after the outcomes of a batch are committed,
- :meth:`Metrics.retaken` when it takes over rows whose sender died mid-send,
- :meth:`Metrics.error` when a stage fails and is recovered from.

Exposed at ``GET /metrics`` (no API key) by :mod:`duly.api.metrics`. Under ``duly serve
--workers N`` the dispatcher runs in the main process and the HTTP workers answer: the main
process publishes its dispatcher's instruments (:meth:`Metrics.dispatcher_exposition`, about
once a second, through the workers' shared directory) and each worker answers with them
(:meth:`Metrics.read_dispatcher_from`), so any worker shows what the one dispatcher did, at
most a second or two old. ``duly_receipts_total`` counts the callbacks the answering process
received itself.

==================================  =========  ==================================================
``duly_deliveries_total``           counter    outcomes this process recorded, by outcome,
                                               reason ("" for none) and channel ("" for none)
``duly_delivery_lateness_seconds``  histogram  sent_at − due_at of each sent delivery
``duly_claim_seconds``              histogram  one claim transaction
``duly_send_seconds``               histogram  one ``send()`` call, by channel
``duly_pending``                    gauge      deliveries planned and not yet sent (all
                                               processes: read from the database at scrape)
``duly_due_backlog``                gauge      of those, the ones already due (should be ~0)
``duly_outcome_unknown_total``      counter    deliveries retaken after their sender's lease
                                               ran out mid-send: they may have gone out twice
``duly_dispatcher_errors_total``    counter    failures recovered from, by stage (cycle,
                                               schedules, decide, set, record, lost_lease)
``duly_dispatcher_up``              gauge      1 while this process's dispatcher loop is alive
                                               (its thread runs and it makes progress)
==================================  =========  ==================================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from duly.store.db import Engine as Database
from duly.store.reading import pending_gauges

__all__ = ["LATENESS_BUCKETS", "Metrics"]

# 5 ms to 1 h: on-time delivery is measured in milliseconds; a backlog in minutes.
LATENESS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
# a database transaction or an SMTP/HTTP call
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        # what this process answers for itself: receipts, the gauges read from the database
        self.registry = CollectorRegistry()
        # the dispatcher's instruments and breakers: this process's, or (an HTTP worker of
        # `duly serve --workers N`) the main process's as it last published them
        self.dispatch_registry = CollectorRegistry()
        self._remote: Callable[[], bytes | None] | None = None
        r = self.dispatch_registry
        self.deliveries = Counter(
            "duly_deliveries",
            "Delivery outcomes recorded by this process's dispatcher.",
            ["outcome", "reason", "channel"],
            registry=r,
        )
        self.lateness = Histogram(
            "duly_delivery_lateness_seconds",
            "How late a delivery was sent: sent_at - due_at.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.claim_seconds = Histogram(
            "duly_claim_seconds",
            "Time to claim a batch of due deliveries (one transaction).",
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.send_seconds = Histogram(
            "duly_send_seconds",
            "Time of one send() on a channel, successful or not.",
            ["channel"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.unknown = Counter(
            "duly_outcome_unknown",
            "Deliveries retaken after their sender's lease ran out mid-send (may have gone out).",
            registry=r,
        )
        self.errors = Counter(
            "duly_dispatcher_errors",
            "Dispatcher failures recovered from, by stage.",
            ["stage"],
            registry=r,
        )
        self.receipts = Counter(
            "duly_receipts",
            "Delivery receipts (provider callbacks) recorded by this process, by status "
            "(unmatched: no delivery had the provider's message id).",
            ["status"],
            registry=self.registry,
        )
        self._watching = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ dispatcher hooks

    def receipt(self, status: str) -> None:
        self.receipts.labels(status=status).inc()

    def claimed(self, seconds: float, rows: int) -> None:
        self.claim_seconds.observe(seconds)

    def sent(self, channel: str, seconds: float) -> None:
        self.send_seconds.labels(channel).observe(seconds)

    def retaken(self, n: int) -> None:
        self.unknown.inc(n)

    def error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    def recorded(self, logs: Iterable[tuple[Any, dict[str, Any]]]) -> None:
        """``(DeliveryRow, log row)`` pairs of a committed batch; outcomes are counted."""
        for row, lg in logs:
            if lg.get("kind") != "outcome":
                continue
            outcome = lg.get("outcome") or ""
            self.deliveries.labels(
                outcome, lg.get("reason") or "", row.identity.channel or ""
            ).inc()
            if outcome == "sent" and isinstance(lg.get("at"), datetime):
                late = (lg["at"] - row.due_at).total_seconds()
                self.lateness.observe(max(0.0, late))

    # ------------------------------------------------------------------ scrape

    def watch(self, db: Database, now: Callable[[], datetime], up: Callable[[], bool]) -> None:
        """Add the gauges computed at scrape time (once; later calls do nothing)."""
        with self._lock:
            if not self._watching:
                self.registry.register(_StateCollector(db, now, up))
                self._watching = True

    def watch_breakers(self, breakers: Mapping[str, Any], now: Callable[[], datetime]) -> None:
        """Add each channel's circuit breaker (open or not, consecutive failures)."""
        with self._lock:
            if not getattr(self, "_breakers", False):
                self.dispatch_registry.register(_BreakerCollector(breakers, now))
                self._breakers = True

    def read_dispatcher_from(self, read: Callable[[], bytes | None]) -> None:
        """An HTTP worker of ``duly serve --workers N``: answer for the dispatcher's
        instruments with what ``read()`` returns (the main process's
        :meth:`dispatcher_exposition`; None: nothing published yet), not with this
        process's own, never used, dispatcher's."""
        self._remote = read

    def dispatcher_exposition(self) -> bytes:
        """The dispatcher's instruments and breakers, as Prometheus text."""
        return generate_latest(self.dispatch_registry)

    def exposition(self) -> bytes:
        own = generate_latest(self.registry)
        if self._remote is None:
            return own + self.dispatcher_exposition()
        return own + (self._remote() or b"")


class _BreakerCollector(Collector):
    def __init__(self, breakers: Mapping[str, Any], now: Callable[[], datetime]) -> None:
        self.breakers, self.now = breakers, now

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily(
            "duly_channel_breaker_open",
            "1 while a channel's circuit breaker keeps sends waiting (open or probing).",
            labels=["channel"],
        )
        failures = GaugeMetricFamily(
            "duly_channel_consecutive_failures",
            "Temporary failures in a row on a channel (the breaker opens at its threshold).",
            labels=["channel"],
        )
        now = self.now()
        for name, b in sorted(self.breakers.items()):
            opened.add_metric([name], 0 if b.state(now) == "closed" else 1)
            failures.add_metric([name], b.failures)
        yield opened
        yield failures


class _StateCollector(Collector):
    """Gauges read from the database at scrape time: one indexed count per scrape."""

    def __init__(self, db: Database, now: Callable[[], datetime], up: Callable[[], bool]) -> None:
        self.db, self.now, self.up = db, now, up

    def describe(self) -> list[Metric]:
        # Declares the names without querying at registration.
        return list(self._families(0, 0, 0))

    def collect(self) -> Iterator[Metric]:
        gauges = pending_gauges(self.db, self.now())
        if gauges is None:  # the database cannot be read (logged)
            yield from self._families(None, None, 1 if self.up() else 0)
            return
        pending, backlog = gauges
        yield from self._families(pending, backlog, 1 if self.up() else 0)

    @staticmethod
    def _families(pending: int | None, backlog: int | None, up: int) -> Iterator[Metric]:
        if pending is not None:
            yield GaugeMetricFamily(
                "duly_pending", "Deliveries planned and not yet sent (all processes).", pending
            )
        if backlog is not None:
            yield GaugeMetricFamily(
                "duly_due_backlog", "Pending deliveries whose due time has passed.", backlog
            )
        yield GaugeMetricFamily("duly_dispatcher_up", "1 while the dispatcher loop is alive.", up)
