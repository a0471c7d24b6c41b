"""The engine's front door: what the API, the CLI and the simulator call.

Each method is one write transaction: load what it needs, run the pure planner, store the
reconciled plan and its outcomes, then wake the dispatcher. State changes live here; the
dispatcher only loops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly import planner, webhooks
from duly.engine.clock import Clock, SystemClock
from duly.errors import DulyError, InvalidInput, NotFound, UnknownSubject
from duly.model import Reason, Recipient, RuleFile, Subject
from duly.planner import Action, Existing, Plan
from duly.rules import timemath
from duly.store.db import is_postgres, write_transaction
from duly.store.store import Store, SubjectRecord
from duly.validation import check_instant, check_json, check_text

__all__ = ["REMINDER_RULE", "Conflict", "Engine", "ReminderInput", "SubjectInput", "UpsertResult"]

# The reserved rule name of one-off reminders: rule names in files start with a letter or a
# digit, so it can never clash with one.
REMINDER_RULE = "@reminder"

log = logging.getLogger("duly.engine")


@dataclass(frozen=True, slots=True)
class SubjectInput:
    """A subject's whole current state, as an app sends it."""

    kind: str
    key: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    recipients: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReminderInput:
    """A one-off reminder (USE-CASES U5.5, U5.6)."""

    title: str
    message: str
    send_at: datetime
    recipients: Sequence[str]
    channels: Sequence[str] = ("email",)
    subject: str | None = None
    category: str = "reminder"


class Conflict(DulyError):
    """The record is not in a state that allows this (e.g. it was sent already)."""

    code = "conflict"


@dataclass(slots=True)
class UpsertResult:
    ref: str
    revision: int
    created: int = 0
    moved: int = 0
    cancelled: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_due: datetime | None = None  # the earliest due time it made pending, if any
    subject: Subject | None = None  # the state stored


