"""Triggers: events the app posts, and schedule (cron) rules' next occurrences.

Event rules plan one occurrence per event (its id is the idempotency key); schedule rules
plan their next occurrence once, whatever the number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from duly.core import planner
from duly.core.errors import InvalidInput, UnknownSubject
from duly.core.planner import Action, Plan
from duly.core.rules import timemath
from duly.core.validation import check_json, check_text
from duly.engine.service.base import EngineBase, log
from duly.store.db import Connection, write_transaction
from duly.store.plan import is_duplicate

__all__ = ["Triggers"]


class Triggers(EngineBase):
    """Events and schedules."""

    # ------------------------------------------------------------------ events

    def post_event(
        self, eid: str, name: str, subject: str, data: Mapping[str, Any] | None = None
    ) -> bool:
        """Post an event about a known subject. Returns False for a repeated id (ignored).
        An unknown subject is refused and nothing changes."""
        if not isinstance(eid, str) or not eid or len(eid) > 200:
            raise InvalidInput(
                "an event needs an id (its idempotency key), 1 to 200 characters", field="id"
            )
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidInput("an event needs a name of 1 to 200 characters", field="name")
        kind, sep, key = (subject or "").partition("/")
        if not sep or not kind or not key:
            raise InvalidInput(f"subject must be KIND/KEY, got {subject!r}", field="subject")
        for value, where in ((eid, "id"), (name, "name"), (subject, "subject")):
            check_text(value, where)
        if data is not None:
            if not isinstance(data, Mapping):
                raise InvalidInput("data must be an object", field="data")
            check_json(data, "data")
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            rec = self.store.get_subjects(conn, [(kind, key)]).get((kind, key))
            if rec is None or rec.deleted:
                raise UnknownSubject(f"no subject {subject}: upsert it first", field="subject")
            if not self.store.add_event(conn, eid, name, subject, dict(data or {}), now):
                return False
            s = rec.subject
            recipients = self.store.get_recipients(
                conn,
                {i for ids in s.recipients.values() for i in ids}
                | {m for g in self.rules.groups.values() for m in g},
            )
            ev = {"id": eid, "name": name, "subject": subject, "data": dict(data or {})}
            actions: list[Action] = []
            problems: list[planner.Problem] = []
            for rule in self.rules.rules:
                if rule.kind != "event" or rule.subject != kind or rule.on is None:
                    continue
                if rule.on.event != name:
                    continue
                tplan = planner.plan_trigger(self.rules, rule, s, recipients, eid, now, ev)
                problems += tplan.problems
                ex = self.store.existing_identities(conn, [d.identity for d in tplan.desired])
                actions += planner.reconcile(tplan, ex, now)
            woke = self.store.apply(conn, actions, now)
            self.store.record_problems(conn, problems, now)
            if woke:
                self._wake(conn)
        return True

    # ------------------------------------------------------------------ schedules

    def plan_schedules(self) -> datetime | None:
        """Make sure each schedule (cron) rule has its next occurrence planned: one row per
        recipient and channel, unique on the occurrence's instant, so any number of
        processes plan it once. A rule with nothing pending plans its first occurrence not
        before now (occurrences before a rule first appears, or missed while the engine was
        down beyond the one catch-up run, are never planned). Returns the earliest pending
        schedule time, or None when there are no schedule rules."""

        rules = [r for r in self.rules.rules if r.kind == "cron" and r.cron]
        if not rules:
            return None
        now = self.clock.now()
        earliest: datetime | None = None
        for rule in rules:
            # each rule on its own: one that fails (a bug, an expression that can never
            # fire) is logged, remembered for /readyz and tried again later; the others and
            # every other delivery go on
            try:
                t = self._plan_schedules([rule], now)
                self.schedule_errors.pop(rule.name, None)
            except Exception as exc:
                if is_duplicate(exc):
                    # another process planned the same occurrence first: the database kept one
                    log.debug("schedule occurrence of %s planned by another process", rule.name)
                    continue
                log.exception("schedule rule %s: planning its next occurrence failed", rule.name)
                self.schedule_errors[rule.name] = (now, f"{type(exc).__name__}: {exc}")
                t = now + timedelta(minutes=1)
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

    def _plan_schedules(self, rules: list[Any], now: datetime) -> datetime | None:
        earliest: datetime | None = None
        with write_transaction(self.db) as conn:
            for rule in rules:
                # "nothing pending → plan the next" must not interleave between processes
                # (two would plan consecutive occurrences): one at a time per rule, until
                # this transaction ends
                self.store.lock_schedule(conn, rule.name)
                pend = self.store.earliest_pending_of_rule(conn, rule.name)
                if pend is None:
                    pend = self._plan_next_occurrence(conn, rule, now)
                if pend is not None and (earliest is None or pend < earliest):
                    earliest = pend
            if earliest is not None:
                self._wake(conn)
        return earliest

    def _plan_next_occurrence(self, conn: Connection, rule: Any, now: datetime) -> datetime | None:
        tz = timemath.zone(rule.timezone or self.rules.timezone)
        last = self.store.last_occurrence_of_rule(conn, rule.name)
        t = timemath.cron_next(rule.cron, tz, now, inclusive=True)
        if last is not None:
            last_t = datetime.fromisoformat(json.loads(last))
            if t <= last_t:
                t = timemath.cron_next(rule.cron, tz, last_t)
            # After downtime: one catch-up run for the latest occurrence missed, if it is
            # still within the rule's grace; the ones before it are never sent (no burst).
            prev = timemath.cron_prev(rule.cron, tz, now)
            grace = _grace(rule)
            if prev is not None and prev > last_t and (grace is None or now - prev <= grace):
                t = prev
        occ = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        rids = planner.resolve_to(self.rules, rule.to, None) if rule.sends_message else []
        plan = Plan(scope={rule.name})
        prio = planner.base_priority(rule, str(rule.category))
        deadline = None
        if rule.expire is not None:
            deadline = timemath.add_duration(t, rule.expire, 1, tz, None)
        for rid in rids:
            for ch in planner.message_channels(None, rule):
                ident = planner.Identity(rule.name, None, occ, None, rid, ch)
                plan.desired.append(
                    planner.Desired(ident, t, t, deadline, str(rule.category), prio)
                )
        if rule.webhook is not None:  # one row without recipient calls it (after messages)
            ident = planner.Identity(rule.name, None, occ, None, None, None)
            plan.desired.append(
                planner.Desired(ident, t, t, deadline, str(rule.category), prio - 1)
            )
        if not plan.desired:
            return None
        # created pending even when it is the catch-up run (its time is past): the
        # dispatcher applies grace; an identity another process planned first is left alone
        have = {
            e.identity
            for e in self.store.existing_identities(conn, [d.identity for d in plan.desired])
        }
        actions = [
            Action("create", d, state="pending") for d in plan.desired if d.identity not in have
        ]
        self.store.apply(conn, actions, now)
        return t


def _grace(rule: Any) -> timedelta | None:
    """How late a delivery of the rule may still go out (spec: Catch-up): the rule's
    ``grace``, else 12 h for reminder and promotional, unlimited for transactional."""
    if rule.grace is not None:
        return timedelta(seconds=rule.grace.total_seconds_approx())
    if str(rule.category) == "transactional":
        return None
    return timedelta(hours=12)
