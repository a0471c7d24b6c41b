"""Subjects and recipients: upserts, deletes, acknowledgements, and re-planning them.

Each call is one write transaction: load what it needs, run the pure planner, store the
reconciled plan and its outcomes, then wake the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from duly.core import planner
from duly.core.errors import InvalidInput, UnknownSubject
from duly.core.model import Reason, Recipient, Rule, Subject, held_until_cleared
from duly.core.planner import Action, Existing, Plan
from duly.core.validation import check_text
from duly.delivery import webhooks
from duly.engine.service.base import EngineBase, log
from duly.engine.service.inputs import (
    SubjectInput,
    UpsertResult,
    _to_subject,
    _validate_recipient,
    _validate_subject,
)
from duly.store.db import Connection, write_transaction
from duly.store.plan import ANSWER_COLS
from duly.store.store import SubjectRecord

__all__ = ["Planning"]


class Planning(EngineBase):
    """Recipients and subjects changed by the app, and the re-planning that follows."""

    # ------------------------------------------------------------------ recipients

    def put_recipient(self, r: Recipient) -> bool:
        """Create or replace a recipient; re-plans the subjects it has pending deliveries
        for (a new timezone moves its local times)."""
        _validate_recipient(r)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            created = self.store.put_recipient(conn, r, now)
            refs = self.store.subjects_pending_for(conn, r.id)
            woke = self._replan_refs(conn, refs, now) if refs else 0
            if woke:
                self._wake(conn)
        return created

    def put_recipients(self, items: Sequence[Recipient]) -> list[bool]:
        """Create or replace many recipients in one transaction (each already validated by
        the caller, one by one), then re-plan the subjects any of them has pending
        deliveries for, once each. Returns, in order, whether each was created. A later
        copy of the same id in ``items`` wins, as if sent one after the other."""
        now = self.clock.now()
        created: list[bool] = []
        refs: dict[str, None] = {}
        with write_transaction(self.db) as conn:
            for r in items:
                created.append(self.store.put_recipient(conn, r, now))
                refs.update(dict.fromkeys(self.store.subjects_pending_for(conn, r.id)))
            woke = self._replan_refs(conn, list(refs), now) if refs else 0
            if woke:
                self._wake(conn)
        return created

    def delete_recipient(self, rid: str) -> int:
        """Delete a recipient; its pending deliveries are cancelled (recipient_removed)."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            rows = self.store.pending_of_recipient(conn, rid)
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

    def upsert_subject_for_answer(
        self, s: SubjectInput
    ) -> tuple[UpsertResult, list[dict[str, Any]]]:
        """Upsert one subject and answer its rows pending or being sent once re-planned, by
        due time, each with the columns of the PUT's answer (``store.plan.ANSWER_COLS``):
        the state this call stored, never a concurrent upsert's, built from what this
        transaction read and wrote (the rows it found, the planner's actions, the ids of the
        rows it created) instead of reading the plan again."""
        _validate_subject(s)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            one = _OneSubject()
            (res,) = self._upsert(conn, {(s.kind, s.key): s}, now, one=one)
            rows = one.plan()
            if rows is None:  # what the actions alone do not say: read it
                rows = [
                    {c: r[c] for c in ANSWER_COLS}
                    for r in self.store.plan_of_subject(conn, res.ref)
                ]
        return res, rows

    def upsert_subjects(
        self, items: Sequence[SubjectInput], *, validated: bool = False
    ) -> list[UpsertResult]:
        """Upsert subjects (whole state each) and re-plan them, in one transaction.
        ``validated``: the caller has passed every item through ``_validate_subject``
        already (the batch API does, item by item), so it is not done twice."""
        seen: dict[tuple[str, str], SubjectInput] = {}
        for s in items:
            if not validated:
                _validate_subject(s)
            seen[(s.kind, s.key)] = s  # a later copy in the same batch wins
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            return self._upsert(conn, seen, now)

    def _upsert(
        self,
        conn: Connection,
        seen: Mapping[tuple[str, str], SubjectInput],
        now: datetime,
        *,
        one: _OneSubject | None = None,
    ) -> list[UpsertResult]:
        stored = self.store.get_subjects(conn, list(seen), for_update=True)
        pairs: list[tuple[SubjectRecord | None, Subject]] = []
        for (kind, key), s in seen.items():
            old = stored.get((kind, key))
            pairs.append((old, _to_subject(s, old)))
        self.store.save_subjects(conn, pairs, now)
        results = self._replan(conn, pairs, now, one=one)
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
        # docs/reference/rules.md Steps: a `set` emits subject.updated so the app can follow
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
        one: _OneSubject | None = None,
    ) -> list[UpsertResult]:
        """``one``: a single subject's upsert that answers with its plan (collects what
        the answer is built from)."""
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
        refs = [s.ref for _, s in pairs]
        if one is not None:
            (old, s1) = pairs[0]
            # a subject never stored has no rows: every row about a subject is planned
            # for a stored one (its own plan, its events, a reminder about it)
            if old is None:
                existing = {s1.ref: []}
            else:
                ex1, one.rows = self.store.existing_of_subject(conn, s1.ref)
                existing = {s1.ref: ex1}
            one.reread = old is not None and held_until_cleared(old.subject.hold_until)
        else:
            existing = self.store.existing_for(conn, refs)
        # per call, not per subject: the event rules by name (``RuleFile.rule``: the first
        # of a name) and, per subject kind, the rules an attribute change fires
        first: dict[str, Rule] = {}
        for r in rf.rules:
            first.setdefault(r.name, r)
        event_rules = {n: r for n, r in first.items() if r.kind == "event"}
        change_rules: dict[str, list[Rule]] = {}
        if bump:
            for r in rf.rules:
                if r.kind == "event" and r.on is not None and r.on.change is not None:
                    change_rules.setdefault(r.subject, []).append(r)  # type: ignore[arg-type]
        rule_names = self._rule_names
        all_actions: list[Action] = []
        problems: list[planner.Problem] = []
        results = []
        for (old, s), ref in zip(pairs, refs, strict=True):
            ex = existing[ref]
            plan = planner.plan_subject(rf, s, recipients, now)
            actions = planner.reconcile(plan, ex, now, rule_names=rule_names)
            if ex and event_rules:
                actions += self._event_rows(s, ex, event_rules)
            kind_rules = change_rules.get(s.kind)
            if kind_rules:
                old_attrs = None if (old is None or old.deleted) else old.subject.attributes
                actions += self._change_triggers(
                    s, old_attrs, ex, recipients, now, plan, kind_rules
                )
            all_actions += actions
            res = UpsertResult(ref, s.revision, notes=plan.notes, subject=s)
            first_due = None
            for a in actions:
                kind = a.kind
                if kind == "create" or kind == "replan":
                    if a.state == "pending":
                        res.created += 1
                    else:
                        if a.state == "skipped":
                            res.skipped += 1
                        continue
                elif kind == "move":
                    res.moved += 1
                else:
                    if kind == "cancel":
                        res.cancelled += 1
                    elif a.state == "skipped" or kind == "skip":
                        res.skipped += 1
                    continue
                # pending; no desired row to read a time from: wake at once
                due = a.desired.due_at if a.desired is not None else now
                if first_due is None or due < first_due:
                    first_due = due
            res.first_due = first_due
            if plan.problems:
                problems += plan.problems
                res.problems = [f"{p.field}: {p.message}" for p in plan.problems]
            results.append(res)
        if one is not None:
            one.actions = all_actions
        self.store.apply(conn, all_actions, now, created=one.created if one else None)
        for (old, s), res in zip(pairs, results, strict=True):
            self._release_hold(conn, old, s, res, now)
        if problems:
            self.store.record_problems(conn, problems, now)
            for p in problems:
                log.warning("subject %s: rule %s: %s: %s", p.subject, p.rule, p.field, p.message)
        return results

    def _release_hold(
        self,
        conn: Connection,
        old: SubjectRecord | None,
        s: Subject,
        res: UpsertResult,
        now: datetime,
    ) -> None:
        """spec: Hold. An indefinite hold cleared (or given an end): what waited for it
        (event and one-off rows the dispatcher deferred, planned rows whose own time has
        passed) goes at once, at the new end of the hold, or at its own time if later."""
        if old is None or not held_until_cleared(old.subject.hold_until):
            return
        if held_until_cleared(s.hold_until):
            return
        at = s.hold_until if s.hold_until is not None and s.hold_until > now else now
        if self.store.release_held_until_cleared(conn, s.ref, at, now):
            res.first_due = at if res.first_due is None else min(res.first_due, at)

    def _event_rows(
        self, s: Subject, existing: Iterable[Existing], event_rules: Mapping[str, Rule]
    ) -> list[Action]:
        """Pending rows of event rules (``event_rules``: by name) whose recipient no longer
        holds the role."""
        out = []
        for e in existing:
            if e.state != "pending" or e.identity.recipient is None:
                continue
            rule = event_rules.get(e.identity.rule)
            if rule is None:
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
        rules: Sequence[Rule],
    ) -> list[Action]:
        """The ``on: {change: ...}`` rules of the subject's kind (``rules``, in file order)
        its new attributes fire."""
        out: list[Action] = []
        ex = list(existing)
        for rule in rules:
            if not planner.change_fires(rule, old_attrs, s.attributes):
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


