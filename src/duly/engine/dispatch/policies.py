"""The decisions made before a send (docs/reference/rules.md Policies), in spec order.

For one claimed row ``_decide`` settles: the rule or step is gone (cancelled), the subject
is gone (cancelled), its conditions are false now (skipped; re-checked at send time); a row
without recipient goes to its ``set``; hold (``hold_until``: skipped or deferred to the end
of the hold); deadline and grace (missed); window (deferred to the next opening, or missed
past the deadline); consent; address; suppression; rate limits (``limits``, counted in the
database); spacing (``min_gap``, deferred); a schedule rule's collections (``skip_empty``);
channel configured; the channel's circuit breaker (deferred, no attempt spent). What is
left is batched or rendered. Outcomes are left on the row's ``_Work``; outcomes.py records
them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from duly.core import planner
from duly.core.model import Category, Reason, Recipient, Rule
from duly.core.rules import timemath
from duly.engine.collect import collect_all, is_empty
from duly.engine.dispatch.work import _Cycle, _Work
from duly.store.db import write_transaction

log = logging.getLogger("duly.dispatcher")

DEFAULT_GRACE = {"reminder": timedelta(hours=12), "promotional": timedelta(hours=12)}


class PoliciesMixin:
    """``Dispatcher``'s policies (mixed into it: uses its engine, channels, breakers,
    limits and stats)."""

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


def _parse_limits(limits: Mapping[str, str]) -> dict[str, tuple[int, timedelta]]:
    """``{promotional: "1/7d"}`` → ``{"promotional": (1, 7 days)}``."""
    from duly.core.model import parse_duration

    out = {}
    for cat, text in (limits or {}).items():
        n, _, per = str(text).partition("/")
        out[cat] = (int(n), timedelta(seconds=parse_duration(per.strip()).total_seconds_approx()))
    return out


def consent_allows(r: Recipient, category: str, channel: str, rule: str) -> bool:
    """docs/reference/rules.md Policies/Consent: transactional always; reminder unless opted out;
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
