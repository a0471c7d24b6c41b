"""Deliveries: a filterable list (newest first, keyset paging) and one delivery in full —
its plan, every attempt with its error and receipt, the rendered message (the HTML part in a
sandboxed frame served by ``/deliveries/{id}/html`` with a CSP of its own), the sibling
deliveries on other channels, and the admin's actions: send now, cancel, retry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response

from duly.engine.service import REMINDER_RULE, Conflict, Engine
from duly.store.db import Connection
from duly.store.pages_deliveries import (
    attempt_totals,
    deliveries_page,
    delivery_html_part,
    sibling_deliveries,
)
from duly.store.receipts import receipts_of
from duly.store.search import find_recipients, find_subjects_by_key
from duly.web.auditing import audited
from duly.web.core import (
    CurrentUser,
    EngineDep,
    OperatorUser,
    flash,
    frame_response,
    page_of,
    parse_day,
    redirect,
    render,
    runtime_of,
    viewer_tz,
)
from duly.web.views.delivery_checks import verdict
from duly.web.words import STATE_FILTER

router = APIRouter()

LIMIT = 50
MAX_ID = 2**62
STATES = ("pending", "sending", "sent", "failed", "skipped", "cancelled", "set", "overdue")

# The frame that shows an email's HTML part: no script, no plugins, no requests but inline
# style and images, and a sandbox even when opened on its own.

DeliveryId = Annotated[int, Path(ge=1, le=MAX_ID)]


# --------------------------------------------------------------------------- the list


@dataclass
class Filters:
    state: str = ""
    rule: str = ""
    channel: str = ""
    recipient: str = ""
    subject: str = ""
    from_: str = ""
    to: str = ""
    finished_from: str = ""
    finished_to: str = ""
    after: int | None = None
    # read values
    start: datetime | None = None
    end: datetime | None = None
    finished: tuple[datetime, datetime] | None = None

    @property
    def active(self) -> bool:
        return any((self.state, self.rule, self.channel, self.recipient, self.subject,
                    self.from_, self.to, self.finished_from, self.finished_to))  # fmt: skip


def _local_midnight(d: date, tz: ZoneInfo) -> datetime:
    from duly.core.rules.timemath import resolve_local

    return resolve_local(datetime.combine(d, time(0, 0)), tz)


def read_filters(request: Request) -> tuple[Filters, dict[str, str]]:
    """The filters of the query string and, per field, what is wrong with it."""
    q = request.query_params
    f = Filters(
        state=q.get("state", "").strip(),
        rule=q.get("rule", "").strip(),
        channel=q.get("channel", "").strip(),
        recipient=q.get("recipient", "").strip(),
        subject=q.get("subject", "").strip(),
        from_=q.get("from", "").strip(),
        to=q.get("to", "").strip(),
        finished_from=q.get("finished_from", "").strip(),
        finished_to=q.get("finished_to", "").strip(),
    )
    errors: dict[str, str] = {}
    if f.state and f.state not in STATES:
        errors["state"] = f"unknown state; choose one of {', '.join(STATES)}"
    for name, value, size in (
        ("rule", f.rule, 200),
        ("channel", f.channel, 100),
        ("recipient", f.recipient, 200),
        ("subject", f.subject, 301),
    ):
        if len(value) > size:
            errors[name] = f"at most {size} characters"
    tz = viewer_tz(request)
    for name, value in (("from", f.from_), ("to", f.to)):
        if not value:
            continue
        try:
            d = parse_day(value)
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        if name == "from":
            f.start = _local_midnight(d, tz)
        else:  # the whole day: up to the next midnight
            f.end = _local_midnight(d + timedelta(days=1), tz)
    if f.start and f.end and f.start >= f.end:
        errors["to"] = "the end date is before the start date"
    _read_finished(f, errors, tz)
    after = q.get("after", "").strip()
    if after:
        if not after.isdigit() or not 1 <= int(after) <= MAX_ID:
            errors["after"] = "the page cursor is not a delivery id"
        else:
            f.after = int(after)
    return f, errors


def _read_finished(f: Filters, errors: dict[str, str], tz: ZoneInfo) -> None:
    """``finished_from`` / ``finished_to``: the local days the outcome was recorded in (the
    dashboard's numbers open these); one given alone means that one day."""
    if not (f.finished_from or f.finished_to):
        return
    days: dict[str, date] = {}
    for name, value in (("finished_from", f.finished_from), ("finished_to", f.finished_to)):
        if value:
            try:
                days[name] = parse_day(value)
            except ValueError as exc:
                errors[name] = str(exc)
    if len(days) != len([v for v in (f.finished_from, f.finished_to) if v]):
        return
    first = days.get("finished_from") or days["finished_to"]
    last = days.get("finished_to") or first
    if last < first:
        errors["finished_to"] = "the end date is before the start date"
        return
    f.finished = (_local_midnight(first, tz), _local_midnight(last + timedelta(days=1), tz))


def resolve_filters(conn: Connection, f: Filters) -> dict[str, str]:
    """What people type into ``recipient`` and ``subject``, made the stored values: a
    recipient's id, or a name, email or phone (accents and case aside) that finds one; a
    subject's KIND/KEY, or a key alone when one subject has it (else the kinds to choose
    from). Changes ``f``; returns, per field, what is wrong."""
    errors: dict[str, str] = {}
    if f.recipient:
        found, _ = find_recipients(conn, f.recipient, limit=6)
        exact = [r for r in found if r["exact"]]
        pick = exact if exact else found
        if len(pick) == 1:
            f.recipient = pick[0]["id"]
        elif len(pick) > 1 and not any(r["id"] == f.recipient for r in pick):
            names = ", ".join(
                f"{r['id']} ({r['name']})" if r["name"] else r["id"] for r in pick[:5]
            )
            errors["recipient"] = f"several recipients match: {names}; enter one of these ids"
        # none: the text is taken as an id (deliveries may name a recipient not stored)
    if f.subject:
        subs = find_subjects_by_key(conn, f.subject, limit=6)
        refs = sorted({f"{s['kind']}/{s['key']}" for s in subs})
        if len(refs) == 1:
            f.subject = refs[0]
        elif refs and f.subject not in refs:
            errors["subject"] = (
                f"{f.subject} is the key of several subjects: enter one of {', '.join(refs[:5])}"
            )
        elif not refs and "/" not in f.subject:
            errors["subject"] = (
                f"no subject has the key {f.subject}; enter a key, or KIND/KEY such as invoice/INV-1"
            )
    return errors


def list_rows(conn: Connection, f: Filters, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Deliveries matching ``f``, newest id first, at most ``limit``."""
    return deliveries_page(
        conn,
        now=now,
        state=f.state,
        rule=f.rule,
        channel=f.channel,
        recipient=f.recipient,
        subject=f.subject,
        start=f.start,
        end=f.end,
        finished=f.finished,
        after=f.after,
        limit=limit,
    )


def recipient_zones(engine: Engine, conn: Connection, ids: set[str]) -> dict[str, str]:
    """Each recipient's zone (one query), the rule file's for those without one."""
    default = getattr(engine.rules, "timezone", None) or "UTC"
    found = engine.store.get_recipients(conn, [i for i in ids if i])
    return {i: (found[i].timezone if i in found and found[i].timezone else default) for i in ids}


def subject_statuses(engine: Engine, conn: Connection, refs: set[str]) -> dict[str, Any]:
    """Each live subject's current ``status`` attribute by "kind/key" (one read per kind):
    the words for a condition no longer met say what the subject is now ("the invoice is
    now paid"). Callers pass a page's subjects (bounded by the page)."""
    keys = [tuple(r.split("/", 1)) for r in refs if r and "/" in r]
    found = engine.store.get_subjects(conn, keys)  # type: ignore[arg-type]
    return {
        f"{k}/{v}": rec.subject.attributes.get("status")
        for (k, v), rec in found.items()
        if not rec.deleted and isinstance(rec.subject.attributes, dict)
    }


def rule_options(request: Request, selected: str) -> list[tuple[str, str]]:
    names = [r.name for r in runtime_of(request).rules.rules] + [REMINDER_RULE]
    if selected and selected not in names:
        names.append(selected)
    return [(n, "One-off reminders" if n == REMINDER_RULE else n) for n in names]


def channel_options(request: Request, selected: str) -> list[tuple[str, str]]:
    names = list(runtime_of(request).rules.channels)
    if selected and selected not in names:
        names.append(selected)
    return [(n, n) for n in names]


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries_list(request: Request, user: CurrentUser, engine: EngineDep) -> Response:
    f, errors = read_filters(request)
    now = engine.clock.now()
    rows: list[dict[str, Any]] = []
    zones: dict[str, str] = {}
    statuses: dict[str, Any] = {}
    totals: dict[int, int] = {}
    if not errors:
        with engine.db.connect() as conn:
            errors = resolve_filters(conn, f)
            if not errors:
                rows = list_rows(conn, f, now, LIMIT + 1)
                zones = recipient_zones(engine, conn, {r["recipient"] for r in rows[:LIMIT]})
                statuses = subject_statuses(engine, conn, {r["subject"] for r in rows[:LIMIT]})
                for r, n in attempt_totals(conn, [r["id"] for r in rows[:LIMIT]]).items():
                    totals[r] = n
    page = page_of(rows, LIMIT, request)
    return render(
        request,
        "deliveries/list.html",
        {
            "f": f,
            "errors": errors,
            "page": page,
            "zones": zones,
            "statuses": statuses,
            "totals": totals,
            "states": list(STATE_FILTER.items()),
            "rules": rule_options(request, f.rule),
            "channels": channel_options(request, f.channel),
            "title": "Deliveries",
        },
        status=400 if errors else 200,
    )


# --------------------------------------------------------------------------- one delivery


def _receipt(value: str | None) -> tuple[str | None, bool]:
    """The receipt as text, pretty-printed when it is JSON (then True)."""
    if not value:
        return None, False
    try:
        parsed = json.loads(value)
    except ValueError:
        return value, False
    if isinstance(parsed, dict | list):
        return json.dumps(parsed, indent=2, sort_keys=True, ensure_ascii=False), True
    return value, False


def _occurrence(value: str) -> str:
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return str(v)


@router.get("/deliveries/{did}", response_class=HTMLResponse)
def delivery_detail(
    did: DeliveryId, request: Request, user: CurrentUser, engine: EngineDep
) -> Response:
    with engine.db.connect() as conn:
        row = engine.store.delivery(conn, did)
        if row is None:
            raise HTTPException(404)
        history = engine.store.delivery_history(conn, did)
        siblings = sibling_deliveries(conn, row)
        totals = attempt_totals(conn, [s["id"] for s in siblings])
        zones = recipient_zones(engine, conn, {row["recipient"]})
        reports = receipts_of(conn, did)  # provider callbacks, in the order they happened
        statuses = subject_statuses(engine, conn, {row["subject"]})
        # what Retry / Send now would lead to, on today's data (warned beside the button)
        warning = (
            verdict(engine, conn, row, engine.clock.now())
            if row["state"] in ("pending", "failed", "skipped", "cancelled")
            else None
        )
    receipt, receipt_json = _receipt(row["receipt"])
    attempts = [
        {**h, "receipt_text": _receipt(h["receipt"])[0]} for h in history if h["kind"] == "attempt"
    ]
    outcomes = [h for h in history if h["kind"] == "outcome"]
    return render(
        request,
        "deliveries/detail.html",
        {
            "d": row,
            "occurrence": _occurrence(row["occurrence"]),
            "receipt": receipt,
            "receipt_json": receipt_json,
            "attempts": attempts,
            "outcomes": outcomes,
            "siblings": siblings,
            "totals": totals,
            "statuses": statuses,
            "warning": warning,
            # the log keeps every attempt; the row's counter restarts at a retry
            "attempts_total": len(attempts),
            "receipts": reports,
            "recipient_tz": zones.get(row["recipient"]),
            "title": f"Delivery {did}",
        },
    )


@router.get("/deliveries/{did}/html")
def delivery_html(did: DeliveryId, user: CurrentUser, engine: EngineDep) -> Response:
    """The stored HTML part, for the sandboxed frame of the delivery and outbox pages."""
    with engine.db.connect() as conn:
        html = delivery_html_part(conn, did)
    if not html:
        raise HTTPException(404)
    return frame_response(html)


# --------------------------------------------------------------------------- actions

_ACTIONS = {
    "send-now": ("send_now", "Delivery {id} is due now: the dispatcher sends it shortly."),
    "cancel": ("cancel_delivery", "Delivery {id} was cancelled."),
    "retry": (
        "retry_delivery",
        "Delivery {id} is pending again and due now: the dispatcher sends it shortly.",
    ),
}
_WONT = {
    "send-now": "Delivery {id} is due now, but it will not be sent: {why}.",
    "retry": "Delivery {id} is pending again, but it will not be sent: {why}.",
}
_WAITS = {
    "send-now": "Delivery {id} is due now, but it waits: {why}.",
    "retry": "Delivery {id} is pending again, but it waits: {why}.",
}


# what the audit trail says (duly.web.auditing)
_AUDIT = {
    "send-now": "Send now: made due now",
    "cancel": "Cancelled by hand",
    "retry": "Retry: pending again, due now",
}


def _act(request: Request, user: Any, engine: Engine, did: int, action: str) -> Response:
    method, done = _ACTIONS[action]
    try:
        with audited(request, user, action, "delivery", str(did), _AUDIT[action]):
            getattr(engine, method)(did)
    except Conflict as exc:
        flash(request, f"Not done: {exc}.", "error")
        return redirect(f"/deliveries/{did}")
    v = None
    if action in _WONT:  # say what will happen, on today's data, not only what was done
        with engine.db.connect() as conn:
            row = engine.store.delivery(conn, did)
            v = verdict(engine, conn, row, engine.clock.now()) if row is not None else None
    if v is None:
        flash(request, done.format(id=did))
    else:
        text = (_WAITS if v.waits else _WONT)[action].format(id=did, why=v.text)
        flash(request, text, "info")
    return redirect(f"/deliveries/{did}")


@router.post("/deliveries/{did}/send-now")
def send_now(did: DeliveryId, request: Request, user: OperatorUser, engine: EngineDep) -> Response:
    return _act(request, user, engine, did, "send-now")


@router.post("/deliveries/{did}/cancel")
def cancel(did: DeliveryId, request: Request, user: OperatorUser, engine: EngineDep) -> Response:
    return _act(request, user, engine, did, "cancel")


@router.post("/deliveries/{did}/retry")
def retry(did: DeliveryId, request: Request, user: OperatorUser, engine: EngineDep) -> Response:
    return _act(request, user, engine, did, "retry")