class _OneSubject:
    """What a single upsert's answer is built from: the subject's rows as read before
    planning (``ANSWER_COLS`` by id), the actions applied to them, the ids of the rows
    created. ``reread``: something else changes the rows too (an indefinite hold
    released moves them in SQL): the plan must be read again."""

    __slots__ = ("actions", "created", "reread", "rows")

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.actions: list[Action] = []
        self.created: dict[tuple[str, ...], int] = {}
        self.reread = False

    def plan(self) -> list[dict[str, Any]] | None:
        """The rows pending or being sent once the actions are applied, by due time then
        id, as ``plan_of_subject`` would read them; None when they must be read."""
        if self.reread:
            return None
        rows = self.rows
        for a in self.actions:
            d = a.desired
            if a.kind == "create":
                assert d is not None
                key = d.identity.db_key()
                rid = self.created.get(key)
                if rid is None:
                    return None
                rows[rid] = {
                    "id": rid,
                    "rule": key[0],
                    "step": key[1],
                    "occurrence": key[2],
                    "subject": key[3],
                    "recipient": key[4],
                    "channel": key[5],
                    "state": a.state,
                    "reason": a.reason.value if a.reason else None,
                    "category": d.category,
                    "planned_at": _utc(d.planned_at),
                    "due_at": _utc(d.due_at),
                    "sent_at": None,
                    "attempts": 0,
                    "last_error": None,
                    "title": None,
                    "message_id": None,
                }
                continue
            assert a.existing is not None
            r = rows.get(a.existing.id)
            if r is None:
                return None
            if a.kind == "move":
                assert d is not None
                r.update(state="pending", reason=None)
            elif a.kind == "replan":
                assert d is not None
                r.update(state=a.state, reason=a.reason.value if a.reason else None)
            else:  # cancel, skip: out of the plan
                r["state"] = "cancelled" if a.kind == "cancel" else "skipped"
                continue
            r["planned_at"], r["due_at"] = _utc(d.planned_at), _utc(d.due_at)
        plan = [r for r in rows.values() if r["state"] in ("pending", "sending")]
        plan.sort(key=lambda r: (r["due_at"], r["id"]))
        return plan


def _utc(t: datetime) -> datetime:
    """An instant as the store reads it back (``tables.UTCDateTime``): aware UTC."""
    return t.astimezone(UTC)
