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
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from duly import planner, webhooks
from duly.channels.base import Channel, DeliveryError, Message
from duly.engine.collect import collect_all, is_empty
from duly.engine.service import REMINDER_RULE, Engine
from duly.model import (
    Category,
    Outcome,
    Reason,
    Recipient,
    Rule,
    Step,
    Subject,
    WebhookAction,
)
from duly.rules import timemath
from duly.store.db import write_transaction
from duly.store.store import DeliveryRow

__all__ = ["Dispatcher", "message_id_for"]

# One-off reminders have no rule in the file: this stands in for it (default retries and
# grace, the row's own category).
_REMINDER = Rule(name=REMINDER_RULE, sends_message=True)

log = logging.getLogger("duly.dispatcher")

# Outcomes of sends that finish within this many seconds of each other share a transaction.
GROUP_COMMIT = 0.005
# With slow sends, a process claims about this many seconds of work at a time (claim_limit).
CLAIM_SECONDS = 5.0

DEFAULT_GRACE = {"reminder": timedelta(hours=12), "promotional": timedelta(hours=12)}


def message_id_for(identity: planner.Identity) -> str:
    """A stable, unkeyed hash of a delivery identity (retry jitter). Message-IDs come from
    ``Dispatcher.message_ids``: keyed with the installation's secret."""
    h = hashlib.sha256("\x1f".join(identity.db_key()).encode()).hexdigest()
    return h[:32]


def jitter(identity: planner.Identity, attempt: int) -> float:
    """A factor in [0.9, 1.1], derived from the identity so simulations are deterministic."""
    h = hashlib.sha256(f"{message_id_for(identity)}:{attempt}".encode()).digest()
    return 0.9 + 0.2 * (int.from_bytes(h[:8], "big") / 2**64)


@dataclass(slots=True)
class _Work:
    row: DeliveryRow
    rule: Rule | None = None
    step: Step | None = None
    subject: Subject | None = None
    recipient: Recipient | None = None
    event: dict[str, Any] | None = None
    message: Message | None = None
    reminder: dict[str, Any] | None = None
    collected: dict[str, Any] | None = None
    address: str | None = None
    tzname: str | None = None
    suppress: tuple[str, str, str] | None = None  # (address, channel, reason)
    rendered: Any = None
    probe: bool = False  # the breaker's half-open probe: a temporary failure costs no attempt
    released: bool = False  # stopping: given back unsent, pending again
    update: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Cycle:
    """What one batch's decisions share: last sends (spacing), suppressed addresses, and
    messages counted against rate limits so far."""

    gaps: dict[tuple[str, str, str, str], datetime | None] = field(default_factory=dict)
    suppressed: set[str] = field(default_factory=set)
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    batch_keys: set[tuple[str, str, str, str]] = field(default_factory=set)


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


