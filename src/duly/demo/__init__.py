"""Demo data for `duly serve` with the bundled rules: timed so the first messages go out
within a minute of starting, with a week of made-up history so the web UI's dashboard has
something to show."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from duly.core.model import Recipient
from duly.engine.service import Engine, SubjectInput


def _iso(t):  # noqa: ANN001, ANN202
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# The demo's people. carol, dave, erin and frank appear only in the history; erin has opted
# out of reminders (her reminders are skipped no_consent), frank's address bounces.
PEOPLE = (
    Recipient(
        id="alice",
        name="Alice Moreau",
        email="alice@example.com",
        timezone="Europe/London",
        locale="en_GB",
    ),
    Recipient(
        id="bob",
        name="Bob Chen",
        email="bob@example.com",
        timezone="America/New_York",
        locale="en_US",
    ),
    Recipient(
        id="carol",
        name="Carol Díaz",
        email="carol@example.com",
        timezone="Europe/Madrid",
        locale="es_ES",
    ),
    Recipient(
        id="dave",
        name="Dave Okafor",
        email="dave@example.com",
        timezone="Asia/Tokyo",
        locale="en_GB",
    ),
    Recipient(
        id="erin",
        name="Erin Walsh",
        email="erin@example.com",
        timezone="Australia/Sydney",
        locale="en_AU",
        consent={"reminder": False},
    ),
    Recipient(
        id="frank",
        name="Frank Müller",
        email="frank@mail.invalid",
        timezone="Europe/Berlin",
        locale="de_DE",
    ),
)


def seed(engine: Engine) -> int:
    """Load demo recipients and subjects unless the database already has subjects.
    Returns the number of subjects loaded.

    First the **demo history**: fabricated past deliveries so the dashboard has something
    to show — see :func:`seed_history`. Then live subjects go through the engine, which
    plans their reminders (the first go out within a minute).
    """
    from duly.store.subjects import count_subjects

    with engine.db.connect() as conn:
        if count_subjects(conn):
            return 0
    now = engine.clock.now().replace(microsecond=0)
    for person in PEOPLE:
        engine.put_recipient(person)
    items = [
        # due-soon (due_at - 3d) falls 15 s from now
        SubjectInput(
            "invoice",
            "INV-1001",
            {
                "status": "sent",
                "amount": 420.0,
                "currency": "GBP",
                "due_at": _iso(now + timedelta(days=3, seconds=15)),
            },
            {"customer": "alice"},
        ),
        # overdue (due_at + 1d) falls 35 s from now
        SubjectInput(
            "invoice",
            "INV-1002",
            {
                "status": "sent",
                "amount": 99.5,
                "currency": "USD",
                "due_at": _iso(now - timedelta(days=1) + timedelta(seconds=35)),
            },
            {"customer": "bob"},
        ),
        # created paid: the payment receipt goes out at once
        SubjectInput(
            "invoice",
            "INV-1003",
            {
                "status": "paid",
                "amount": 1200,
                "currency": "EUR",
                "due_at": _iso(now + timedelta(days=10)),
            },
            {"customer": "alice"},
        ),
        # due-soon falls in 9 hours: on the dashboard's "next 24 hours"
        SubjectInput(
            "invoice",
            "INV-1004",
            {
                "status": "sent",
                "amount": 310.0,
                "currency": "EUR",
                "due_at": _iso(now + timedelta(days=3, hours=9)),
            },
            {"customer": "carol"},
        ),
        # the 2-hour reminder falls 50 s from now; the day-before one is already past
        SubjectInput(
            "appointment",
            "APT-7",
            {
                "status": "confirmed",
                "service": "Dental check-up",
                "duration_minutes": 30,
                "starts_at": _iso(now + timedelta(hours=2, seconds=50)),
            },
            {"client": "bob"},
        ),
        # a week out: its reminders stay planned
        SubjectInput(
            "appointment",
            "APT-8",
            {
                "status": "confirmed",
                "service": "Haircut",
                "duration_minutes": 45,
                "starts_at": _iso(now + timedelta(days=7)),
            },
            {"client": "alice"},
        ),
        # tomorrow afternoon: the day-before reminder falls in the next 24 hours
        SubjectInput(
            "appointment",
            "APT-9",
            {
                "status": "confirmed",
                "service": "Eye test",
                "duration_minutes": 20,
                "starts_at": _iso(now + timedelta(hours=30)),
            },
            {"client": "dave"},
        ),
    ]
    # the history first, so ids follow time: lists newest first by id read newest first
    n = seed_history(engine, now)
    engine.upsert_subjects(items)
    return len(items) + n


# --------------------------------------------------------------------------- demo history


@dataclass
class _Row:
    """One fabricated delivery: its identity, what happened and when."""

    rule: str
    step: str
    occurrence: str
    subject: str
    recipient: str
    category: str
    due_at: datetime
    state: str
    at: datetime  # when the outcome was recorded
    reason: str | None = None
    errors: list[str] = field(default_factory=list)  # one per failed attempt
    content: dict[str, Any] = field(default_factory=dict)


# invoices (all paid now): key, customer, amount, currency, days ago the due-soon reminder
# was due, what became of the overdue reminder, days ago it was paid
_INVOICES = (
    ("INV-0901", "alice", 250.0, "GBP", 6.6, "sent", 1.2),
    ("INV-0902", "bob", 75.0, "USD", 6.2, "cancelled", 5.0),
    ("INV-0903", "carol", 1800.0, "EUR", 5.5, "failed", 0.3),
    ("INV-0904", "dave", 60.0, "GBP", 5.1, "cancelled", 4.5),
    ("INV-0905", "alice", 410.0, "GBP", 4.8, "sent", 0.1),
    ("INV-0906", "erin", 99.0, "AUD", 4.4, "skipped", 0.05),
    ("INV-0907", "frank", 300.0, "EUR", 3.9, "cancelled", 2.0),
    ("INV-0908", "bob", 145.0, "USD", 3.3, "cancelled", 2.9),
    ("INV-0909", "carol", 720.0, "EUR", 2.7, "cancelled", 1.1),
    ("INV-0910", "alice", 88.0, "GBP", 2.1, "cancelled", 0.6),
    ("INV-0911", "dave", 1500.0, "GBP", 1.4, "cancelled", 0.9),
    ("INV-0912", "bob", 39.0, "USD", 0.7, "cancelled", 0.25),
    ("INV-0913", "carol", 230.0, "EUR", 0.35, "cancelled", 0.15),
)

# past appointments: key, client, service, minutes, days ago it started, status now, what
# became of the day-before and two-hours reminders
_APPOINTMENTS = (
    ("APT-1", "bob", "Dental check-up", 30, 5.7, "completed", "sent", "sent"),
    ("APT-2", "alice", "Haircut", 45, 4.3, "completed", "skipped:missed", "sent"),
    ("APT-3", "dave", "Eye test", 20, 3.2, "completed", "sent", "failed"),
    ("APT-4", "carol", "Physiotherapy", 50, 2.4, "cancelled", "sent", "cancelled:manual"),
    ("APT-5", "erin", "Massage", 60, 1.6, "completed", "skipped", "skipped"),
    ("APT-6", "bob", "Dental cleaning", 30, 0.5, "completed", "sent", "sent"),
)

_BOUNCE = "550 5.1.1 <frank@mail.invalid>: Recipient address rejected: mailbox unavailable"
_TIMEOUT = "421 4.4.2 smtp.example.net: connection timed out; try again later"


def _fmt(person: Recipient) -> tuple[Any, Any, Any]:
    from babel import dates, numbers

    from duly.core.templatenames import format_locale

    # as the renderer does: the demo's templates are British English (template_language)
    loc = format_locale("en-GB", person.locale).replace("-", "_")
    tz = ZoneInfo(person.timezone or "UTC")

    def money(amount: float, currency: str) -> str:
        return str(numbers.format_currency(amount, currency, locale=loc))

    def day(t: datetime) -> str:
        return str(dates.format_date(t.astimezone(tz).date(), "medium", locale=loc))

    def clock(t: datetime) -> str:
        return str(dates.format_time(t.astimezone(tz), "short", locale=loc))

    return money, day, clock


def _message(kind: str, person: Recipient, **a: Any) -> dict[str, Any]:
    """Title and text as the bundled templates would write them (demo/templates)."""
    money, day, clock = _fmt(person)
    hello = f"Hello {person.name},\n\n"
    if kind == "invoice-due-soon":
        title = f"Invoice {a['key']} is due on {day(a['due_at'])}"
        text = (
            f"{hello}invoice {a['key']} for {money(a['amount'], a['currency'])} is due on "
            f"{day(a['due_at'])}.\n\nThank you,\nAcme Billing\n"
        )
    elif kind == "invoice-overdue":
        title = f"Invoice {a['key']} is overdue"
        text = (
            f"{hello}invoice {a['key']} for {money(a['amount'], a['currency'])} was due on "
            f"{day(a['due_at'])} and is still open. Please pay it at your earliest "
            "convenience.\n\nAcme Billing\n"
        )
    elif kind == "payment-receipt":
        title = f"Payment received for invoice {a['key']}"
        text = (
            f"{hello}we received your payment of {money(a['amount'], a['currency'])} for "
            f"invoice {a['key']}. Thank you!\n\nAcme Billing\n"
        )
    else:
        when = f"{day(a['starts_at'])} at {clock(a['starts_at'])}"
        title = f"Reminder: {a['service']} on {when}"
        text = (
            f"{hello}this is a reminder of your {a['service']} appointment on {when} "
            f"({a['minutes']} minutes).\n\nSee you soon!\n"
        )
    return {"title": title, "body_text": text, "to_address": person.email}


def _outcome(kind: str) -> tuple[str, str | None]:
    state, _, reason = kind.partition(":")
    if reason:
        return state, reason
    return state, {
        "failed": "retries_exhausted",
        "skipped": "no_consent",
        "cancelled": "condition_false",
    }.get(state)


def _history(now: datetime) -> tuple[list[dict[str, Any]], list[_Row]]:
    """The history's subjects (rows of ``subjects``) and deliveries."""
    people = {p.id: p for p in PEOPLE}
    subjects: list[dict[str, Any]] = []
    rows: list[_Row] = []

    def ago(days: float) -> datetime:
        return now - timedelta(days=days)

    for key, who, amount, currency, ds_ago, overdue, paid_ago in _INVOICES:
        person = people[who]
        ref = f"invoice/{key}"
        due_soon = ago(ds_ago)
        due_at = due_soon + timedelta(days=3)
        overdue_at = due_at + timedelta(days=1)
        paid = ago(paid_ago)
        a = {"key": key, "amount": amount, "currency": currency, "due_at": due_at}
        subjects.append(
            {
                "kind": "invoice",
                "key": key,
                "attributes": {
                    "status": "paid",
                    "amount": amount,
                    "currency": currency,
                    "due_at": _iso(due_at),
                },
                "recipients": {"customer": who},
                "revision": 2,  # created "sent", then "paid"
                "created_at": ago(ds_ago + 20),
                "updated_at": paid,
            }
        )
        common = {"subject": ref, "recipient": who}
        # due-soon: sent, except to erin (no consent) and frank (his address bounces)
        if who == "erin":
            state, reason, errors = "skipped", "no_consent", []
        elif who == "frank":
            state, reason, errors = "failed", "permanent_error", [_BOUNCE]
        else:
            state, reason, errors = "sent", None, []
        rows.append(
            _Row(
                "invoice-reminders",
                "due-soon",
                "0",
                category="reminder",
                due_at=due_soon,
                state=state,
                at=due_soon + timedelta(seconds=2),
                reason=reason,
                errors=errors,
                content=_message("invoice-due-soon", person, **a) if state != "skipped" else {},
                **common,
            )
        )
        # overdue: cancelled when paid before it fell due, else what the table says
        state, reason = _outcome(overdue)
        if state == "cancelled":
            at = min(paid, overdue_at)
        else:
            at = overdue_at + timedelta(seconds=3)
        errors = [_TIMEOUT] * 4 if state == "failed" else []
        if state == "failed":
            at = overdue_at + timedelta(minutes=31)  # after its retries
        rows.append(
            _Row(
                "invoice-reminders",
                "overdue",
                "0",
                category="reminder",
                due_at=overdue_at if state != "failed" else at,
                state=state,
                at=at,
                reason=reason,
                errors=errors,
                content=_message("invoice-overdue", person, **a)
                if state in ("sent", "failed")
                else {},
                **common,
            )
        )
        # the receipt (transactional: consent does not stop it; frank's address is
        # suppressed after the bounce)
        state, reason = ("skipped", "suppressed") if who == "frank" else ("sent", None)
        rows.append(
            _Row(
                "payment-receipt",
                "",
                "2",
                category="transactional",
                due_at=paid,
                state=state,
                at=paid + timedelta(seconds=1),
                reason=reason,
                content=_message("payment-receipt", person, **a) if state == "sent" else {},
                **common,
            )
        )

    for key, who, service, minutes, start_ago, status, before, two in _APPOINTMENTS:
        person = people[who]
        ref = f"appointment/{key}"
        starts = ago(start_ago)
        a = {"service": service, "minutes": minutes, "starts_at": starts}
        subjects.append(
            {
                "kind": "appointment",
                "key": key,
                "attributes": {
                    "status": status,
                    "service": service,
                    "duration_minutes": minutes,
                    "starts_at": _iso(starts),
                },
                "recipients": {"client": who},
                "revision": 2,
                "created_at": ago(start_ago + 14),
                "updated_at": starts + timedelta(hours=1),
            }
        )
        for step, planned, kind in (
            ("day-before", starts - timedelta(hours=24), before),
            ("two-hours", starts - timedelta(hours=2), two),
        ):
            state, reason = _outcome(kind)
            if state == "skipped" and person.id != "erin" and reason == "no_consent":
                reason = "missed"
            at = planned + timedelta(seconds=2)
            errors: list[str] = []
            if state == "failed":
                errors = [_TIMEOUT] * 4
                at = planned + timedelta(minutes=31)
            elif state == "skipped" and reason == "missed":
                at = planned + timedelta(hours=5)  # the server was down: too late to send
            elif state == "cancelled":
                at = planned - timedelta(hours=3)
            rows.append(
                _Row(
                    "appointment-reminders",
                    step,
                    "0",
                    subject=ref,
                    recipient=who,
                    category="reminder",
                    due_at=planned if state != "failed" else at,
                    state=state,
                    at=at,
                    reason=reason,
                    errors=errors,
                    content=_message("appointment-reminder", person, **a)
                    if state in ("sent", "failed")
                    else {},
                )
            )
    # only what already happened
    return subjects, [r for r in rows if r.at <= now]


