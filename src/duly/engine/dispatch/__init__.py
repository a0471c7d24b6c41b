"""The dispatcher: claims due deliveries, applies policies, renders, sends, records.

It only loops: every state change goes through the store in short write transactions
(claim; then record), and sends happen outside any transaction.

Guarantees, and where they are kept:

- **Leases.** A claimed row carries a lease (``lease``, 30 s by default). While the loop
  makes progress, ``keep_leases()`` (called by the runtime's keeper thread every few
  seconds) renews the leases of every row this process still holds, so a slow provider
  never lets another process take a row that is being sent. A process that dies stops
  renewing; its rows are retaken when their lease runs out (within ``lease`` seconds), and
  ``Store.claim_due`` records on each an attempt whose outcome is unknown (it may have gone
  out). The resend reuses the delivery's Message-ID: at-least-once with the same id.
- **Outcomes per send.** Each send's outcome is written as soon as the provider answers
  (sends that finish together share one transaction: a group commit), so a crash can
  duplicate at most the sends in flight at that moment. A write that finds the row no longer
  held by this process (its lease was lost) is refused, logged with the delivery's identity,
  and leaves no log rows behind.
- **A loop that cannot die.** Every stage of a cycle is guarded: a database error backs off
  (1 s, doubling to 30 s) and the loop carries on. ``alive()`` says whether the loop is
  making progress; the runtime's keeper writes the heartbeat and renews leases only then,
  and restarts the loop's thread if it ever ends.
- **Stopping.** ``stop()`` lets the sends in flight finish and be recorded, and gives back
  (pending again, no attempt spent) every row claimed but not yet sent.

Where each concern lives (the other modules are mixins of ``Dispatcher``; this one is the
loop: claim, load a batch, decide, hand over to the senders, wake-ups, leases):

- ``policies.py``: the decisions made before a send, in spec order (conditions re-checked,
  hold, missed, window, consent, address, suppression, limits, spacing, collections,
  circuit breaker);
- ``batching.py``: batched steps (batch mates, one message for the group);
- ``rendering.py``: the template context and the message with its headers;
- ``sending.py``: sends with ``send_workers`` slots, the group commit, retries and backoff;
- ``outcomes.py``: outcomes and history, recorded for the rows still held; fallback;
  giving back unsent rows;
- ``actions.py``: the ``set`` and ``webhook`` actions of rows without recipient;
- ``breaker.py``: the circuit breaker of each channel; ``work.py``: a row's working state.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from duly.core import planner
from duly.core.model import Rule
from duly.delivery.channels.base import Channel
from duly.engine.dispatch.actions import ActionsMixin
from duly.engine.dispatch.batching import BatchingMixin
from duly.engine.dispatch.breaker import Breaker
from duly.engine.dispatch.outcomes import OutcomesMixin
from duly.engine.dispatch.policies import PoliciesMixin, _parse_limits
from duly.engine.dispatch.rendering import RenderingMixin
from duly.engine.dispatch.sending import SendingMixin, jitter, message_id_for
from duly.engine.dispatch.work import _Cycle, _Work
from duly.engine.service import REMINDER_RULE, Engine
from duly.store.db import write_transaction
from duly.store.store import DeliveryRow

__all__ = ["Dispatcher", "jitter", "message_id_for"]

# One-off reminders have no rule in the file: this stands in for it (default retries and
# grace, the row's own category).
_REMINDER = Rule(name=REMINDER_RULE, sends_message=True)

log = logging.getLogger("duly.dispatcher")

# With slow sends, a process claims about this many seconds of work at a time (claim_limit).
CLAIM_SECONDS = 5.0

# Before a sleep at least IDLE_GC_GAP long (and twice as long as the last such pass took),
# the garbage collector's full pass is run on the idle time, at most once every
# IDLE_GC_EVERY seconds, when one has been building up (_gc_due).
IDLE_GC_GAP = 0.5
IDLE_GC_EVERY = 1.0


def _gc_due() -> bool:
    """The collector is on and has moved objects into its oldest generation since its last
    full pass (two or more collections of the middle one): a full pass is coming, and
    would not be empty work."""
    return gc.isenabled() and gc.get_count()[2] >= 2


@dataclass(slots=True)
class Stats:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    deferred: int = 0
    retried: int = 0
    set: int = 0
    released: int = 0  # claimed, then given back unsent at a stop
    retaken: int = 0  # taken over after another process's lease expired mid-send
    lost_lease: int = 0  # outcomes refused: the row was no longer ours to record
    errors: int = 0  # cycles or stages that failed (database errors, bugs), recovered from


class Dispatcher(
    PoliciesMixin, BatchingMixin, RenderingMixin, SendingMixin, OutcomesMixin, ActionsMixin
):
    """Claims due deliveries and sees each to its outcome (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        channels: Mapping[str, Channel],
        renderer: Any | None = None,
        *,
        owner: str | None = None,
        batch_size: int = 200,
        lease: timedelta = timedelta(seconds=30),
        send_workers: int = 8,
        stall_after: float = 120.0,
        on_outcome: Any = None,
        breaker_failures: int = 5,
        breaker_cooldown: timedelta = timedelta(seconds=60),
    ) -> None:
        self.engine = engine
        self.channels = dict(channels)
        self.renderer = renderer
        # duly.delivery.preferences.PrefLinks: List-Unsubscribe on reminder and promotional email
        self.preferences: Any = None
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        if lease < timedelta(seconds=3):
            raise ValueError("the lease must be at least 3 seconds")
        self.lease = lease
        # the loop counts as stalled (no heartbeat, no lease renewals) after this long
        # without progress: a send or render stuck beyond every timeout
        self.stall_after = stall_after
        self._progress = time.monotonic()
        self._busy = False  # in a cycle (claiming, sending); False while asleep
        self._held: set[int] = set()  # ids of the rows being processed: their leases are renewed
        self._held_lock = threading.Lock()
        self.last_error: tuple[datetime, str] | None = None  # the latest recovered failure
        self.stats = Stats()
        # the installation's keyed Message-IDs (DULY_SECRET_KEY, else the database's secret);
        # simulations set a fixed key so their output is reproducible
        from duly.delivery.ids import MessageIds

        self.message_ids: Any = MessageIds(db=engine.db)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.send_workers = max(1, send_workers)
        # moving average of one send's duration (claim_limit); None until the first send
        self._send_seconds: float | None = None
        self._pool = ThreadPoolExecutor(send_workers) if send_workers > 1 else None
        self.on_outcome = on_outcome
        self._levels = sorted(planner.priority_levels(engine.rules), reverse=True)
        self._sched_at: datetime | None = None
        self.breakers: dict[str, Breaker] = {
            name: Breaker(breaker_failures, breaker_cooldown) for name in self.channels
        }
        self.limits = _parse_limits(engine.rules.limits)
        self._collected: dict[tuple[str, str], dict[str, Any]] = {}
        self.metrics: Any = None  # duly.engine.metrics.Metrics when serving; None in simulations
        # While asleep: when it wakes by itself (next due time or max_sleep); None while
        # awake. New work due later than that needs no wake-up.
        self._sleep_until: datetime | None = None
        self.idle_collections = 0  # full garbage collections run while idle (_sleep)
        self._collected_at = -IDLE_GC_EVERY
        self._gc_took = 0.0  # how long the last one took
        engine.add_wake_hook(self.wake_for)

    @property
    def store(self):  # noqa: ANN201
        return self.engine.store

    # ------------------------------------------------------------------ loop

    def wake(self) -> None:
        self._wake.set()

    def wake_for(self, due: datetime | None = None) -> None:
        """New work due at ``due`` (None: unknown). Wakes the loop unless it is asleep and
        will wake by itself before then: a subject planned a month out costs no cycle."""
        until = self._sleep_until
        if due is None or until is None or due < until:
            self._wake.set()

    def stop(self) -> None:
        """Stop after the batch in flight: every row it claimed is handled and recorded first."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def next_due(self) -> datetime | None:
        with self.engine.db.connect() as conn:
            return self.store.next_due(conn)

    def _tick(self) -> None:
        self._progress = time.monotonic()

    def alive(self) -> bool:
        """The loop is making progress: asleep waiting for work, or busy and some send,
        claim or stage finished within ``stall_after`` seconds. (Whether its thread runs
        is the runtime's to check.)"""
        return not self._busy or time.monotonic() - self._progress < self.stall_after

    def _failed(self, what: str) -> None:
        """A stage failed (logged with its traceback); remembered for /readyz."""
        self.stats.errors += 1
        self.last_error = (datetime.now(UTC), what)
        if self.metrics is not None:
            self.metrics.error(what)

    def run_forever(self, max_sleep: float = 30.0) -> None:
        """Send due work, then sleep until the next due time or until woken (new work
        planned by this process, or a NOTIFY from another). ``max_sleep`` only bounds the
        wait so a clock jump or a missed notification is recovered from.

        Nothing ends this loop but ``stop()``: every stage is guarded, and a failure (the
        database restarting, a bug) is logged and retried after a back-off of 1 s doubling
        up to 30 s; the connection pool replaces dead connections."""
        log.info("dispatcher %s started", self.owner)
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._busy = True
                self._tick()
                self.run_once()
                self._wake.clear()
                nxt = self.next_due()
                backoff = 1.0
            except Exception:  # the loop must survive a database restart or a bug
                log.exception("dispatcher cycle failed; retrying in %.0f s", backoff)
                self._failed("cycle")
                self._busy = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            finally:
                self._busy = False
                self._tick()
            if self._stop.is_set():  # stop() may have set the wake-up cleared above
                break
            try:
                self._sleep(nxt, max_sleep)
            except Exception:  # a clock that misbehaves; never end the loop
                log.exception("dispatcher wait failed")
                self._stop.wait(1.0)
            finally:
                self._sleep_until = None
        if self._pool:
            self._pool.shutdown(wait=True)
        log.info("dispatcher %s stopped", self.owner)

    def _sleep(self, nxt: datetime | None, max_sleep: float) -> None:
        """Sleep until ``nxt`` (at most ``max_sleep`` s), or until woken.

        Before a long enough sleep (``IDLE_GC_GAP``, and twice what the last one took, so
        it ends well before ``nxt``), the garbage collector's full pass is run here, on the
        idle time, instead of wherever it would next fall: in a process holding many
        objects it stalls every thread for 100-650 ms on this machine under load, and a full
        pass that falls in the middle of a burst of sends makes each of them that much later
        (and, in ``duly serve``, every inbox stream's event).

        The wait itself is one timed wait to ``nxt``: it ends 0.1-0.15 ms after it (timer
        slack and the wake-up), more when the machine is busy. Ending it early and spinning
        to ``nxt`` was tried: p50 0.12 -> 0.002 ms, but p90 0.15 -> 2 ms at load 6-8 (a
        spinning thread is preempted and waits a time slice; a sleeping one is woken first)
        and 0.2 ms of CPU per wake-up, so it was left out."""
        clock = self.engine.clock
        now = clock.now()
        timeout = max_sleep if nxt is None else (nxt - now).total_seconds()
        if timeout <= 0:
            return
        if (
            timeout >= max(IDLE_GC_GAP, 2 * self._gc_took)
            and time.monotonic() - self._collected_at >= IDLE_GC_EVERY
            and _gc_due()
        ):
            t0 = time.monotonic()
            gc.collect()
            self._collected_at = time.monotonic()
            self._gc_took = self._collected_at - t0
            self.idle_collections += 1
            log.debug("full garbage collection while idle: %.1f ms", self._gc_took * 1e3)
            now = clock.now()
            timeout = max_sleep if nxt is None else (nxt - now).total_seconds()
            if timeout <= 0 or self._wake.is_set():
                return
        wait = min(timeout, max_sleep)
        # set before waiting: a wake_for() in between sees it or finds the loop awake
        self._sleep_until = now + timedelta(seconds=wait)
        self._wake.wait(wait)

    def keep_leases(self) -> int:
        """Renew the leases of the rows this process is sending, if the loop is alive (a
        stalled loop lets its rows go, to be retaken by another process). Returns the number
        renewed; raises on a database error (the caller logs and tries again)."""
        if not self.alive():
            return 0
        with self._held_lock:
            ids = sorted(self._held)
        if not ids:
            return 0
        with write_transaction(self.engine.db) as conn:
            return self.store.renew_leases(
                conn, self.owner, ids, self.engine.clock.now(), self.lease
            )

    def run_once(self) -> int:
        """Process everything due now. Returns the number of rows handled."""
        total = 0
        try:
            self._check_schedules()
        except Exception:  # the schedules' trouble must not hold back other deliveries
            log.exception("planning schedule rules failed; other deliveries go on")
            self._failed("schedules")
            self._sched_at = self.engine.clock.now() + timedelta(seconds=30)
        while not self._stop.is_set():
            now = self.engine.clock.now()
            t0 = time.perf_counter()
            limit = self.claim_limit()
            with write_transaction(self.engine.db) as conn:
                rows = self.store.claim_due(conn, now, self.owner, self.lease, limit, self._levels)
            if self.metrics is not None:
                self.metrics.claimed(time.perf_counter() - t0, len(rows))
            if not rows:
                break
            self._process(rows)
            total += len(rows)
            if len(rows) < limit:
                break
        return total

    def claim_limit(self) -> int:
        """How many rows to claim at once: ``batch_size`` while sends are quick; when they are
        slow, only what this process can send in about ``CLAIM_SECONDS`` (at least one round
        of ``send_workers``), so the rest stays free for other processes instead of waiting
        behind this one's slow relay."""
        per_send = self._send_seconds
        if per_send is None:  # nothing measured yet: a small first claim finds out
            return min(self.batch_size, 2 * self.send_workers)
        if per_send <= 0:
            return self.batch_size
        can = int(CLAIM_SECONDS / per_send * self.send_workers)
        return max(self.send_workers, min(self.batch_size, can))

    def _check_schedules(self, force: bool = False) -> None:
        """Plan the next occurrence of schedule rules when the last one planned is due."""
        now = self.engine.clock.now()
        if force or self._sched_at is None or now >= self._sched_at:
            nxt = self.engine.plan_schedules()
            # nothing to plan (no schedule rules, or no recipients): look again in a minute
            self._sched_at = nxt if nxt is not None else now + timedelta(minutes=1)

    # ------------------------------------------------------------------ one batch

    def _process(self, rows: list[DeliveryRow]) -> None:
        """Decide, send and record one claimed batch. While it runs, its rows are renewed by
        ``keep_leases``; if it fails, they are not, and their leases run out: another cycle
        (here or elsewhere) retakes them and records their sends as possibly made."""
        ids = [r.id for r in rows]
        tried: set[int] = set()  # rows whose send began: never given back
        with self._held_lock:
            self._held.update(ids)
        try:
            self._process_held(rows, ids, tried)
        except Exception:
            # Nothing was sent for the rows not tried: back to pending at once, so a failed
            # stage (a database restart while loading the batch) delays them by one back-off,
            # not by a lease. The tried ones wait for their lease (their send may have gone).
            self._release_ids([i for i in ids if i not in tried])
            raise
        finally:
            with self._held_lock:
                self._held.difference_update(ids)

    def _process_held(self, rows: list[DeliveryRow], ids: list[int], tried: set[int]) -> None:
        rf = self.engine.rules
        now = self.engine.clock.now()
        retaken = sum(1 for r in rows if r.retaken)
        if retaken:
            self.stats.retaken += retaken
            if self.metrics is not None:
                self.metrics.retaken(retaken)
        mates = self._claim_batch_mates(rows, now)
        if mates:
            ids += [r.id for r in mates]
            with self._held_lock:
                self._held.update(r.id for r in mates)
            rows = rows + mates
        works = [_Work(r) for r in rows]
        with self.engine.db.connect() as conn:
            keys = {
                tuple(w.row.identity.subject.split("/", 1)) for w in works if w.row.identity.subject
            }
            subjects = self.store.get_subjects(conn, list(keys))  # type: ignore[arg-type]
            recipients = self.store.get_recipients(
                conn, {w.row.identity.recipient for w in works if w.row.identity.recipient}
            )
            event_ids = [
                w.row.identity.occurrence
                for w in works
                if isinstance(w.row.identity.occurrence, str)
            ]
            events = self.store.get_events(conn, event_ids) if event_ids else {}
            reminder_ids = [
                int(w.row.identity.occurrence)
                for w in works
                if w.row.identity.rule == REMINDER_RULE
            ]
            reminders = self.store.get_reminders(conn, reminder_ids) if reminder_ids else {}
            cycle = _Cycle()
            gaps = cycle.gaps
            for w in works:
                ident = w.row.identity
                if ident.rule == REMINDER_RULE:
                    w.reminder = reminders.get(int(ident.occurrence))
                    w.rule = _REMINDER if w.reminder is not None else None
                else:
                    w.rule = rf.rule(ident.rule)
                w.step = w.rule.step(ident.step) if (w.rule and ident.step) else None
                if ident.subject:
                    rec = subjects.get(tuple(ident.subject.split("/", 1)))  # type: ignore[arg-type]
                    w.subject = None if (rec is None or rec.deleted) else rec.subject
                if ident.recipient:
                    w.recipient = recipients.get(ident.recipient)
                if isinstance(ident.occurrence, str):
                    w.event = events.get(ident.occurrence)
                if w.rule is not None and w.rule.min_gap is not None and ident.recipient:
                    k = (ident.rule, ident.subject or "", ident.recipient, ident.channel or "")
                    if k not in gaps:
                        gaps[k] = self.store.last_sent(conn, *k)
            addrs = [
                a
                for w in works
                if w.recipient is not None
                for a in (w.recipient.email, w.recipient.phone, *w.recipient.addresses.values())
                if a
            ]
            cycle.suppressed = self.store.active_suppressions(conn, addrs) if addrs else set()
        to_send: list[_Work] = []
        to_render: list[_Work] = []
        sets: list[_Work] = []
        batches: dict[tuple[str, str, str, str], list[_Work]] = {}
        # Schedule rows come last (spec: Priority): they are decided after this batch's
        # `set` actions are applied, so their collections see those changes.
        later = [w for w in works if w.rule is not None and w.rule.kind == "cron"]
        first = [w for w in works if not (w.rule is not None and w.rule.kind == "cron")]
        for group_works in (first, later):
            if group_works is later:
                for w in sets:
                    self._apply_set_guarded(w, now)
                applied = set(map(id, sets))
            for w in group_works:
                decision = self._decide_guarded(w, now, cycle)
                if decision == "render":
                    to_render.append(w)
                elif decision == "set":
                    sets.append(w)
                elif decision == "batch":
                    ident = w.row.identity
                    key = (ident.rule, ident.step or "", ident.recipient or "", ident.channel or "")
                    batches.setdefault(key, []).append(w)
        to_send += self._render_all(to_render, now)
        groups = []
        for group in batches.values():
            group.sort(key=lambda x: (x.row.due_at, x.row.id))
            if self._render_batch(group, now):
                to_send.append(group[0])
                groups.append(group)
        # sets not applied yet (decided with the schedule rows): they change subjects and
        # re-plan, each in its own transaction
        for w in sets:
            if id(w) not in applied:
                self._apply_set_guarded(w, now)
        # What was decided without sending (skips, deferrals, render errors) is recorded
        # first; then each send's outcome as soon as its provider answers.
        set_ids = {id(w) for w in sets}
        sending = {id(w) for w in to_send} | {id(x) for g in groups for x in g}
        decided = [w for w in works if w.update and id(w) not in set_ids and id(w) not in sending]
        members = {id(g[0]): g for g in groups}
        for w in to_send:
            tried.update(x.row.id for x in members.get(id(w), [w]))
        # Local channels (outbox, inbox) send nothing out: their messages are recorded with
        # the decisions, the whole batch in one transaction.
        local = [w for w in to_send if self.is_local(w)]
        if local:
            to_send = [w for w in to_send if not self.is_local(w)]
            decided += self._send_local(local, members)
        if decided:
            self._record(decided, now)
        self._send_all(to_send, members, now)
        # An open-ended repeat is planned over a rolling horizon: each occurrence handled
        # moves the horizon on, so its subject is re-planned.
        rolling = sorted(
            {
                w.row.identity.subject
                for w in works
                if w.step is not None
                and w.step.repeat is not None
                and w.row.identity.subject
                and w.step.repeat.count is None
                and w.step.repeat.until is None
            }
        )
        if rolling:
            self.engine.replan(rolling)
        if any(w.rule is not None and w.rule.kind == "cron" for w in works):
            self._check_schedules(force=True)