class Dispatcher:
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
        # duly.preferences.PrefLinks: List-Unsubscribe on reminder and promotional email
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
        from duly.ids import MessageIds

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
        self.metrics: Any = None  # duly.metrics.Metrics when serving; None in simulations
        # While asleep: when it wakes by itself (next due time or max_sleep); None while
        # awake. New work due later than that needs no wake-up.
        self._sleep_until: datetime | None = None
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
                now = self.engine.clock.now()
                timeout = max_sleep if nxt is None else max(0.0, (nxt - now).total_seconds())
                if timeout > 0:
                    wait = min(timeout, max_sleep)
                    # set before waiting: a wake_for() in between sees it or finds the loop awake
                    self._sleep_until = now + timedelta(seconds=wait)
                    self._wake.wait(wait)
            except Exception:  # a clock that misbehaves; never end the loop
                log.exception("dispatcher wait failed")
                self._stop.wait(1.0)
            finally:
                self._sleep_until = None
        if self._pool:
            self._pool.shutdown(wait=True)
        log.info("dispatcher %s stopped", self.owner)

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
        if decided:
            self._record(decided, now)
        members = {id(g[0]): g for g in groups}
        for w in to_send:
            tried.update(x.row.id for x in members.get(id(w), [w]))
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

    def _send_all(
        self, to_send: list[_Work], members: dict[int, list[_Work]], now: datetime
    ) -> None:
        """Send each message (``send_workers`` at a time) and record each outcome as soon as
        it is known: sends that finish together are written in one transaction."""

        def finished(w: _Work) -> list[_Work]:
            group = members.get(id(w))
            if group is None:
                return [w]
            if w.released:
                for x in group:
                    x.released = True
            else:
                self._copy_outcome(w, group[1:])
            return group

        if not to_send:
            return
        if self._pool is None or len(to_send) == 1:
            # one at a time: a send that took a while is recorded before the next begins;
            # instant ones (outbox, null, simulations) are written GROUP_COMMIT at a time
            buf: list[_Work] = []
            since = 0.0
            for w in to_send:
                t0 = time.monotonic()
                self._send(w)
                self._tick()
                buf += finished(w)
                t1 = time.monotonic()
                since = since or t0
                if t1 - t0 >= GROUP_COMMIT / 5 or t1 - since >= GROUP_COMMIT:
                    self._record(buf, now)
                    buf, since = [], 0.0
            self._record(buf, now)
            return
        # At most ``send_workers`` messages are out at a time, counting those sent and not yet
        # recorded: a slot is freed only once its outcome is written. So a crash can leave
        # at most that many messages sent but unrecorded (the duplicate window), however
        # slow the commits are.
        queue = list(reversed(to_send))
        out: dict[Future[None], _Work] = {}
        while queue or out:
            while queue and len(out) < self.send_workers:
                w = queue.pop()
                out[self._pool.submit(self._send, w)] = w
            # group commit: what finished within GROUP_COMMIT seconds is written together
            done, _ = wait(set(out), timeout=GROUP_COMMIT, return_when=ALL_COMPLETED)
            if not done:
                continue
            self._tick()
            ready: list[_Work] = []
            for f in done:
                w = out[f]
                exc = f.exception()
                if exc is not None:  # _send guards itself; this is a bug, kept to this row
                    log.error("delivery %s: send failed unexpectedly", w.row.id, exc_info=exc)
                    self._final(
                        w,
                        self.engine.clock.now(),
                        "failed",
                        Reason.permanent_error,
                        attempts=w.row.attempts + 1,
                        last_error=repr(exc),
                    )
                ready += finished(w)
            self._record(ready, now)
            for f in done:
                del out[f]

    def _record(self, works: list[_Work], now: datetime) -> None:
        """Write these outcomes in one transaction: the rows (only those this process still
        holds), their history, webhooks, suppressions and fallbacks. A database error is
        retried (the outcome of a send must not be lost while the database restarts) for
        up to the lease; after that the rows' leases have run out and another process will
        retake them, recording the attempt as possibly sent."""
        released = [w for w in works if w.released]
        works = [w for w in works if w.update and not w.released]
        if released:
            self._release(released, now)
        if not works:
            return
        deadline = time.monotonic() + max(self.lease.total_seconds(), 5.0)
        delay = 0.2
        while True:
            try:
                with write_transaction(self.engine.db) as conn:
                    held = self.store.finish(conn, [w.update for w in works], self.owner)
                    ok = [w for w in works if w.row.id in held]
                    self.store.log(conn, [lg for w in ok for lg in w.logs])
                    self._emit_outcomes(conn, ok, self.engine.clock.now())
                    for w in ok:
                        if w.suppress is not None:
                            self.store.suppress(conn, *w.suppress, w.row.id, now)
                    self._fall_back(conn, ok, now)
                break
            except Exception:
                self._failed("record")
                if time.monotonic() + delay > deadline:
                    log.exception(
                        "could not record the outcomes of deliveries %s; they will be retaken "
                        "when their lease runs out",
                        [w.row.id for w in works],
                    )
                    return
                log.warning("recording outcomes failed; retrying in %.1f s", delay, exc_info=True)
                self._stop.wait(delay) if not self._stop.is_set() else time.sleep(delay)
                delay = min(delay * 2, 5.0)
        for w in works:
            if w.row.id not in held:
                self.stats.lost_lease += 1
                ident = w.row.identity
                log.error(
                    "delivery %s (rule %s, step %s, subject %s, recipient %s, channel %s, "
                    "Message-ID %s): outcome %s not recorded: this process no longer holds "
                    "the row (its lease ran out and another process retook it)",
                    w.row.id,
                    ident.rule,
                    ident.step or "-",
                    ident.subject or "-",
                    ident.recipient or "-",
                    ident.channel or "-",
                    w.update.get("message_id") or w.row.message_id,
                    w.update.get("state"),
                )
                if self.metrics is not None:
                    self.metrics.error("lost_lease")
        self._after_record([w for w in works if w.row.id in held])

    def _after_record(self, ok: list[_Work]) -> None:
        """Tell the simulation and the metrics what was recorded."""
        if self.on_outcome is not None:
            for w in ok:
                for lg in w.logs:
                    if lg.get("kind") == "outcome":
                        self.on_outcome(w.row, lg)
        if self.metrics is not None:
            self.metrics.recorded([(w.row, lg) for w in ok for lg in w.logs])

    def _release(self, works: list[_Work], now: datetime) -> None:
        """Stopping: give back rows claimed but not sent."""
        self._release_ids([w.row.id for w in works])

    def _release_ids(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            with write_transaction(self.engine.db) as conn:
                n = self.store.release(conn, ids, self.owner, self.engine.clock.now())
            self.stats.released += n
        except Exception:  # their leases run out and another process takes them
            log.warning("could not give back %d unsent deliveries", len(ids), exc_info=True)

    # ------------------------------------------------------------------ policies

    def _final(
        self, w: _Work, now: datetime, state: str, reason: Reason | None, **extra: Any
    ) -> None:
        w.update = {
            "_id": w.row.id,
            "state": state,
            "reason": reason.value if reason else None,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
            **extra,
        }
        w.logs.append(
            {
                "delivery_id": w.row.id,
                "at": now,
                "kind": "outcome",
                "outcome": state,
                "reason": reason.value if reason else None,
                "attempt": extra.get("attempts", w.row.attempts),
                "title": extra.get("title"),
                "message_id": extra.get("message_id"),
                "planned_at": w.row.planned_at,
            }
        )
        if state == Outcome.sent:
            self.stats.sent += 1
        elif state == Outcome.failed:
            self.stats.failed += 1
        elif state == Outcome.skipped:
            self.stats.skipped += 1
        elif state == Outcome.cancelled:
            self.stats.cancelled += 1

    def _defer(self, w: _Work, now: datetime, due: datetime, **extra: Any) -> None:
        w.update = {
            "_id": w.row.id,
            "state": "pending",
            "due_at": due,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
            **extra,
        }
        self.stats.deferred += 1

    def _decide_guarded(self, w: _Work, now: datetime, cycle: _Cycle) -> str:
        """``_decide`` for one row; a failure (a bug, a database error) stays with that row:
        it is logged with the delivery's id, recorded as its last error, and the row waits
        a minute before it is tried again. The rest of the batch goes on."""
        try:
            return self._decide(w, now, cycle)
        except Exception as exc:
            log.exception("delivery %s: deciding what to do failed", w.row.id)
            self._failed("decide")
            w.logs.clear()
            self._defer(w, now, now + timedelta(seconds=60), last_error=f"internal error: {exc!r}")
            return ""

    def _apply_set_guarded(self, w: _Work, now: datetime) -> None:
        try:
            self._apply_set(w, now)
        except _LeaseLost:
            self.stats.lost_lease += 1
            log.error(
                "delivery %s (rule %s, subject %s): set not applied: another process retook "
                "the row after this one's lease ran out",
                w.row.id,
                w.row.identity.rule,
                w.row.identity.subject or "-",
            )
        except Exception as exc:
            log.exception("delivery %s: applying its set/webhook actions failed", w.row.id)
            self._failed("set")
            w.logs.clear()
            self._defer(w, now, now + timedelta(seconds=60), last_error=f"internal error: {exc!r}")
            try:
                self._record([w], now)
            except Exception:  # its lease runs out; another cycle retakes it
                log.exception("delivery %s: could not record the failure", w.row.id)

    def _decide(self, w: _Work, now: datetime, cycle: _Cycle) -> str:
        """Apply the policies in spec order. Returns "render" (its message is to be rendered
        and sent), "batch", "set", or "" (decided)."""
        rf = self.engine.rules
        ident, rule, step = w.row.identity, w.rule, w.step
        if rule is None or (ident.step is not None and step is None):
            self._final(w, now, "cancelled", Reason.rule_changed)
            return ""
        if ident.subject is not None and w.subject is None:
            self._final(w, now, "cancelled", Reason.subject_deleted)
            return ""
        tzname = planner.rule_zone(rf, rule, w.recipient)
        if w.subject is not None:
            ok, err = planner.check_conditions(
                rule, step, w.subject, w.recipient, ident.recipient, tzname, now, w.event
            )
            if not ok:
                if err:
                    log.info("delivery %s: condition failed to evaluate: %s", w.row.id, err)
                self._final(w, now, "skipped", Reason.condition_false)
                return ""
        if ident.recipient is None:
            return "set"
        hold = w.subject.hold_until if w.subject is not None else None
        if hold is not None and now < hold and w.row.category != "transactional":
            # on hold (e.g. a promise to pay): event and one-off messages falling due during
            # it are skipped, except the latest of each rule, recipient and channel, which
            # waits for its end (date-relative ones were already moved by the planner)
            with write_transaction(self.engine.db) as conn:
                later = self.store.later_pending(conn, ident, w.row.planned_at, w.row.id)
                if not later:
                    self.store.skip_held(conn, ident, w.row.planned_at, w.row.id, hold, now)
            if later:
                self._final(w, now, "skipped", Reason.held)
            else:
                self._defer(w, now, hold)
            return ""
        if w.row.deadline_at is not None and now > w.row.deadline_at:
            self._final(w, now, "skipped", Reason.missed)
            return ""
        category = w.row.category
        grace = rule.grace.total_seconds_approx() if rule.grace is not None else None
        grace_td = timedelta(seconds=grace) if grace is not None else DEFAULT_GRACE.get(category)
        if grace_td is not None and now - w.row.due_at > grace_td:
            self._final(w, now, "skipped", Reason.missed)
            return ""
        window = planner.effective(step, rule, "window")
        if window is not None:
            tz = timemath.zone(tzname)
            if not timemath.in_window(now, window, tz, rf.calendars):
                nxt = timemath.next_window_opening(now, window, tz, rf.calendars)
                if w.row.deadline_at is not None and nxt > w.row.deadline_at:
                    self._final(w, now, "skipped", Reason.window_missed)
                else:
                    self._defer(w, now, nxt)
                return ""
        r = w.recipient
        if r is None:
            self._final(w, now, "skipped", Reason.no_address)
            return ""
        if not consent_allows(r, category, ident.channel or "", rule.name):
            self._final(w, now, "skipped", Reason.no_consent)
            return ""
        chan = self.channels.get(ident.channel or "")
        address = r.address_for(ident.channel or "", getattr(chan, "type", None))
        if not address:
            self._final(w, now, "skipped", Reason.no_address)
            return ""
        if address.lower() in cycle.suppressed:
            self._final(w, now, "skipped", Reason.suppressed)
            return ""
        if not self._within_limits(w, r.id, category, now, cycle):
            self._final(w, now, "skipped", Reason.rate_limited)
            return ""
        gaps = cycle.gaps
        if rule.min_gap is not None:
            k = (rule.name, ident.subject or "", r.id, ident.channel or "")
            last = gaps.get(k)
            gap = timedelta(seconds=rule.min_gap.total_seconds_approx())
            if last is not None and now < last + gap:
                self._defer(w, now, last + gap)
                return ""
            gaps[k] = now  # the next one in this same batch must wait
        if rule.kind == "cron" and rule.collect:
            # periods and dates of a schedule are the rule's zone, never the recipient's
            rule_tz = rule.timezone or rf.timezone
            w.collected = self._collect(rule, w.row.identity.occurrence, now, rule_tz)
            if rule.skip_empty and is_empty(w.collected):
                self._final(w, now, "skipped", Reason.empty)
                return ""
        if chan is None:
            self._final(
                w,
                now,
                "failed",
                Reason.permanent_error,
                last_error=f"channel {ident.channel!r} is not configured",
            )
            return ""
        breaker = self.breakers.get(ident.channel or "")
        wait, w.probe = breaker.acquire(now) if breaker is not None else (None, False)
        if wait is not None:
            self._defer(w, now, wait)  # no attempt spent: the channel is resting
            return ""
        w.address, w.tzname = address, tzname
        if planner.effective(step, rule, "batch") is not None:
            return "batch"
        return "render"  # rendered with the rest of the batch, in one round of renders

    def _within_limits(
        self, w: _Work, rid: str, category: str, now: datetime, cycle: _Cycle
    ) -> bool:
        """spec: Limits — per recipient and category, counted in the database so they hold
        across processes; a batched message counts once; transactional never limited."""
        lim = self.limits.get(category)
        if lim is None or category == "transactional":
            return True
        n, period = lim
        key = (rid, category)
        if key not in cycle.sent:
            with self.engine.db.connect() as conn:
                cycle.sent[key] = self.store.sent_count(conn, rid, category, now - period)
        if cycle.sent[key] >= n:
            return False
        ident = w.row.identity
        bkey = (ident.rule, ident.step or "", rid, ident.channel or "")
        batched = planner.effective(w.step, w.rule, "batch") is not None
        if not batched or bkey not in cycle.batch_keys:
            cycle.sent[key] += 1
            cycle.batch_keys.add(bkey)
        return True

    def _collect(self, rule: Rule, occurrence: Any, now: datetime, tzname: str) -> dict[str, Any]:
        """A schedule rule's collections, computed once per occurrence (shared by all its
        recipients in this process)."""
        key = (rule.name, str(occurrence))
        hit = self._collected.get(key)
        if hit is None:
            with self.engine.db.connect() as conn:
                hit = collect_all(conn, rule, now, timemath.zone(tzname))
            self._collected = {key: hit}  # keep only the latest occurrence
        return hit

    # ------------------------------------------------------------------ fallback

    def _fall_back(self, conn: Any, works: list[_Work], now: datetime) -> None:
        """spec: Fallback. A message that could not go out on its channel (no address or
        consent there, a suppressed address, a permanent failure) moves to the next channel
        of the chain: a row of its own, due now, with its own outcome."""
        desired = []
        for w in works:
            rule, ident = w.rule, w.row.identity
            if rule is None or ident.recipient is None:
                continue
            chain = planner.effective(w.step, rule, "fallback")
            if not chain or ident.channel not in chain:
                continue
            if (
                w.update.get("state") not in ("skipped", "failed")
                or w.update.get("reason") not in _FALLS_BACK
            ):
                continue
            i = chain.index(ident.channel)
            if i + 1 >= len(chain):
                continue
            nxt = ident._replace(channel=chain[i + 1])
            desired.append(
                planner.Desired(
                    nxt, w.row.planned_at, now, w.row.deadline_at, w.row.category, w.row.priority
                )
            )
        if desired:
            have = {
                e.identity
                for e in self.store.existing_identities(conn, [d.identity for d in desired])
            }
            self.store.apply(
                conn,
                [
                    planner.Action("create", d, state="pending")
                    for d in desired
                    if d.identity not in have
                ],
                now,
            )

    # ------------------------------------------------------------------ batches

    def _claim_batch_mates(self, rows: list[DeliveryRow], now: datetime) -> list[DeliveryRow]:
        """spec: Batch. For each claimed row of a batched step, also take the rows of the
        same step, recipient and channel due before the first + the window (they go out
        early, in the same message)."""
        rf = self.engine.rules
        firsts: dict[tuple[str, str, str, str], DeliveryRow] = {}
        for r in rows:
            rule = rf.rule(r.identity.rule)
            if rule is None or r.identity.recipient is None:
                continue
            step = rule.step(r.identity.step) if r.identity.step else None
            if planner.effective(step, rule, "batch") is None:
                continue
            i = r.identity
            key = (i.rule, i.step or "", i.recipient or "", i.channel or "")
            if key not in firsts or r.due_at < firsts[key].due_at:
                firsts[key] = r
        if not firsts:
            return []
        extra: list[DeliveryRow] = []
        with write_transaction(self.engine.db) as conn:
            for first in firsts.values():
                rule = rf.rule(first.identity.rule)
                assert rule is not None
                step = rule.step(first.identity.step) if first.identity.step else None
                batch = planner.effective(step, rule, "batch")
                until = first.due_at + timedelta(seconds=batch.window.total_seconds_approx())
                extra += self.store.claim_batch(
                    conn, first.identity, until, now, self.owner, self.lease
                )
        return extra

    def _render_batch(self, group: list[_Work], now: datetime) -> bool:
        """Render one message for the group, on its first (earliest) row; the template gets
        ``subjects``, the list. Returns False when rendering failed (each row then records
        the render error)."""
        lead = group[0]
        extra = {
            "subjects": [planner.subject_dict(w.subject) for w in group if w.subject is not None],
            "batch": {"size": len(group)},
        }
        ok = (
            self._render(lead, now, lead.address or "", lead.tzname or "UTC", extra=extra) == "send"
        )
        if not ok:
            self._copy_outcome(lead, group[1:])
            return False
        assert lead.message is not None
        lead.message.headers["X-Duly-Batch-Size"] = str(len(group))
        return True

    def _copy_outcome(self, lead: _Work, others: list[_Work]) -> None:
        """Deliveries sent together share the message, its id and its outcome; each keeps
        its own row."""
        for w in others:
            w.update = {**lead.update, "_id": w.row.id}
            w.logs = [
                {**lg, "delivery_id": w.row.id}
                | ({"planned_at": w.row.planned_at} if lg.get("kind") == "outcome" else {})
                for lg in lead.logs
            ]

    def _render(
        self,
        w: _Work,
        now: datetime,
        address: str,
        tzname: str,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Render one message (a batched group's): "send", or "" when it failed."""
        req = self._render_request(w, now, tzname, extra)
        if req is None:
            return self._rendered(w, now, address, None)
        try:
            out: Any = self.renderer.render(**req)  # type: ignore[union-attr]
        except Exception as exc:  # RenderError, or anything a template can raise
            out = exc
        return self._rendered(w, now, address, out)

    def _render_all(self, works: list[_Work], now: datetime) -> list[_Work]:
        """Render the messages of ``works`` (their address and zone decided) in one batch
        through the render processes; returns those ready to send. A render that fails or
        goes over a limit fails only its own delivery."""
        reqs: list[Any] = []
        need: list[_Work] = []
        ready: list[_Work] = []
        for w in works:
            req = self._render_request(w, now, w.tzname or "UTC", None)
            if req is None:
                if self._rendered(w, now, w.address or "", None) == "send":
                    ready.append(w)
            else:
                reqs.append(req)
                need.append(w)
        if not need:
            return ready
        many = getattr(self.renderer, "render_many", None)
        outs: list[Any]
        if many is not None and len(reqs) > 1:
            try:
                outs = list(many(reqs))
            except Exception as exc:  # the whole batch failed to render: each row says so
                log.exception("rendering a batch of %d messages failed", len(reqs))
                outs = [exc] * len(reqs)
        else:
            outs = []
            for req in reqs:
                try:
                    outs.append(self.renderer.render(**req))  # type: ignore[union-attr]
                except Exception as exc:
                    outs.append(exc)
        for w, out in zip(need, outs, strict=True):
            if self._rendered(w, now, w.address or "", out) == "send":
                ready.append(w)
        return ready

    def _render_request(
        self, w: _Work, now: datetime, tzname: str, extra: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The renderer's arguments for this delivery; None when nothing is rendered (a
        one-off reminder carries its own text, or there is no renderer)."""
        rule, step, ident = w.rule, w.step, w.row.identity
        assert rule is not None and w.recipient is not None
        if w.reminder is not None or self.renderer is None:
            return None
        ctx = self._context(w, now, tzname)
        if extra:
            ctx.update(extra)
        return {
            "name": planner.effective(step, rule, "template") or rule.name,
            "channel": ident.channel or "email",
            "context": ctx,
            "recipient": w.recipient,
            "timezone": tzname,
            "locale": w.recipient.locale or "en",
        }

    def _rendered(self, w: _Work, now: datetime, address: str, out: Any) -> str:
        """Build the message from a render's result (None: nothing rendered), or record the
        render's failure. Returns "send" or ""."""
        rule, ident = w.rule, w.row.identity
        assert rule is not None and w.recipient is not None
        mid = w.row.message_id or self.message_ids(ident)
        title = text = html = None
        if w.reminder is not None:
            title, text = w.reminder["title"], w.reminder["message"]
        elif isinstance(out, BaseException):
            self._final(
                w,
                now,
                "failed",
                Reason.render_error,
                attempts=w.row.attempts + 1,
                last_error=str(out),
                message_id=mid,
            )
            w.logs.insert(0, self._attempt_log(w, now, str(out)))
            return ""
        elif out is not None:
            title, text, html = out.title, out.text, out.html
        w.message = Message(
            to=address,
            title=title,
            text=text,
            html=html,
            message_id=mid,
            recipient_id=w.recipient.id,
            recipient_name=w.recipient.name,
            headers={
                "X-Duly-Delivery": str(w.row.id),
                "X-Duly-Rule": rule.name,
                "X-Duly-Step": ident.step or "",
                "X-Duly-Subject": ident.subject or "",
                "X-Duly-Occurrence": str(ident.occurrence),
                **self._unsubscribe_headers(w, rule.name, ident.channel or ""),
            },
            category=w.row.category,
        )
        return "send"

    def _unsubscribe_headers(self, w: _Work, rule: str, channel: str) -> dict[str, str]:
        """List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) on reminder and promotional
        email; none on transactional mail or other channels."""
        chan = self.channels.get(channel)
        is_email = channel == "email" or getattr(chan, "type", None) in ("smtp", "outbox")
        if self.preferences is None or not is_email or w.recipient is None:
            return {}
        return dict(
            self.preferences.headers(w.recipient.id, category=str(w.row.category), rule=rule)
        )

    def _context(self, w: _Work, now: datetime, tzname: str) -> dict[str, Any]:
        s = w.subject
        return {
            "subject": planner.subject_dict(s) if s else None,
            "attributes": s.attributes if s else {},
            "recipient": planner.recipient_dict(w.recipient),
            "event": w.event,
            "rule": {"name": w.rule.name if w.rule else None, "category": w.row.category},
            "step": {"name": w.row.identity.step, "occurrence": w.row.identity.occurrence},
            "now": now,
            "timezone": tzname,
            "delivery": {"id": w.row.id, "planned_at": w.row.planned_at, "due_at": w.row.due_at},
            **(w.collected or {}),
            "collected": w.collected or {},
        }

    def _attempt_log(
        self, w: _Work, now: datetime, error: str | None, receipt: str | None = None
    ) -> dict[str, Any]:
        return {
            "delivery_id": w.row.id,
            "at": now,
            "kind": "attempt",
            "attempt": w.row.attempts + 1,
            "error": error,
            "receipt": receipt,
        }

    def _send(self, w: _Work) -> None:
        assert w.message is not None and w.rule is not None
        chan = self.channels[w.row.identity.channel or ""]
        if self._stop.is_set():
            # stopping: what has not started goes back to the queue, no attempt spent
            w.released = True
            if w.probe and chan.name in self.breakers:
                self.breakers[chan.name].probing = False
            return
        msg = w.message
        attempt = w.row.attempts + 1
        t0 = time.perf_counter()
        try:
            receipt = chan.send(msg)
        except DeliveryError as exc:
            now = self.engine.clock.now()
            w.logs.append(self._attempt_log(w, now, str(exc)))
            breaker = self.breakers.get(chan.name)
            if breaker is not None and not exc.permanent:
                breaker.fail(now)
            if exc.permanent and exc.address:
                w.suppress = (msg.to, chan.name, str(exc))
            retry = w.rule.retry
            if w.probe and not exc.permanent and breaker is not None:
                # The breaker's probe found the channel still down: the outage is the
                # channel's, not this delivery's; it waits with the others and keeps its
                # attempts (spec: deliveries wait during an outage).
                w.logs[-1]["error"] = f"{exc} (circuit breaker probe; no attempt counted)"
                self._defer(
                    w,
                    now,
                    breaker.retry_at(now),
                    last_error=str(exc),
                    message_id=msg.message_id,
                )
                log.info("delivery %s: breaker probe on %s failed: %s", w.row.id, chan.name, exc)
                return
            common = {
                "attempts": attempt,
                "last_error": str(exc),
                "message_id": msg.message_id,
                "title": msg.title,
                "body_text": msg.text,
                "body_html": msg.html,
                "to_address": msg.to,
            }
            if exc.permanent:
                self._final(w, now, "failed", Reason.permanent_error, **common)
            elif attempt > retry.attempts:
                self._final(w, now, "failed", Reason.retries_exhausted, **common)
            else:
                base = retry.delay.total_seconds_approx() * (retry.factor ** (attempt - 1))
                wait = timedelta(seconds=base * jitter(w.row.identity, attempt))
                self._defer(w, now, now + wait, **common)
                self.stats.retried += 1
            log.info("delivery %s attempt %s failed: %s", w.row.id, attempt, exc)
            return
        except Exception as exc:  # a channel bug must not kill the dispatcher
            now = self.engine.clock.now()
            log.exception("channel %s raised", chan.name)
            w.logs.append(self._attempt_log(w, now, repr(exc)))
            self._final(
                w,
                now,
                "failed",
                Reason.permanent_error,
                attempts=attempt,
                last_error=repr(exc),
                message_id=msg.message_id,
            )
            return
        finally:
            took = time.perf_counter() - t0
            # a moving average of how long one send takes (claim_limit); approximate
            # under concurrency, which is all it needs to be
            last = self._send_seconds
            self._send_seconds = took if last is None else 0.8 * last + 0.2 * took
            if self.metrics is not None:
                self.metrics.sent(chan.name, took)
        now = self.engine.clock.now()
        if chan.name in self.breakers:
            self.breakers[chan.name].ok()
        rid = receipt.provider_id if receipt is not None else None
        w.logs.append(self._attempt_log(w, now, None, rid))
        self._final(
            w,
            now,
            "sent",
            None,
            attempts=attempt,
            sent_at=now,
            title=msg.title,
            body_text=msg.text,
            body_html=msg.html,
            to_address=msg.to,
            message_id=msg.message_id,
            receipt=rid,
            last_error=None,
        )
        log.info(
            "sent delivery %s (%s/%s) to %s on %s: %s",
            w.row.id,
            w.rule.name,
            w.row.identity.step or "-",
            w.row.identity.recipient,
            w.row.identity.channel,
            msg.title or "",
        )

    def _apply_set(self, w: _Work, now: datetime) -> None:
        """A row without recipient: the step's (or event / schedule rule's) `set` and
        `webhook` actions, in one transaction with its outcome."""
        changes = dict(w.row.changes or {})
        ref = w.row.identity.subject or ""
        action = w.step.webhook if w.step is not None else (w.rule.webhook if w.rule else None)
        with write_transaction(self.engine.db) as conn:
            # nothing to change (a webhook-only step, a schedule rule): _decide saw the subject
            ok = self.engine.apply_set(conn, ref, changes, now) if (ref and changes) else True
            if ok:
                self._final(w, now, "set", None, changes=changes)
                if action is not None:
                    self._emit_action(conn, w, action, changes, now)
            else:
                self._final(w, now, "cancelled", Reason.subject_deleted)
            held = self.store.finish(conn, [w.update], self.owner)
            if not held:  # another process retook the row: undo this one's changes
                raise _LeaseLost(w.row.id)
            self.store.log(conn, w.logs)
        self.stats.set += 1
        self._after_record([w])

    def _emit_action(
        self, conn: Any, w: _Work, action: WebhookAction, changes: dict[str, Any], now: datetime
    ) -> None:
        """Queue a `webhook: {url, body}` action; its body templates see the subject as the
        step's `set` left it."""
        subject = None
        if w.subject is not None:
            subject = planner.subject_dict(w.subject)
            subject["attributes"] = {**w.subject.attributes, **changes}
            subject["revision"] = w.subject.revision + (1 if changes else 0)
        ident = w.row.identity
        context = {
            "subject": subject,
            "event": w.event,
            "rule": {"name": ident.rule, "step": ident.step, "occurrence": ident.occurrence},
        }
        secret_env = webhooks.action_secret_env(self.engine.rules, action.url)
        webhooks.emit_action(
            conn,
            action.url,
            action.body,
            secret_env,
            now,
            context=context,
            limits=self.engine.rules.render,
        )

    def _emit_outcomes(self, conn: Any, works: list[_Work], now: datetime) -> None:
        """delivery.sent / delivery.failed webhooks, in the transaction that records them."""
        rf = self.engine.rules
        if not rf.webhooks:
            return
        for w in works:
            state = w.update.get("state")
            if state in (Outcome.sent, Outcome.failed):
                data = webhooks.delivery_data(w.row.id, w.row.identity, w.update, w.row.attempts)
                webhooks.emit(conn, rf, f"delivery.{state}", data, now)


class _LeaseLost(Exception):
    """A row this process claimed was retaken by another before its outcome was written."""


_FALLS_BACK = frozenset(
    {
        Reason.no_address.value,
        Reason.no_consent.value,
        Reason.suppressed.value,
        Reason.permanent_error.value,
    }
)


def _parse_limits(limits: Mapping[str, str]) -> dict[str, tuple[int, timedelta]]:
    """``{promotional: "1/7d"}`` → ``{"promotional": (1, 7 days)}``."""
    from duly.model import parse_duration

    out = {}
    for cat, text in (limits or {}).items():
        n, _, per = str(text).partition("/")
        out[cat] = (int(n), timedelta(seconds=parse_duration(per.strip()).total_seconds_approx()))
    return out


def consent_allows(r: Recipient, category: str, channel: str, rule: str) -> bool:
    """spec/rules.md Policies/Consent: transactional always; reminder unless opted out;
    promotional only with an explicit opt-in; per-channel and per-rule opt-outs."""
    if category == Category.transactional:
        return True
    c = r.consent or {}
    if category == Category.promotional and c.get("promotional") is not True:
        return False
    if category == Category.reminder and c.get("reminder") is False:
        return False
    if (c.get("channels") or {}).get(channel) is False:
        return False
    return (c.get("rules") or {}).get(rule) is not False
