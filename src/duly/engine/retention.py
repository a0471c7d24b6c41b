"""Retention: old delivery records are pruned (rule file ``retention:``).

How long a record is kept depends on its outcome: ``retention: {sent: 90d, failed: 180d,
skipped: 180d}`` are the defaults, ``cancelled`` follows ``skipped`` and ``set`` follows
``sent`` unless the rule file names them. A record is *older than the cut-off* when both its
last change (``updated_at``: when its outcome was recorded) and its due time lie before
``now - retention``.

What a prune does to an old record depends on whether its identity must stay:

- **sent, failed, set** — the identity row stays (a delivery is sent at most once, ever: the
  planner must keep finding the row, and ``min_gap`` reads ``sent_at``). Its content is
  cleared — ``title``, ``body_text``, ``body_html``, ``to_address``, ``receipt``,
  ``last_error``, ``changes`` become NULL — and its ``delivery_log`` rows older than the
  cut-off are deleted. A failed identity is kept too: the planner never plans a failed
  identity again, and without its row a later upsert could plan it as new and send it.
- **skipped, cancelled** — the row and its log are deleted. Such an identity was never
  sent, and the planner treats a missing row like a never-sent one: re-planned into the
  future it becomes pending either way; re-planned at a past time it is recorded as skipped
  (``past``) again. Nothing is ever sent because a record was pruned.
- **pending, sending** — never touched, however old.

``subject_errors`` older than the ``failed`` retention are deleted too. Events are kept (an
event id is remembered so that a repeated one plans nothing), and so are subjects.

A prune works in chunks (5,000 rows per write transaction by default): it finds candidates
with a read (which blocks nobody), then changes them in a short write transaction that
checks each row again, so a row revived in between (a failed delivery retried) is left
alone. A big prune never holds the write lock for long, and ``duly serve`` / ``duly worker``
run it once a day on a thread of its own (:class:`Maintenance`), never in the dispatcher's
loop: maintenance never delays a delivery.

The statements (the aged-record predicates, counts, chunk deletes, the advisory lock) are in
:mod:`duly.store.retention`; this module decides the cut-offs and walks the chunks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from duly.core.model import Duration, RuleFile, parse_duration
from duly.core.rules import timemath
from duly.store import retention as store
from duly.store.db import Engine, is_postgres, write_transaction
from duly.store.retention import PRUNE_LOCK_KEY as PRUNE_LOCK_KEY  # one prune at a time

__all__ = [
    "CHUNK",
    "DEFAULT_RETENTION",
    "Maintenance",
    "PruneReport",
    "StatePrune",
    "cutoffs",
    "prune",
    "retention_for",
]

log = logging.getLogger("duly.retention")

CHUNK = 5000

DEFAULT_RETENTION: dict[str, Duration] = {
    "sent": parse_duration("90d"),
    "failed": parse_duration("180d"),
    "skipped": parse_duration("180d"),
}

# Outcomes whose identity row must stay (content cleared); the others are deleted whole.
KEEP_IDENTITY = ("sent", "failed", "set")
DROP_ROWS = ("skipped", "cancelled")
STATES = ("sent", "set", "failed", "skipped", "cancelled")


def retention_for(rules: RuleFile) -> dict[str, Duration]:
    """How long records of each outcome are kept: the rule file's ``retention``, else the
    defaults; ``cancelled`` like ``skipped`` and ``set`` like ``sent`` unless named."""
    r = {**DEFAULT_RETENTION, **rules.retention}
    r.setdefault("cancelled", r["skipped"])
    r.setdefault("set", r["sent"])
    return {s: r[s] for s in STATES}


def cutoffs(
    rules: RuleFile, now: datetime, older_than: Duration | None = None
) -> dict[str, datetime]:
    """The cut-off per outcome: ``now`` minus its retention (or ``older_than`` for all),
    calendar units counted in the rule file's timezone."""
    tz = timemath.zone(rules.timezone)
    keep = retention_for(rules)
    return {s: timemath.add_duration(now, older_than or keep[s], -1, tz) for s in STATES}


