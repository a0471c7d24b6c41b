"""Running a rule by hand: ``duly run RULE``.

- A date-relative or event rule: its pending deliveries that are due now (optionally of one
  subject) are processed now by the real dispatcher — sent, skipped by a policy, deferred
  (window, spacing, hold), or their ``set`` applied. What a ``set`` plans in turn and is due
  at once (a change trigger's "job closed" notice) is processed too, as a follow-up.
- A schedule (cron) rule: one occurrence is fired now (its occurrence is this instant, so it
  is a new identity; the rule's regular occurrences are unaffected).

With ``dry_run`` nothing changes and nothing is sent: the very same dispatcher runs against a
throwaway view of the database (:func:`sandbox`) with channels that only capture, and the
report lists what would be sent (recipient, channel, address, rendered title), changed (the
``set`` changes) or skipped, and for a schedule rule what it would collect. On SQLite the
view is a copy (``sqlite3`` backup into memory, so it costs memory the size of the database
file); on PostgreSQL it is one transaction on one connection, where every commit the engine
makes is only a savepoint release, rolled back as a whole at the end — for the seconds the
dry run lasts it holds the row locks it took (a worker skips those rows meanwhile).

Nothing is re-implemented here: claims mirror ``Store.claim_due``, and deciding, rendering,
``set`` and recording are the dispatcher's own. The queries and the sandbox are in
:mod:`duly.store.manual`.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from duly.core import planner
from duly.core.errors import InvalidInput, NotFound
from duly.core.model import Rule, held_until_cleared
from duly.core.planner import Action, Desired, Identity
from duly.core.rules import timemath
from duly.delivery.channels.base import Message, Receipt
from duly.engine.collect import collect_all
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine
from duly.store.db import write_transaction
from duly.store.manual import (
    claim_pending_deliveries,
    deliveries_by_id,
    delivery_ids_of_occurrence,
    due_delivery_ids,
    follow_up_delivery_ids,
    highest_delivery_id,
    sandbox,
    subjects_set_by,
)
from duly.store.store import DeliveryRow

__all__ = ["CaptureChannel", "RunItem", "RunReport", "run_rule", "sandbox"]

log = logging.getLogger("duly.run")

# `set` → change trigger → its own `set` …: how many rounds of follow-ups one run processes.
MAX_FOLLOW_UP_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class RunItem:
    """One delivery a run processed, as it ended up (or would have, in a dry run)."""

    delivery_id: int
    rule: str
    step: str | None
    occurrence: Any
    subject: str | None
    recipient: str | None
    channel: str | None
    # sent | failed | skipped | cancelled | set, or deferred (still pending, at due_at)
    outcome: str
    reason: str | None = None
    title: str | None = None
    to_address: str | None = None
    changes: dict[str, Any] | None = None
    due_at: datetime | None = None
    error: str | None = None
    follow_up: bool = False  # planned by this run's `set` (another rule's message)


@dataclass(slots=True)
class RunReport:
    rule: str
    kind: str  # steps | event | cron
    dry_run: bool
    at: datetime
    subject: str | None = None
    items: list[RunItem] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)  # schedule rules: who it goes to
    collected: dict[str, str] = field(default_factory=dict)  # schedule rules: a summary
    notes: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    def lines(self) -> Iterator[str]:
        """For people: a header, one line per delivery, a summary."""
        what = "Dry run (nothing changed, nothing sent)" if self.dry_run else "Ran"
        scope = f" for {self.subject}" if self.subject else ""
        yield f"{what}: rule {self.rule} ({_KIND_NAMES.get(self.kind, self.kind)}){scope}"
        if self.recipients:
            yield f"recipients: {', '.join(self.recipients)}"
        for name, summary in self.collected.items():
            yield f"collected {name}: {summary}"
        verbs = _VERBS_DRY if self.dry_run else _VERBS
        if self.items:
            yield ""
        for i in self.items:
            who = f"{i.recipient or '-'} on {i.channel}" if i.channel else "(subject)"
            about = i.subject or f"occurrence {i.occurrence}"
            line = f"{verbs.get(i.outcome, i.outcome):<15} #{i.delivery_id} {about} → {who}"
            if i.to_address and i.outcome == "sent":
                line += f" <{i.to_address}>"
            if i.outcome == "set" and i.changes is not None:
                line += " set " + json.dumps(i.changes, sort_keys=True, default=str)
            elif i.title:
                line += f": {i.title}"
            if i.reason:
                line += f" ({i.reason})"
            if i.outcome == "deferred" and held_until_cleared(i.due_at):
                line += " until the hold is cleared"
            elif i.outcome == "deferred" and i.due_at is not None:
                line += f" until {i.due_at:%Y-%m-%d %H:%M:%S}Z"
            if i.error:
                line += f" — {i.error}"
            if i.follow_up:
                line += "  [follow-up]"
            yield line
        for note in self.notes:
            yield f"note: {note}"
        counts: dict[str, int] = {}
        for i in self.items:
            counts[i.outcome] = counts.get(i.outcome, 0) + 1
        summary = ", ".join(f"{verbs.get(k, k)}: {n}" for k, n in sorted(counts.items()))
        yield ""
        total = len(self.items)
        noun = "delivery" if total == 1 else "deliveries"
        yield f"{total} {noun}" + (f" ({summary})" if summary else "")


_KIND_NAMES = {"steps": "date-relative", "event": "event", "cron": "schedule"}
_VERBS = {
    "sent": "sent",
    "failed": "failed",
    "skipped": "skipped",
    "cancelled": "cancelled",
    "set": "changed",
    "deferred": "deferred",
    "sending": "in flight",
}
_VERBS_DRY = {
    "sent": "would send",
    "failed": "would fail",
    "skipped": "would skip",
    "cancelled": "would cancel",
    "set": "would change",
    "deferred": "would defer",
    "sending": "in flight",
}


# --------------------------------------------------------------------------- entry point


def run_rule(
    dispatcher: Dispatcher,
    rule_name: str,
    *,
    subject: str | None = None,
    dry_run: bool = False,
) -> RunReport:
    """Run ``rule_name`` now (module docstring). ``dispatcher`` brings the engine (rules,
    database, clock), the channels and the renderer; a real run processes with it, a dry run
    with a copy of it over :func:`sandbox` and :class:`CaptureChannel` s.

    Raises NotFound for an unknown rule, InvalidInput for a bad ``subject``."""
    engine = dispatcher.engine
    rule = engine.rules.rule(rule_name)
    if rule is None:
        names = ", ".join(r.name for r in engine.rules.rules) or "none"
        raise NotFound(f"no rule named {rule_name!r}; the rules are: {names}", field="rule")
    if subject is not None:
        _check_subject(rule, subject)
    now = engine.clock.now()
    if not dry_run:
        return _run(dispatcher, rule, subject, now, dry_run=False)
    with sandbox(engine.db) as db:
        boxed = Engine(engine.rules, db, clock=engine.clock)
        channels = {
            name: CaptureChannel(name, getattr(ch, "type", None))
            for name, ch in dispatcher.channels.items()
        }
        disp = Dispatcher(
            boxed,
            channels,
            _dry_renderer(dispatcher.renderer),
            owner="dry-run",
            batch_size=dispatcher.batch_size,
            lease=dispatcher.lease,
            send_workers=1,  # the sandbox is one connection: one thing at a time
        )
        return _run(disp, rule, subject, now, dry_run=True)


def _dry_renderer(renderer: Any) -> Any:
    """The renderer, but signing acknowledge links with a throwaway secret: the real one may
    not exist yet, and making it is a write a dry run must not do (the links are never sent)."""
    links = getattr(renderer, "ack_links", None)
    if links is None:
        return renderer
    from duly.delivery.ack import AckLinks, AckSigner

    if not isinstance(links, AckLinks):
        return renderer
    dry = copy.copy(renderer)  # shares the compiled templates; only the signer differs
    dry.ack_links = AckLinks(
        signer=AckSigner(secrets.token_urlsafe(16), clock=links.clock), base_url=links.base_url
    )
    return dry


def _check_subject(rule: Rule, ref: str) -> None:
    kind, sep, key = ref.partition("/")
    if not sep or not kind or not key:
        raise InvalidInput(f"--subject must be KIND/KEY, got {ref!r}", field="subject")
    if rule.kind == "cron":
        raise InvalidInput(
            f"rule {rule.name!r} is a schedule rule: its messages are about no subject, so "
            "--subject does not apply",
            field="subject",
        )
    if rule.subject is not None and rule.subject != kind:
        raise InvalidInput(
            f"rule {rule.name!r} watches subjects of kind {rule.subject!r}, not {kind!r}",
            field="subject",
        )


def _run(
    disp: Dispatcher, rule: Rule, subject: str | None, now: datetime, *, dry_run: bool
) -> RunReport:
    eng = disp.engine
    report = RunReport(rule.name, rule.kind, dry_run, now, subject=subject)
    with eng.db.connect() as conn:
        high = highest_delivery_id(conn)
    if rule.kind == "cron":
        ids = _fire_occurrence(eng, rule, now, report)
    else:
        ids = _due_ids(eng, rule.name, subject, now)
        if not ids:
            report.notes.append(
                "nothing of this rule is due now" + (f" for {subject}" if subject else "")
            )
    done = _process(disp, ids, report)
    followed: list[int] = []
    touched = _set_subjects(eng, done)
    for _ in range(MAX_FOLLOW_UP_ROUNDS):
        if not touched:
            break
        seen = {*done, *followed}
        # due by now, the time of the `set` that planned them (not the start of the run)
        more = [i for i in _follow_up_ids(eng, touched, high, eng.clock.now()) if i not in seen]
        if not more:
            break
        got = _process(disp, more, report)
        followed += got
        touched = _set_subjects(eng, got)
    report.items = _items(eng, done, followed)
    if rule.kind == "cron" and rule.collect:
        tz = timemath.zone(rule.timezone or eng.rules.timezone)
        with eng.db.connect() as conn:
            report.collected = {k: _summary(v) for k, v in collect_all(conn, rule, now, tz).items()}
    for i in report.items:
        log.info(
            "%s %s delivery %s (%s %s → %s on %s)%s",
            "dry run:" if dry_run else "run:",
            (_VERBS_DRY if dry_run else _VERBS).get(i.outcome, i.outcome),
            i.delivery_id,
            i.rule,
            i.subject or i.occurrence,
            i.recipient or "-",
            i.channel or "-",
            f": {i.title}" if i.title else "",
        )
    return report


# --------------------------------------------------------------------------- queries


def _due_ids(eng: Engine, rule: str, subject: str | None, now: datetime) -> list[int]:
    """The rule's pending deliveries due by ``now``, in the dispatcher's order."""
    with eng.db.connect() as conn:
        return due_delivery_ids(conn, rule, subject, now)


def _follow_up_ids(eng: Engine, subjects: Sequence[str], high: int, now: datetime) -> list[int]:
    """Deliveries planned since the run began (ids above ``high``) about the subjects its
    ``set`` actions changed, pending and due by ``now``."""
    with eng.db.connect() as conn:
        return follow_up_delivery_ids(conn, subjects, high, now)


def _set_subjects(eng: Engine, ids: Sequence[int]) -> list[str]:
    if not ids:
        return []
    with eng.db.connect() as conn:
        return subjects_set_by(conn, ids)


def _claim(eng: Engine, ids: Sequence[int], owner: str, disp: Dispatcher) -> list[DeliveryRow]:
    """Take these rows if they are still pending (as ``Store.claim_due`` takes due rows):
    rows another dispatcher holds are left to it."""
    now = eng.clock.now()
    with write_transaction(eng.db) as conn:
        return claim_pending_deliveries(conn, ids, owner, now, disp.lease)


def _process(disp: Dispatcher, ids: Sequence[int], report: RunReport) -> list[int]:
    """Claim and process ``ids`` batch by batch with the dispatcher's own ``_process``;
    returns the ids it processed."""
    done: list[int] = []
    size = max(1, disp.batch_size)
    for i in range(0, len(ids), size):
        batch = ids[i : i + size]
        rows = _claim(disp.engine, batch, disp.owner, disp)
        if len(rows) < len(batch):
            report.notes.append(
                f"{len(batch) - len(rows)} deliveries were taken by another process first"
            )
        if rows:
            disp._process(rows)
            done += [r.id for r in rows]
    return done


def _items(eng: Engine, done: Sequence[int], followed: Sequence[int]) -> list[RunItem]:
    ids = list(done) + list(followed)
    if not ids:
        return []
    with eng.db.connect() as conn:
        rows = deliveries_by_id(conn, ids)
    follow = set(followed)
    out = []
    for did in ids:
        r = rows.get(did)
        if r is None:  # pragma: no cover - rows are never deleted while a run reads them
            continue
        ident = Identity.from_db(
            r["rule"], r["step"], r["occurrence"], r["subject"], r["recipient"], r["channel"]
        )
        state = r["state"]
        out.append(
            RunItem(
                delivery_id=did,
                rule=ident.rule,
                step=ident.step,
                occurrence=ident.occurrence,
                subject=ident.subject,
                recipient=ident.recipient,
                channel=ident.channel,
                outcome="deferred" if state == "pending" else state,
                reason=r["reason"],
                title=r["title"],
                to_address=r["to_address"],
                changes=r["changes"] if state == "set" else None,
                due_at=r["due_at"],
                error=r["last_error"] if state == "failed" else None,
                follow_up=did in follow,
            )
        )
    return out


def _fire_occurrence(eng: Engine, rule: Rule, now: datetime, report: RunReport) -> list[int]:
    """Plan one occurrence of a schedule rule at ``now`` (to the second), the way
    ``Engine.plan_schedules`` plans a scheduled one: a row per recipient and channel."""
    rf = eng.rules
    tz = timemath.zone(rule.timezone or rf.timezone)
    t = now.astimezone(UTC).replace(microsecond=0)
    occ = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    rids = planner.resolve_to(rf, rule.to, None) if rule.sends_message else []
    report.recipients = list(rids)
    if not rids:
        report.notes.append("the rule addresses nobody: nothing to send")
        return []
    deadline = timemath.add_duration(t, rule.expire, 1, tz, None) if rule.expire else None
    prio = planner.base_priority(rule, str(rule.category))
    desired = [
        Desired(
            Identity(rule.name, None, occ, None, rid, ch), t, t, deadline, str(rule.category), prio
        )
        for rid in rids
        for ch in planner.message_channels(None, rule)
    ]
    with write_transaction(eng.db) as conn:
        have = {
            e.identity for e in eng.store.existing_identities(conn, [x.identity for x in desired])
        }
        eng.store.apply(
            conn,
            [Action("create", x, state="pending") for x in desired if x.identity not in have],
            now,
        )
        ids = delivery_ids_of_occurrence(conn, rule.name, occ)
    if have:
        report.notes.append(f"occurrence {occ} was fired already: only what is still due runs")
    return ids


def _summary(value: Any) -> str:
    if isinstance(value, list):
        keys = [
            str(v.get("ref") or v.get("key")) if isinstance(v, Mapping) else str(v)
            for v in value[:5]
        ]
        more = f", … ({len(value) - 5} more)" if len(value) > 5 else ""
        return (
            f"{len(value)} "
            + ("item" if len(value) == 1 else "items")
            + (f": {', '.join(keys)}{more}" if keys else "")
        )
    if isinstance(value, Mapping) and "total" in value:
        by = value.get("by_outcome") or {}
        parts = ", ".join(f"{k} {n}" for k, n in sorted(by.items()))
        return f"{value['total']} outcomes" + (f" ({parts})" if parts else "")
    return json.dumps(value, default=str)[:200]


# --------------------------------------------------------------------------- dry runs


class CaptureChannel:
    """Stands in for a real channel in a dry run: keeps the message, sends nothing. It has
    the real channel's type, so addresses are looked up as they would be."""

    def __init__(self, name: str, type_: str | None = None) -> None:
        self.name = name
        self.type = type_ or "capture"
        self.sent: list[Message] = []

    def send(self, message: Message) -> Receipt:
        self.sent.append(message)
        return Receipt(provider_id=f"dry-run:{message.message_id}")

    def close(self) -> None:
        pass
