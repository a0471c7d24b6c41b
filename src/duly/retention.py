"""Retention: old delivery records are pruned (rule file ``retention:``; USE-CASES U1.6).

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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from duly.model import Duration, RuleFile, parse_duration
from duly.rules import timemath
from duly.store.db import is_postgres, write_transaction
from duly.store.tables import deliveries, delivery_log, subject_errors

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

# The content a kept identity row loses.
CONTENT = ("title", "body_text", "body_html", "to_address", "receipt", "last_error", "changes")

# An advisory-lock key (PostgreSQL): one prune at a time across processes ("dulyprun").
PRUNE_LOCK_KEY = 0x6475_6C79_7072_756E


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


# --------------------------------------------------------------------------- predicates
# Every query below is built from these, so a dry run counts exactly what a prune does.


def _aged(state: str, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Records of ``state`` older than ``cutoff`` (served by ix_deliveries_state_due)."""
    d = deliveries.c
    return sa.and_(d.state == state, d.due_at < cutoff, d.updated_at < cutoff)


def _has_content() -> sa.ColumnElement[bool]:
    return sa.or_(*(deliveries.c[c].is_not(None) for c in CONTENT))


def _has_old_log(cutoff: datetime) -> sa.ColumnElement[bool]:
    """The delivery still has log rows older than ``cutoff`` (ix_delivery_log_delivery_id)."""
    return sa.exists().where(
        delivery_log.c.delivery_id == deliveries.c.id, delivery_log.c.at < cutoff
    )


def _needs_work(state: str, cutoff: datetime) -> sa.ColumnElement[bool]:
    """An old record the prune would change: any old row of a state deleted whole; a kept
    identity row only while it still has content or old log rows (so a daily prune does
    not rewrite the rows it already pruned)."""
    if state in DROP_ROWS:
        return _aged(state, cutoff)
    return sa.and_(_aged(state, cutoff), sa.or_(_has_content(), _has_old_log(cutoff)))


# --------------------------------------------------------------------------- prune


def prune(
    db: sa.Engine,
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
            report.subject_errors_deleted = conn.execute(
                sa.select(sa.func.count()).where(subject_errors.c.at < cuts["failed"])
            ).scalar_one()
    else:
        n = _prune_subject_errors(db, cuts["failed"], chunk, pause, stop)
        if n is None:
            report.complete = False
            return report
        report.subject_errors_deleted = n
    return report


def _count(db: sa.Engine, sp: StatePrune) -> None:
    """A dry run: what _prune_state would do, counted with the same predicates."""
    d, lg = deliveries.c, delivery_log.c
    with db.connect() as conn:
        work = _needs_work(sp.state, sp.cutoff)
        n, lo, hi = conn.execute(
            sa.select(sa.func.count(), sa.func.min(d.updated_at), sa.func.max(d.updated_at))
            .select_from(deliveries)
            .where(work)
        ).one()
        sp.oldest, sp.newest = lo, hi
        logs = sa.select(sa.func.count()).select_from(
            delivery_log.join(deliveries, d.id == lg.delivery_id)
        )
        if sp.state in DROP_ROWS:
            sp.rows_deleted = n
            # the whole log of a deleted row goes with it
            sp.log_rows_deleted = conn.execute(logs.where(work)).scalar_one()
        else:
            sp.content_cleared = conn.execute(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(_aged(sp.state, sp.cutoff), _has_content())
            ).scalar_one()
            sp.log_rows_deleted = conn.execute(
                logs.where(_aged(sp.state, sp.cutoff), lg.at < sp.cutoff)
            ).scalar_one()


def _prune_state(
    db: sa.Engine, sp: StatePrune, chunk: int, pause: float, stop: threading.Event | None
) -> bool:
    """Prune one outcome, chunk by chunk. Returns False when ``stop`` ended it early."""
    d, lg = deliveries.c, delivery_log.c
    after: tuple[datetime, int] | None = None
    while True:
        if stop is not None and stop.is_set():
            return False
        # Candidates, with a read that blocks no writer; keyset on (due_at, id) so rows
        # found not to need work are never scanned twice in one prune.
        q = (
            sa.select(d.id, d.due_at)
            .where(_needs_work(sp.state, sp.cutoff))
            .order_by(d.due_at, d.id)
            .limit(chunk)
        )
        if after is not None:
            q = q.where(sa.or_(d.due_at > after[0], sa.and_(d.due_at == after[0], d.id > after[1])))
        with db.connect() as conn:
            found = conn.execute(q).all()
        if not found:
            return True
        after = (found[-1].due_at, found[-1].id)
        ids = [r[0] for r in found]
        with write_transaction(db) as conn:
            # checked again: a row retried or re-planned since the read is left alone
            still = conn.execute(
                sa.select(d.id, d.updated_at).where(d.id.in_(ids), _aged(sp.state, sp.cutoff))
            ).all()
            ids = [r[0] for r in still]
            sp._saw([r[1] for r in still])
            if ids and sp.state in DROP_ROWS:
                sp.log_rows_deleted += _rowcount(
                    conn.execute(sa.delete(delivery_log).where(lg.delivery_id.in_(ids)))
                )
                sp.rows_deleted += _rowcount(
                    conn.execute(sa.delete(deliveries).where(d.id.in_(ids)))
                )
            elif ids:
                sp.log_rows_deleted += _rowcount(
                    conn.execute(
                        sa.delete(delivery_log).where(lg.delivery_id.in_(ids), lg.at < sp.cutoff)
                    )
                )
                sp.content_cleared += _rowcount(
                    conn.execute(
                        sa.update(deliveries)
                        .where(d.id.in_(ids), _has_content())
                        # SQL NULL, not JSON null, for the JSON column
                        .values({c: sa.null() for c in CONTENT})
                    )
                )
        if len(found) < chunk:
            return True
        if pause:
            time.sleep(pause)


def _prune_subject_errors(
    db: sa.Engine, cutoff: datetime, chunk: int, pause: float, stop: threading.Event | None
) -> int | None:
    """Delete subject errors older than ``cutoff``; None when ``stop`` ended it early."""
    e = subject_errors.c
    n = 0
    after = 0
    while True:
        if stop is not None and stop.is_set():
            return None
        # ids grow with time, so old errors come first in id order (no index on `at`)
        with db.connect() as conn:
            ids = list(
                conn.execute(
                    sa.select(e.id).where(e.at < cutoff, e.id > after).order_by(e.id).limit(chunk)
                ).scalars()
            )
        if not ids:
            return n
        after = ids[-1]
        with write_transaction(db) as conn:
            n += _rowcount(conn.execute(sa.delete(subject_errors).where(e.id.in_(ids))))
        if len(ids) < chunk:
            return n
        if pause:
            time.sleep(pause)


def _rowcount(res: Any) -> int:
    n = res.rowcount
    return n if n and n > 0 else 0


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
        db: sa.Engine,
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
            got = lock_conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PRUNE_LOCK_KEY}
            ).scalar()
            lock_conn.commit()  # a session lock: it outlives this transaction
            if not got:
                log.info("prune skipped: another process is pruning")
                return None
            try:
                return self._prune()
            finally:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK_KEY})
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