@dataclass(slots=True)
class StatePrune:
    """What a prune did (or would do) to the records of one outcome."""

    state: str
    cutoff: datetime
    rows_deleted: int = 0  # skipped, cancelled: whole rows
    content_cleared: int = 0  # sent, failed, set: rows kept, content dropped
    log_rows_deleted: int = 0
    oldest: datetime | None = None  # when the oldest affected record got its outcome
    newest: datetime | None = None

    def _saw(self, times: Sequence[datetime]) -> None:
        if not times:
            return
        lo, hi = min(times), max(times)
        self.oldest = lo if self.oldest is None else min(self.oldest, lo)
        self.newest = hi if self.newest is None else max(self.newest, hi)


@dataclass(slots=True)
class PruneReport:
    now: datetime
    dry_run: bool
    states: list[StatePrune] = field(default_factory=list)
    subject_errors_cutoff: datetime | None = None
    subject_errors_deleted: int = 0
    complete: bool = True  # False: stopped before the end (shutdown)

    @property
    def total(self) -> int:
        """Rows deleted or cleared, log rows and subject errors included."""
        return self.subject_errors_deleted + sum(
            s.rows_deleted + s.content_cleared + s.log_rows_deleted for s in self.states
        )

    @property
    def oldest(self) -> datetime | None:
        got = [s.oldest for s in self.states if s.oldest is not None]
        return min(got) if got else None

    @property
    def newest(self) -> datetime | None:
        got = [s.newest for s in self.states if s.newest is not None]
        return max(got) if got else None

    def lines(self) -> Iterator[str]:
        """A table for people, then one line of totals."""
        head = ("state", "older than", "rows deleted", "content cleared", "log rows deleted")
        data = [
            (
                s.state,
                _day(s.cutoff),
                str(s.rows_deleted),
                str(s.content_cleared),
                str(s.log_rows_deleted),
            )
            for s in self.states
        ]
        widths = [max(len(h), *(len(d[i]) for d in data)) for i, h in enumerate(head)]
        yield "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        yield "  ".join("-" * w for w in widths)
        for d in data:
            cells = [d[0].ljust(widths[0]), d[1].ljust(widths[1])]
            cells += [v.rjust(w) for v, w in zip(d[2:], widths[2:], strict=True)]
            yield "  ".join(cells)
        yield ""
        verb = "would be" if self.dry_run else "were"
        yield (
            f"subject errors older than {_day(self.subject_errors_cutoff)}: "
            f"{self.subject_errors_deleted} {verb} deleted"
        )
        if self.oldest is not None:
            yield f"affected records got their outcome from {_day(self.oldest)} to {_day(self.newest)}"
        else:
            yield "nothing to prune"
        if not self.complete:
            yield "stopped before the end: the rest is pruned next time"


