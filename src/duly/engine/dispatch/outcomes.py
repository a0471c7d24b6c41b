"""Recording what happened to a delivery.

``_final`` (sent, failed, skipped, cancelled, set) and ``_defer`` (pending again, due later)
put a row's outcome and history on its ``_Work``; ``_record`` writes a set of them in one
transaction: only the rows this process still holds (its lease), with their history,
delivery webhooks, suppressions and fallbacks; a database error is retried for up to the
lease. spec: Fallback is decided here: a message that could not go out on its channel (no
address or consent there, suppressed, a permanent failure) gets a row on the next channel
of the chain, due now. Stopping gives back, pending again, the rows claimed and not sent.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from duly.core import planner
from duly.core.model import Outcome, Reason
from duly.delivery import webhooks
from duly.engine import receipts
from duly.engine.dispatch.work import _Work
from duly.store.db import write_transaction

log = logging.getLogger("duly.dispatcher")


class OutcomesMixin:
    """``Dispatcher``'s recording (mixed into it: uses its engine, owner, lease, stats,
    metrics and ``on_outcome``)."""

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
                    # receipts that came before these sends were recorded apply now
                    sent = [
                        str(w.update["receipt"])
                        for w in ok
                        if w.update.get("state") == "sent" and w.update.get("receipt")
                    ]
                    complaints = receipts.apply_pending(self.engine, conn, sent, now)
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
        if complaints:
            receipts.withdraw_consent(self.engine, complaints)
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


_FALLS_BACK = frozenset(
    {
        Reason.no_address.value,
        Reason.no_consent.value,
        Reason.suppressed.value,
        Reason.permanent_error.value,
    }
)