class Engine:
    """Rules + store + clock. Thread-safe: every call opens its own transaction."""

    def __init__(
        self,
        rules: RuleFile,
        db: sa.Engine,
        *,
        clock: Clock | None = None,
        on_planned: Callable[[datetime | None], None] | None = None,
    ) -> None:
        self.rules = rules
        self.db = db
        self.clock = clock or SystemClock()
        self.store = Store(postgres=is_postgres(db))
        self._wake_hooks: list[Callable[[datetime | None], None]] = (
            [on_planned] if on_planned else []
        )
        self._rule_names = {r.name for r in rules.rules}
        # schedule rules whose planning failed: name → (when, error); cleared on success
        self.schedule_errors: dict[str, tuple[datetime, str]] = {}

    def add_wake_hook(self, hook: Callable[[datetime | None], None]) -> None:
        """Called after a transaction that made deliveries pending (wakes dispatchers), with
        the earliest due time among them; None when not known (wake and look)."""
        self._wake_hooks.append(hook)

    def _wake(self, conn: Connection | None = None, due: datetime | None = None) -> None:
        if conn is not None and self.store.postgres:
            # the payload lets a dispatcher asleep until before ``due`` sleep on
            payload = "" if due is None else due.isoformat()
            conn.execute(sa.text("SELECT pg_notify('duly_planned', :p)"), {"p": payload})
        for h in self._wake_hooks:
            h(due)

    # ------------------------------------------------------------------ recipients

    def put_recipient(self, r: Recipient) -> bool:
        """Create or replace a recipient; re-plans the subjects it has pending deliveries
        for (a new timezone moves its local times)."""
        _validate_recipient(r)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            created = self.store.put_recipient(conn, r, now)
            refs = self._pending_subjects_of(conn, r.id)
            woke = self._replan_refs(conn, refs, now) if refs else 0
            if woke:
                self._wake(conn)
        return created

    def delete_recipient(self, rid: str) -> int:
        """Delete a recipient; its pending deliveries are cancelled (recipient_removed)."""
        from duly.store.tables import deliveries

        now = self.clock.now()
        with write_transaction(self.db) as conn:
            q = sa.select(deliveries.c.id, deliveries.c.planned_at, deliveries.c.due_at).where(
                deliveries.c.recipient == rid, deliveries.c.state == "pending"
            )
            if self.store.postgres:
                q = q.with_for_update()
            rows = conn.execute(q).all()
            dummy = planner.Identity("", None, 0, None, rid, None)
            actions = [
                Action(
                    "cancel",
                    None,
                    Existing(i, dummy, "pending", None, p, d),
                    reason=Reason.recipient_removed,
                )
                for i, p, d in rows
            ]
            self.store.apply(conn, actions, now)
            self.store.delete_recipient(conn, rid)
        return len(actions)

    def _pending_subjects_of(self, conn: Connection, rid: str) -> list[str]:
        from duly.store.tables import deliveries

        q = (
            sa.select(deliveries.c.subject)
            .where(deliveries.c.recipient == rid, deliveries.c.state == "pending")
            .distinct()
        )
        return [s for (s,) in conn.execute(q) if s]

    def replan(self, refs: Sequence[str]) -> int:
        """Re-plan stored subjects from their current state (no new revision): extends the
        rolling horizon of open-ended repeats. Returns how many rows became pending."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            woke = self._replan_refs(conn, refs, now)
            if woke:
                self._wake(conn)
        return woke

    def _replan_refs(self, conn: Connection, refs: Sequence[str], now: datetime) -> int:
        pairs = []
        keys = [tuple(r.split("/", 1)) for r in refs]
        stored = self.store.get_subjects(conn, keys)  # type: ignore[arg-type]
        for rec in stored.values():
            if not rec.deleted:
                pairs.append((rec, rec.subject))
        results = self._replan(conn, pairs, now, bump=False)
        return sum(r.created + r.moved for r in results)

    # ------------------------------------------------------------------ subjects

    def upsert_subject(self, s: SubjectInput) -> UpsertResult:
        return self.upsert_subjects([s])[0]

    def upsert_subjects(self, items: Sequence[SubjectInput]) -> list[UpsertResult]:
        """Upsert subjects (whole state each) and re-plan them, in one transaction."""
        seen: dict[tuple[str, str], SubjectInput] = {}
        for s in items:
            _validate_subject(s)
            seen[(s.kind, s.key)] = s  # a later copy in the same batch wins
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            stored = self.store.get_subjects(conn, list(seen), for_update=True)
            pairs: list[tuple[SubjectRecord | None, Subject]] = []
            for (kind, key), s in seen.items():
                old = stored.get((kind, key))
                pairs.append((old, _to_subject(s, old)))
            self.store.save_subjects(conn, pairs, now)
            results = self._replan(conn, pairs, now)
            due = min((r.first_due for r in results if r.first_due is not None), default=None)
            if due is not None:
                self._wake(conn, due)
        return results

    def apply_set(
        self, conn: Connection, ref: str, changes: Mapping[str, Any], now: datetime
    ) -> bool:
        """A ``set`` action: update duly's copy of the subject, re-plan it and queue the
        ``subject.updated`` webhook (inside the dispatcher's transaction). Returns False when
        the subject is gone."""
        kind, _, key = ref.partition("/")
        old = self.store.get_subjects(conn, [(kind, key)], for_update=True).get((kind, key))
        if old is None or old.deleted:
            return False
        attrs = {**old.subject.attributes, **changes}
        new = Subject(
            kind=kind,
            key=key,
            attributes=attrs,
            recipients=old.subject.recipients,
            revision=old.subject.revision + 1,
            hold_until=old.subject.hold_until,
            acknowledged=old.subject.acknowledged,
        )
        self.store.save_subjects(conn, [(old, new)], now)
        self._replan(conn, [(old, new)], now)
        # spec/rules.md Steps: a `set` emits subject.updated so the app can follow
        data = {"subject": ref, "revision": new.revision, "attributes": attrs}
        data["changes"] = dict(changes)
        webhooks.emit(conn, self.rules, "subject.updated", data, now)
        return True

    def _replan(
        self,
        conn: Connection,
        pairs: Sequence[tuple[SubjectRecord | None, Subject]],
        now: datetime,
        *,
        bump: bool = True,
    ) -> list[UpsertResult]:
        rf = self.rules
        rids: set[str] = set()
        for _, s in pairs:
            for ids in s.recipients.values():
                rids.update(ids)
        for g in rf.groups.values():
            rids.update(g)
        for r in rf.rules:
            rids.update(t[3:] for t in r.to if t.startswith("id:"))
        recipients = self.store.get_recipients(conn, rids)
        existing = self.store.existing_for(conn, [s.ref for _, s in pairs])
        all_actions: list[Action] = []
        problems: list[planner.Problem] = []
        results = []
        for old, s in pairs:
            ex = existing[s.ref]
            plan = planner.plan_subject(rf, s, recipients, now)
            actions = planner.reconcile(plan, ex, now, rule_names=self._rule_names)
            actions += self._event_rows(s, ex, recipients, now)
            if bump:
                old_attrs = None if (old is None or old.deleted) else old.subject.attributes
                actions += self._change_triggers(s, old_attrs, ex, recipients, now, plan)
            all_actions += actions
            problems += plan.problems
            res = UpsertResult(s.ref, s.revision, notes=plan.notes, subject=s)
            for a in actions:
                pending = False
                if a.kind in ("create", "replan") and a.state == "pending":
                    res.created += 1
                    pending = True
                elif a.kind == "move":
                    res.moved += 1
                    pending = True
                elif a.kind == "cancel":
                    res.cancelled += 1
                elif a.state == "skipped" or a.kind == "skip":
                    res.skipped += 1
                if pending:  # no desired row to read a time from: wake at once
                    due = a.desired.due_at if a.desired is not None else now
                    res.first_due = due if res.first_due is None else min(res.first_due, due)
            res.problems = [f"{p.field}: {p.message}" for p in plan.problems]
            results.append(res)
        self.store.apply(conn, all_actions, now)
        if problems:
            self.store.record_problems(conn, problems, now)
            for p in problems:
                log.warning("subject %s: rule %s: %s: %s", p.subject, p.rule, p.field, p.message)
        return results

    def _event_rows(
        self,
        s: Subject,
        existing: Iterable[Existing],
        recipients: Mapping[str, Recipient],
        now: datetime,
    ) -> list[Action]:
        """Pending rows of event rules whose recipient no longer holds the role."""
        out = []
        for e in existing:
            if e.state != "pending" or e.identity.recipient is None:
                continue
            rule = self.rules.rule(e.identity.rule)
            if rule is None or rule.kind != "event":
                continue
            if e.identity.recipient not in planner.resolve_to(self.rules, rule.to, s):
                out.append(Action("cancel", None, e, reason=Reason.recipient_removed))
        return out

    def _change_triggers(
        self,
        s: Subject,
        old_attrs: Mapping[str, Any] | None,
        existing: Iterable[Existing],
        recipients: Mapping[str, Recipient],
        now: datetime,
        plan: Plan,
    ) -> list[Action]:
        out: list[Action] = []
        ex = list(existing)
        for rule in self.rules.rules:
            if rule.kind != "event" or rule.subject != s.kind or rule.on is None:
                continue
            if rule.on.change is None or not planner.change_fires(rule, old_attrs, s.attributes):
                continue
            tplan = planner.plan_trigger(self.rules, rule, s, recipients, s.revision, now)
            plan.problems += tplan.problems
            # each change is its own occurrence: earlier ones still pending are left alone
            mine = {d.identity for d in tplan.desired}
            out += planner.reconcile(tplan, [e for e in ex if e.identity in mine], now)
        return out

    def delete_subject(self, kind: str, key: str) -> int:
        """Delete a subject: its pending deliveries are cancelled (subject_deleted)."""
        check_text(kind, "kind")
        check_text(key, "key")
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            rec = self.store.get_subjects(conn, [(kind, key)], for_update=True).get((kind, key))
            if rec is None or rec.deleted:
                raise UnknownSubject(f"no subject {kind}/{key}", field="subject")
            ref = f"{kind}/{key}"
            ex = self.store.existing_for(conn, [ref])[ref]
            actions = planner.cancel_all(ex, Reason.subject_deleted)
            self.store.apply(conn, actions, now)
            self.store.mark_subject_deleted(conn, rec, now)
        return len(actions)

    def get_subject(self, kind: str, key: str) -> Subject | None:
        with self.db.connect() as conn:
            rec = self.store.get_subjects(conn, [(kind, key)]).get((kind, key))
        return None if rec is None or rec.deleted else rec.subject

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

    # ------------------------------------------------------------------ acknowledgement

    def acknowledge(self, rule: str, subject: str, recipient: str | None = None) -> int:
        """A recipient acknowledged: ``acknowledged`` becomes true for that rule and subject,
        and pending repeats of the rule are cancelled (``acknowledged``)."""
        for value, where in ((rule, "rule"), (subject, "subject"), (recipient, "recipient")):
            check_text(value, where)
        if self.rules.rule(rule) is None:
            raise InvalidInput(f"no rule named {rule!r}", field="rule")
        kind, _, key = subject.partition("/")
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            rec = self.store.get_subjects(conn, [(kind, key)], for_update=True).get((kind, key))
            if rec is None or rec.deleted:
                raise UnknownSubject(f"no subject {subject}", field="subject")
            s = rec.subject
            new = Subject(
                s.kind,
                s.key,
                s.attributes,
                s.recipients,
                s.revision,
                s.hold_until,
                s.acknowledged | {rule},
            )
            self.store.save_subjects(conn, [(rec, new)], now)
            # re-planning with the rule acknowledged cancels its pending repeats
            (res,) = self._replan(conn, [(rec, new)], now, bump=False)
        return res.cancelled

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
            except sa.exc.IntegrityError:
                # another process planned the same occurrence first: the database kept one
                log.debug("schedule occurrence of %s planned by another process", rule.name)
                continue
            except Exception as exc:
                log.exception("schedule rule %s: planning its next occurrence failed", rule.name)
                self.schedule_errors[rule.name] = (now, f"{type(exc).__name__}: {exc}")
                t = now + timedelta(minutes=1)
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

    def _plan_schedules(self, rules: list[Any], now: datetime) -> datetime | None:
        from duly.store.tables import deliveries

        earliest: datetime | None = None
        with write_transaction(self.db) as conn:
            for rule in rules:
                if self.store.postgres:
                    # "nothing pending → plan the next" must not interleave between
                    # processes (two would plan consecutive occurrences): one at a time per
                    # rule, until this transaction ends. SQLite's write lock does the same.
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(rule.name)}
                    )
                pend = conn.execute(
                    sa.select(sa.func.min(deliveries.c.due_at)).where(
                        deliveries.c.rule == rule.name,
                        deliveries.c.state.in_(("pending", "sending")),
                    )
                ).scalar()
                if pend is None:
                    pend = self._plan_next_occurrence(conn, rule, now)
                if pend is not None and (earliest is None or pend < earliest):
                    earliest = pend
            if earliest is not None:
                self._wake(conn)
        return earliest

    def _plan_next_occurrence(self, conn: Connection, rule: Any, now: datetime) -> datetime | None:
        from duly.store.tables import deliveries

        tz = timemath.zone(rule.timezone or self.rules.timezone)
        last = conn.execute(
            sa.select(sa.func.max(deliveries.c.occurrence)).where(deliveries.c.rule == rule.name)
        ).scalar()
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

    # ------------------------------------------------------------------ operator actions

    def _one_delivery(self, conn: Connection, did: int) -> Any:
        from duly.store.tables import deliveries

        q = sa.select(deliveries).where(deliveries.c.id == did)
        if self.store.postgres:
            q = q.with_for_update()  # decided on this state: no claim may slip in between
        row = conn.execute(q).mappings().first()
        if row is None:
            raise NotFound(f"no delivery {did}", field="id")
        return row

    def send_now(self, did: int) -> None:
        """Make a pending delivery due now (its planned time is kept). Policies still apply."""
        from duly.store.tables import deliveries

        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] != "pending":
                raise Conflict(f"delivery {did} is {row['state']}, not pending", field="state")
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == did)
                .values(due_at=now, updated_at=now)
            )
            self._wake(conn)

    def _stuck(self, conn: Connection, row: Any, now: datetime) -> bool:
        """A row left ``sending`` past its lease (its process died or stalled): an operator
        may cancel or retry it; its last send is recorded as of unknown outcome. Raises
        Conflict while a live process still holds it."""
        if row["state"] != "sending":
            return False
        if row["lease_until"] is not None and row["lease_until"] > now:
            raise Conflict(
                f"delivery {row['id']} is being sent by {row['lease_owner']} (its claim runs "
                f"until {row['lease_until'].isoformat()}); try again after that",
                field="state",
            )
        self.store.record_unknown(conn, row["id"], row["lease_owner"], now)
        return True

    def cancel_delivery(self, did: int) -> None:
        """Cancel a pending delivery (reason ``manual``), or one left ``sending`` past its
        lease."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] != "pending" and not self._stuck(conn, row, now):
                raise Conflict(f"delivery {did} is {row['state']}, not pending", field="state")
            ex = Existing(
                did,
                planner.Identity("", None, 0, None, None, None),
                "pending",
                None,
                row["planned_at"],
                row["due_at"],
            )
            self.store.apply(conn, [Action("cancel", None, ex, reason=Reason.manual)], now)

    def retry_delivery(self, did: int) -> None:
        """Try a failed, skipped or cancelled delivery again, now (or one left ``sending``
        past its lease). A sent one is never sent twice."""
        from duly.store.tables import deliveries

        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] not in ("failed", "skipped", "cancelled") and not self._stuck(
                conn, row, now
            ):
                raise Conflict(
                    f"delivery {did} is {row['state']}: only failed, skipped or cancelled "
                    "deliveries can be retried",
                    field="state",
                )
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == did)
                .values(
                    state="pending",
                    reason=None,
                    due_at=now,
                    attempts=0,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            self._wake(conn)

    # ------------------------------------------------------------------ one-off reminders

    def create_reminder(self, r: ReminderInput) -> int:
        """Plan a one-off reminder: one delivery per recipient and channel."""
        from duly.store.tables import reminders

        r = _dedupe(r)
        now = self.clock.now()
        _validate_reminder(self.rules, r, now)
        with write_transaction(self.db) as conn:
            if r.subject:
                self._need_subject(conn, r.subject)
            rid = conn.execute(
                sa.insert(reminders)
                .values(
                    title=r.title,
                    message=r.message,
                    send_at=r.send_at,
                    channels=list(r.channels),
                    recipients=list(r.recipients),
                    subject=r.subject,
                    category=r.category,
                    created_at=now,
                    updated_at=now,
                )
                .returning(reminders.c.id)
            ).scalar_one()
            self._plan_reminder(conn, rid, r, [], now)
            self._wake(conn)
        return int(rid)

    def update_reminder(self, rid: int, r: ReminderInput) -> None:
        """Replace a reminder that has not been sent: its deliveries are re-planned."""
        from duly.store.tables import reminders

        r = _dedupe(r)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            ex = self._reminder_rows(conn, rid)  # 404 / 409 (sent) before validating
            _validate_reminder(self.rules, r, now)
            if r.subject:
                self._need_subject(conn, r.subject)
            conn.execute(
                sa.update(reminders)
                .where(reminders.c.id == rid)
                .values(
                    title=r.title,
                    message=r.message,
                    send_at=r.send_at,
                    channels=list(r.channels),
                    recipients=list(r.recipients),
                    subject=r.subject,
                    category=r.category,
                    updated_at=now,
                )
            )
            self._plan_reminder(conn, rid, r, ex, now)
            self._wake(conn)

    def delete_reminder(self, rid: int) -> None:
        """Delete a reminder that has not been sent (its deliveries: cancelled, ``manual``)."""
        from duly.store.tables import reminders

        now = self.clock.now()
        with write_transaction(self.db) as conn:
            ex = self._reminder_rows(conn, rid)
            self.store.apply(conn, planner.cancel_all(ex, Reason.manual), now)
            conn.execute(
                sa.update(reminders)
                .where(reminders.c.id == rid)
                .values(deleted_at=now, updated_at=now)
            )

    def _reminder_rows(self, conn: Connection, rid: int) -> list[Existing]:
        """The reminder's delivery rows; refuses (409) once any of them was sent."""
        from duly.store.tables import deliveries, reminders

        row = conn.execute(
            sa.select(reminders.c.id).where(reminders.c.id == rid, reminders.c.deleted_at.is_(None))
        ).first()
        if row is None:
            raise NotFound(f"no reminder {rid}", field="id")
        q = sa.select(deliveries).where(
            deliveries.c.rule == REMINDER_RULE, deliveries.c.occurrence == str(int(rid))
        )
        if self.store.postgres:
            q = q.with_for_update()  # see Store.existing_for
        rows = conn.execute(q).mappings().all()
        if any(x["state"] in ("sent", "sending") for x in rows):
            raise Conflict(f"reminder {rid} was sent already: it can no longer change", field="id")
        return [
            Existing(
                x["id"],
                planner.Identity.from_db(
                    x["rule"],
                    x["step"],
                    x["occurrence"],
                    x["subject"],
                    x["recipient"],
                    x["channel"],
                ),
                x["state"],
                x["reason"],
                x["planned_at"],
                x["due_at"],
            )
            for x in rows
        ]

    def _need_subject(self, conn: Connection, ref: str) -> None:
        kind, sep, key = ref.partition("/")
        rec = self.store.get_subjects(conn, [(kind, key)]).get((kind, key)) if sep else None
        if rec is None or rec.deleted:
            raise UnknownSubject(f"no subject {ref}", field="subject")

    def _plan_reminder(
        self, conn: Connection, rid: int, r: ReminderInput, ex: list[Existing], now: datetime
    ) -> None:
        plan = Plan(scope={REMINDER_RULE})
        plan.addressed[(REMINDER_RULE, None)] = set(r.recipients)
        prio = planner.base_priority_for(r.category)
        for person in r.recipients:
            for ch in r.channels:
                ident = planner.Identity(REMINDER_RULE, None, int(rid), r.subject, person, ch)
                plan.desired.append(
                    planner.Desired(ident, r.send_at, r.send_at, None, r.category, prio)
                )
        actions = planner.reconcile(plan, ex, now)
        self.store.apply(conn, actions, now)


# --------------------------------------------------------------------------- validation


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a schedule rule."""
    import hashlib

    return int.from_bytes(
        hashlib.sha256(f"duly-schedule:{name}".encode()).digest()[:8], "big", signed=True
    )


def _grace(rule: Any) -> timedelta | None:
    """How late a delivery of the rule may still go out (spec: Catch-up): the rule's
    ``grace``, else 12 h for reminder and promotional, unlimited for transactional."""
    if rule.grace is not None:
        return timedelta(seconds=rule.grace.total_seconds_approx())
    if str(rule.category) == "transactional":
        return None
    return timedelta(hours=12)


def _dedupe(r: ReminderInput) -> ReminderInput:
    """A recipient or channel named twice is one delivery, not two."""
    return ReminderInput(
        r.title,
        r.message,
        r.send_at,
        list(dict.fromkeys(r.recipients)),
        list(dict.fromkeys(r.channels)),
        r.subject,
        r.category,
    )


def _validate_reminder(rf: RuleFile, r: ReminderInput, now: datetime) -> None:
    """USE-CASES U5.6: send time not in the past, at least one channel and recipient."""
    if not isinstance(r.title, str) or not r.title.strip():
        raise InvalidInput("a reminder needs a title", field="title")
    if not isinstance(r.message, str):
        raise InvalidInput("a reminder needs a message", field="message")
    check_text(r.title, "title")
    check_text(r.message, "message")
    check_text(r.subject, "subject")
    check_instant(r.send_at, "send_at")
    if r.send_at < now - timedelta(seconds=1):
        raise InvalidInput("send_at is in the past", field="send_at")
    if not r.channels:
        raise InvalidInput("choose at least one channel", field="channels")
    for ch in r.channels:
        check_text(ch, "channels")
        if ch not in rf.channels:
            known = ", ".join(sorted(rf.channels))
            raise InvalidInput(f"unknown channel {ch!r}; configured: {known}", field="channels")
    if not r.recipients:
        raise InvalidInput("choose at least one recipient", field="recipients")
    for p in r.recipients:
        if not isinstance(p, str) or not p or len(p) > 200:
            raise InvalidInput("recipients are recipient ids", field="recipients")
        check_text(p, "recipients")
    if r.subject is not None:
        kind, sep, key = r.subject.partition("/")
        if not (kind and sep and key):
            raise InvalidInput(
                f"subject must be KIND/KEY (or null for none), got {r.subject!r}", field="subject"
            )
    if r.category not in ("transactional", "reminder", "promotional"):
        raise InvalidInput("category is transactional, reminder or promotional", field="category")


def _validate_recipient(r: Recipient) -> None:
    if not isinstance(r.id, str) or not r.id or len(r.id) > 200:
        raise InvalidInput("a recipient needs an id of 1 to 200 characters", field="id")
    for name in ("id", "name", "email", "phone", "timezone", "locale"):
        check_text(getattr(r, name), name)
    check_json(dict(r.addresses or {}), "addresses", max_depth=1)
    check_json(dict(r.consent or {}), "consent", max_depth=2)
    if r.timezone:
        try:
            timemath.zone(r.timezone)
        except ValueError:
            raise InvalidInput(
                f"unknown timezone {r.timezone!r}: expected an IANA name such as Europe/London",
                field="timezone",
            ) from None


def _validate_subject(s: SubjectInput) -> None:
    if not isinstance(s.kind, str) or not s.kind or "/" in s.kind or len(s.kind) > 100:
        raise InvalidInput("a subject needs a kind: 1 to 100 characters, no '/'", field="kind")
    if not isinstance(s.key, str) or not s.key or len(s.key) > 200:
        raise InvalidInput("a subject needs a key of 1 to 200 characters", field="key")
    check_text(s.kind, "kind")
    check_text(s.key, "key")
    if not isinstance(s.attributes, Mapping):
        raise InvalidInput("attributes must be an object", field="attributes")
    check_json(s.attributes, "attributes")
    if not isinstance(s.recipients, Mapping):
        raise InvalidInput("recipients must be an object of role → id or [ids]", field="recipients")
    for role, v in s.recipients.items():
        ids = [v] if isinstance(v, str) else v
        if not isinstance(ids, (list, tuple)) or not all(
            isinstance(i, str) and 0 < len(i) <= 200 for i in ids
        ):
            raise InvalidInput(
                f"recipient role {role!r} must be an id or a list of ids",
                field=f"recipients.{role}",
            )
    check_json(dict(s.recipients), "recipients", max_depth=2)
    check_instant(s.hold_until, "hold_until")


def _to_subject(s: SubjectInput, old: SubjectRecord | None) -> Subject:
    rec = {k: ((v,) if isinstance(v, str) else tuple(v)) for k, v in s.recipients.items()}
    rev = 1 if old is None else old.subject.revision + 1
    ack = frozenset() if (old is None or old.deleted) else old.subject.acknowledged
    return Subject(
        kind=s.kind,
        key=s.key,
        attributes=dict(s.attributes),
        recipients=rec,
        revision=rev,
        hold_until=s.hold_until,
        acknowledged=ack,
    )