def _day(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"


# --------------------------------------------------------------------------- prune


def prune(
    db: Engine,
    rules: RuleFile,
    now: datetime,
    *,
    older_than: Duration | None = None,
    dry_run: bool = False,
    chunk: int = CHUNK,
    pause: float = 0.0,
    stop: threading.Event | None = None,
) -> PruneReport:
    """Prune delivery records older than their retention (module docstring).

    ``older_than`` replaces every outcome's retention. ``dry_run`` counts what would be
    pruned and changes nothing. A real prune commits every ``chunk`` rows and waits
    ``pause`` seconds between chunks, so others get the write lock in between; ``stop``
    ends it early (between chunks) and the report says so.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    cuts = cutoffs(rules, now, older_than)
    report = PruneReport(now=now, dry_run=dry_run, subject_errors_cutoff=cuts["failed"])
    for state in STATES:
        sp = StatePrune(state, cuts[state])
        report.states.append(sp)
        if dry_run:
            _count(db, sp)
        elif not _prune_state(db, sp, chunk, pause, stop):
            report.complete = False
            return report
    if dry_run:
        with db.connect() as conn:
            report.subject_errors_deleted = store.count_subject_errors_before(conn, cuts["failed"])
    else:
        n = _prune_subject_errors(db, cuts["failed"], chunk, pause, stop)
        if n is None:
            report.complete = False
            return report
        report.subject_errors_deleted = n
    return report


def _count(db: Engine, sp: StatePrune) -> None:
    """A dry run: what _prune_state would do, counted with the same predicates."""
    with db.connect() as conn:
        n = store.count_prunable(conn, sp.state, sp.cutoff, sp.state in DROP_ROWS)
    sp.oldest, sp.newest = n.oldest, n.newest
    sp.rows_deleted, sp.content_cleared, sp.log_rows_deleted = n.rows, n.content, n.log_rows


def _prune_state(
    db: Engine, sp: StatePrune, chunk: int, pause: float, stop: threading.Event | None
) -> bool:
    """Prune one outcome, chunk by chunk. Returns False when ``stop`` ended it early."""
    whole = sp.state in DROP_ROWS
    after: tuple[datetime, int] | None = None
    while True:
        if stop is not None and stop.is_set():
            return False
        # Candidates, with a read that blocks no writer; keyset on (due_at, id).
        with db.connect() as conn:
            found = store.prunable_deliveries(
                conn, sp.state, sp.cutoff, whole, after=after, limit=chunk
            )
        if not found:
            return True
        after = (found[-1][1], found[-1][0])
        with write_transaction(db) as conn:
            # checked again: a row retried or re-planned since the read is left alone
            done = store.prune_deliveries(conn, sp.state, sp.cutoff, whole, [f[0] for f in found])
        sp._saw(done.updated_at)
        sp.rows_deleted += done.rows_deleted
        sp.content_cleared += done.content_cleared
        sp.log_rows_deleted += done.log_rows_deleted
        if len(found) < chunk:
            return True
        if pause:
            time.sleep(pause)


def _prune_subject_errors(
    db: Engine, cutoff: datetime, chunk: int, pause: float, stop: threading.Event | None
) -> int | None:
    """Delete subject errors older than ``cutoff``; None when ``stop`` ended it early."""
    n = 0
    after = 0
    while True:
        if stop is not None and stop.is_set():
            return None
        with db.connect() as conn:
            ids = store.subject_error_ids_before(conn, cutoff, after=after, limit=chunk)
        if not ids:
            return n
        after = ids[-1]
        with write_transaction(db) as conn:
            n += store.delete_subject_errors(conn, ids)
        if len(ids) < chunk:
            return n
        if pause:
            time.sleep(pause)


# --------------------------------------------------------------------------- maintenance


class Maintenance:
    """Runs :func:`prune` once a day on a thread of its own (``duly serve``, ``duly
    worker``), never in the dispatcher's loop.

    The first prune runs ``first_after`` after :meth:`start`, then one every ``interval``.
    With several processes on one PostgreSQL database, one prunes at a time (an advisory
    lock; the others skip that round); on SQLite the chunks simply take turns. A failed
    prune is logged and tried again at the next round.
    """

    def __init__(
        self,
        db: Engine,
        rules: RuleFile,
        now: Callable[[], datetime],
        *,
        interval: timedelta = timedelta(days=1),
        first_after: timedelta = timedelta(minutes=5),
        chunk: int = CHUNK,
        pause: float = 0.05,
    ) -> None:
        self.db, self.rules, self.now = db, rules, now
        self.interval, self.first_after = interval, first_after
        self.chunk, self.pause = chunk, pause
        self.last: PruneReport | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="duly-maintenance", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop between two chunks; waits for the thread up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        wait = self.first_after.total_seconds()
        while not self._stop.wait(max(0.0, wait)):
            try:
                self.run_once()
            except Exception:  # maintenance must never take the process down
                log.exception("prune failed; trying again in %s", self.interval)
            wait = self.interval.total_seconds()

    def run_once(self) -> PruneReport | None:
        """One prune now; None when another process holds the prune lock."""
        if not is_postgres(self.db):
            return self._prune()
        with self.db.connect() as lock_conn:
            got = store.try_prune_lock(lock_conn)
            lock_conn.commit()  # a session lock: it outlives this transaction
            if not got:
                log.info("prune skipped: another process is pruning")
                return None
            try:
                return self._prune()
            finally:
                store.release_prune_lock(lock_conn)
                lock_conn.commit()

    def _prune(self) -> PruneReport:
        report = prune(
            self.db, self.rules, self.now(), chunk=self.chunk, pause=self.pause, stop=self._stop
        )
        self.last = report
        self.runs += 1
        _log_report(report)
        return report


def _log_report(report: PruneReport) -> None:
    parts = [
        f"{s.state}: {s.rows_deleted} deleted, {s.content_cleared} cleared, "
        f"{s.log_rows_deleted} log rows"
        for s in report.states
        if s.rows_deleted or s.content_cleared or s.log_rows_deleted
    ]
    if report.subject_errors_deleted:
        parts.append(f"subject errors: {report.subject_errors_deleted}")
    log.info(
        "pruned old records%s: %s",
        "" if report.complete else " (stopped early)",
        "; ".join(parts) or "nothing to prune",
    )
