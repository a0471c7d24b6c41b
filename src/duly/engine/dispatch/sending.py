"""Sending, and what a send's result means.

At most ``send_workers`` messages are out at a time, counting those sent but not yet
recorded (a slot frees only once its outcome is written, so a crash can duplicate at most
that many); outcomes that finish within ``GROUP_COMMIT`` seconds of each other are written
in one transaction (the group commit). A send's result: sent; a temporary failure retried
later with backoff (``retry``: delay × factor^(attempt − 1), times a jitter derived from the
identity) until the attempts are exhausted; a permanent failure (and the address suppressed
when the provider says the address is bad); the circuit breaker told of each success and
temporary failure, a failed probe costing no attempt. Stopping gives back what has not
started.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ALL_COMPLETED, Future, wait
from datetime import datetime, timedelta

from duly.core import planner
from duly.core.model import Reason
from duly.delivery.channels.base import DeliveryError
from duly.engine.dispatch.work import _Work

log = logging.getLogger("duly.dispatcher")

# Outcomes of sends that finish within this many seconds of each other share a transaction.
GROUP_COMMIT = 0.005


def message_id_for(identity: planner.Identity) -> str:
    """A stable, unkeyed hash of a delivery identity (retry jitter). Message-IDs come from
    ``Dispatcher.message_ids``: keyed with the installation's secret."""
    h = hashlib.sha256("\x1f".join(identity.db_key()).encode()).hexdigest()
    return h[:32]


def jitter(identity: planner.Identity, attempt: int) -> float:
    """A factor in [0.9, 1.1], derived from the identity so simulations are deterministic."""
    h = hashlib.sha256(f"{message_id_for(identity)}:{attempt}".encode()).digest()
    return 0.9 + 0.2 * (int.from_bytes(h[:8], "big") / 2**64)


class SendingMixin:
    """``Dispatcher``'s sending (mixed into it: uses its channels, pool, breakers, stats and
    metrics)."""

    def _send_all(
        self, to_send: list[_Work], members: dict[int, list[_Work]], now: datetime
    ) -> None:
        """Send each message (``send_workers`` at a time) and record each outcome as soon as
        it is known: sends that finish together are written in one transaction."""

        def finished(w: _Work) -> list[_Work]:
            return self._finished(w, members)

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

    def _finished(self, w: _Work, members: dict[int, list[_Work]]) -> list[_Work]:
        """The rows a finished send records: its own, or its batched group's (sharing the
        lead's outcome)."""
        group = members.get(id(w))
        if group is None:
            return [w]
        if w.released:
            for x in group:
                x.released = True
        else:
            self._copy_outcome(w, group[1:])
        return group

    def is_local(self, w: _Work) -> bool:
        """The send of ``w`` has no effect outside the database (outbox, inbox): the
        message *is* the row its outcome writes."""
        return bool(getattr(self.channels.get(w.row.identity.channel or ""), "local", False))

    def _send_local(self, works: list[_Work], members: dict[int, list[_Work]]) -> list[_Work]:
        """Send messages of local channels, here and now (no pool, no I/O); returns the
        rows to record. Nothing has left the process until they are recorded, so the
        caller records them in one transaction: a crash before it loses no message and
        duplicates none (the rows are retaken, the same Message-ID kept)."""
        out: list[_Work] = []
        for w in works:
            self._send(w)
            out += self._finished(w, members)
        if works:
            self._tick()
        return out

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
