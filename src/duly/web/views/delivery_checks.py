"""Would a delivery be sent if it were due now? The checks the dispatcher makes first
(engine/dispatch/policies.py ``_decide``: rule gone, subject deleted, its conditions, hold,
deadline, recipient, consent, address, suppression), made read-only on today's data, so the
pages can warn before Retry or Send now ("it would be skipped: the invoice is now paid") and
leave out of "needs attention" the failures that no longer matter.

Only reads; the dispatcher still decides when it sends (limits, windows and spacing are its
alone: they depend on the moment).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from duly.core import planner
from duly.core.model import REMINDER_RULE, Reason, held_until_cleared
from duly.engine.dispatch.policies import consent_allows
from duly.engine.service import Engine
from duly.store.db import Connection
from duly.web.words import reason_words, subject_kind

# These make a failure no longer worth anyone's attention: nothing an operator does sends it.
GONE = frozenset({Reason.rule_changed, Reason.subject_deleted, Reason.condition_false,
                  Reason.missed})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why the delivery would not be sent now: a reason code and its words."""

    reason: str
    text: str
    waits: bool = False  # held: it waits for the end of the hold (not skipped)


def _ref(subject: str) -> tuple[str, str]:
    kind, _, key = subject.partition("/")
    return kind, key


def verdicts(
    engine: Engine, conn: Connection, rows: Iterable[dict[str, Any]], now: datetime
) -> dict[int, Verdict | None]:
    """For each delivery row (every column the store's ``delivery`` returns, or at least
    id, rule, step, occurrence, subject, recipient, channel, category, deadline_at), None
    when it would be sent now, else why not. Reads each subject, recipient, event and
    suppressed address once for all ``rows`` (callers pass a bounded list)."""
    rows = list(rows)
    rf = engine.rules
    subjects = engine.store.get_subjects(
        conn, sorted({_ref(r["subject"]) for r in rows if r.get("subject")})
    )
    people = engine.store.get_recipients(conn, {r["recipient"] for r in rows if r["recipient"]})
    occurrences = [_occ(r) for r in rows]
    events = engine.store.get_events(conn, [o for o in occurrences if isinstance(o, str)])
    addresses: dict[int, str | None] = {}
    for r in rows:
        person = people.get(r["recipient"] or "")
        chan = engine.rules.channels.get(r["channel"] or "")
        ctype = getattr(chan, "type", None)
        addresses[r["id"]] = person.address_for(r["channel"] or "", ctype) if person else None
    suppressed = engine.store.active_suppressions(conn, [a for a in addresses.values() if a])
    out: dict[int, Verdict | None] = {}
    for r, occ in zip(rows, occurrences, strict=True):
        kind_ref = r.get("subject") or None

        def no(
            reason: Reason, waits: bool = False, status: Any = None, _s: Any = kind_ref
        ) -> Verdict:
            return Verdict(reason.value, reason_words(reason.value, _s, status), waits)

        rule = None if r["rule"] == REMINDER_RULE else rf.rule(r["rule"])
        if r["rule"] != REMINDER_RULE and (
            rule is None or (r["step"] and rule.step(r["step"]) is None)
        ):
            out[r["id"]] = no(Reason.rule_changed)
            continue
        rec = subjects.get(_ref(kind_ref)) if kind_ref else None
        if kind_ref and (rec is None or rec.deleted):
            out[r["id"]] = no(Reason.subject_deleted)
            continue
        person = people.get(r["recipient"] or "")
        subject = rec.subject if rec is not None else None
        if rule is not None and subject is not None:
            step = rule.step(r["step"]) if r["step"] else None
            ok, _ = planner.check_conditions(
                rule, step, subject, person, r["recipient"] or None,
                planner.rule_zone(rf, rule, person), now,
                events.get(occ) if isinstance(occ, str) else None,
            )  # fmt: skip
            if not ok:
                out[r["id"]] = no(Reason.condition_false, status=subject.attributes.get("status"))
                continue
        hold = subject.hold_until if subject is not None else None
        if hold is not None and now < hold and r.get("category") != "transactional":
            until = (
                "until cleared" if held_until_cleared(hold)
                else f"until {hold.astimezone(UTC):%a %d %b %Y, %H:%M} UTC"
            )  # fmt: skip
            kind = subject_kind(kind_ref) or "subject"
            out[r["id"]] = Verdict(Reason.held.value, f"the {kind} is on hold {until}", True)
            continue
        if r.get("deadline_at") is not None and now > r["deadline_at"]:
            out[r["id"]] = Verdict(Reason.missed.value, "Not sent: its deadline has passed")
            continue
        if not r["recipient"]:
            out[r["id"]] = None
            continue
        if person is None:
            out[r["id"]] = no(Reason.no_address)
        elif not consent_allows(person, r.get("category") or "", r["channel"] or "", r["rule"]):
            out[r["id"]] = no(Reason.no_consent)
        elif not addresses[r["id"]]:
            out[r["id"]] = no(Reason.no_address)
        elif (addresses[r["id"]] or "").lower() in suppressed:
            out[r["id"]] = no(Reason.suppressed)
        else:
            out[r["id"]] = None
    return out


def _occ(row: dict[str, Any]) -> Any:
    import json

    try:
        return json.loads(row.get("occurrence") or "null")
    except ValueError:
        return row.get("occurrence")


def verdict(engine: Engine, conn: Connection, row: dict[str, Any], now: datetime) -> Verdict | None:
    """``verdicts`` for one row."""
    return verdicts(engine, conn, [row], now)[row["id"]]