def seed_history(engine: Engine, now: datetime | None = None) -> int:
    """The demo history: fabricated past deliveries so the dashboard has something to show.

    About fifty deliveries over the past 7 days — mostly sent, a few failed (a bounced
    address: ``550 5.1.1 … mailbox unavailable``; an SMTP server that timed out four times),
    skipped (``no_consent``: erin opted out of reminders; ``missed``: too late to send;
    ``suppressed``: frank's bounced address) and cancelled (``condition_false``: the invoice
    was paid before its overdue reminder; ``manual``) — each with its attempt and outcome
    rows in ``delivery_log`` at the times they happened, and the message (title, text,
    address) of those that were sent or tried, so the delivery pages and the outbox show
    them. Also the suppression of frank's address.

    They belong to subjects of their own (paid invoices INV-09xx, past appointments APT-1…6)
    written straight into ``subjects``, without planning: their rules' ``if`` is false now
    (invoices are paid, appointments are over), nothing is pending, and the engine never
    plans for them unless the app sends them again — then the sent rows stay as they are.
    Returns the number of subjects written.
    """
    from duly.store.db import write_transaction
    from duly.store.demo import write_history

    now = (now or engine.clock.now()).replace(microsecond=0)
    subs, rows = _history(now)
    items: list[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]] = []
    rows.sort(key=lambda r: r.due_at)
    for r in rows:
        mid = secrets.token_hex(16) if r.content else None
        attempts = len(r.errors) + (1 if r.state == "sent" else 0)
        sent = r.state == "sent"
        values = {
            "rule": r.rule,
            "step": r.step,
            "occurrence": r.occurrence,
            "subject": r.subject,
            "recipient": r.recipient,
            "channel": "email",
            "state": r.state,
            "reason": r.reason,
            "category": r.category,
            "priority": 0,
            "planned_at": r.due_at,
            "due_at": r.due_at,
            "attempts": attempts,
            "last_error": r.errors[-1] if r.errors else None,
            "error_count": len(r.errors),
            "title": r.content.get("title"),
            "body_text": r.content.get("body_text"),
            "body_html": None,
            "to_address": r.content.get("to_address"),
            "message_id": mid,
            "receipt": f"outbox:{mid}" if sent else None,
            "sent_at": r.at if sent else None,
            "created_at": min(r.due_at, r.at) - timedelta(days=2),
            "updated_at": r.at,
        }
        log: list[dict[str, Any]] = []
        n = 0
        # failed attempts, spaced as retries with backoff (1, 5, 25 minutes)
        t = r.at - timedelta(minutes=31) if len(r.errors) > 1 else r.at
        for i, err in enumerate(r.errors):
            n += 1
            log.append(_log(t, "attempt", attempt=n, error=err))
            t += timedelta(minutes=(1, 5, 25, 0)[min(i, 3)])
        if sent:
            n += 1
            log.append(_log(r.at, "attempt", attempt=n, receipt=f"outbox:{mid}"))
        log.append(
            _log(
                r.at,
                "outcome",
                outcome=r.state,
                reason=r.reason,
                attempt=n,
                title=r.content.get("title") if r.state in ("sent", "failed") else None,
                message_id=mid if r.state in ("sent", "failed") else None,
                planned_at=r.due_at,
            )
        )
        suppression = None
        if r.reason == "permanent_error" and r.content:
            suppression = {
                "address": r.content["to_address"].lower(),
                "channel": "email",
                "reason": r.errors[-1],
                "created_at": r.at,
            }
        items.append((values, log, suppression))
    with write_transaction(engine.db) as conn:
        write_history(conn, subs, items)
    return len(subs)


def _log(at: datetime, kind: str, **values: Any) -> dict[str, Any]:
    """A delivery_log row (its delivery's id is added when the delivery is written)."""
    row: dict[str, Any] = {
        "at": at.astimezone(UTC),
        "kind": kind,
        "outcome": None,
        "reason": None,
        "attempt": None,
        "error": None,
        "receipt": None,
        "title": None,
        "message_id": None,
        "planned_at": None,
    }
    row.update(values)
    return row
