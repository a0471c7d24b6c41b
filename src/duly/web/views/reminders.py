"""One-off reminders: list, detail, create, edit, delete, send now.

A reminder becomes one delivery of the reserved rule ``@reminder`` per recipient and
channel (occurrence = the reminder's id). Writes go through the Engine (create_reminder,
update_reminder, delete_reminder, send_now); a reminder any of whose deliveries was sent is
read-only (the Engine answers Conflict, shown as a 409 page).

The form is checked here first, every field at once, so the page can show each problem on
its field (send time in the past, no channel, no recipient, unknown ids); the Engine checks
again and a refusal it still makes is mapped to its field by ``InvalidInput.field``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.core.errors import DulyError, InvalidInput, NotFound
from duly.core.model import Category
from duly.engine.service import Conflict, Engine, ReminderInput
from duly.store.db import Connection
from duly.store.pages_records import (
    first_recipient_ids,
    live_reminder,
    reminder_counts,
    reminder_deliveries,
    reminders_page,
)
from duly.web.auditing import audited, record_now
from duly.web.core import (
    CurrentUser,
    EngineDep,
    OperatorUser,
    engine_of,
    flash,
    page_of,
    parse_local_datetime,
    redirect,
    render,
    to_local_input,
    viewer_tz,
)

router = APIRouter()

PAGE = 50
MAX_ROWS = 500  # deliveries shown on one reminder's page (recipients x channels)
MAX_RECIPIENTS = 1000  # as the API (ReminderIn)
DbId = Annotated[int, Path(ge=1, le=2**62)]
CATEGORIES = [c.value for c in Category]
_SPLIT = re.compile(r"[\s,;]+")


# --------------------------------------------------------------------------- state and rows


def status_of(counts: Mapping[str, int]) -> str:
    """One word for a reminder, the worst first: failed, overdue, pending, sent; a
    reminder with nothing left to send (all cancelled or skipped) is ``cancelled`` or
    ``skipped``."""
    if counts["failed"]:
        return "failed"
    if counts["overdue"]:
        return "overdue"
    if counts["pending"]:
        return "pending"
    if counts["sent"]:
        return "sent"
    return "skipped" if counts["total"] else "cancelled"


def _reminder(conn: Connection, rid: int) -> dict[str, Any]:
    r = live_reminder(conn, rid)
    if r is None:
        raise NotFound(f"There is no reminder {rid} (it may have been deleted).")
    return r


def _rows_of(conn: Connection, rid: int) -> list[dict[str, Any]]:
    return reminder_deliveries(conn, rid, MAX_ROWS)


def _is_sent(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Sent (read-only) once any delivery went out or is going out (service._reminder_rows)."""
    return any(x["state"] in ("sent", "sending") for x in rows)


# --------------------------------------------------------------------------- list


@router.get("/reminders", response_class=HTMLResponse)
def reminder_list(
    request: Request,
    user: CurrentUser,
    eng: EngineDep,
    after: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> Response:
    now = eng.clock.now()
    with eng.db.connect() as conn:
        rows = reminders_page(conn, after, PAGE + 1)
        page = page_of(rows, PAGE, request)
        counts = reminder_counts(conn, [r["id"] for r in page.items], now)
    items = [
        {**r, "counts": counts[r["id"]], "status": status_of(counts[r["id"]])} for r in page.items
    ]
    return render(
        request, "reminders/list.html", {"page": page, "items": items, "first": after is None}
    )


# --------------------------------------------------------------------------- detail


@router.get("/reminders/new", response_class=HTMLResponse)
def new_form(request: Request, user: OperatorUser, eng: EngineDep, subject: str = "") -> Response:
    tz = viewer_tz(request)
    start = (eng.clock.now() + timedelta(hours=1)).replace(second=0, microsecond=0)
    values = {
        "title": "",
        "message": "",
        "send_at": to_local_input(start, tz),
        "recipients": "",
        "channels": ["email"] if "email" in eng.rules.channels else [],
        "subject": subject[:301],
        "category": "reminder",
    }
    return _form(request, eng, values, {}, None)


@router.get("/reminders/{rid}", response_class=HTMLResponse)
def reminder_detail(request: Request, rid: DbId, user: CurrentUser, eng: EngineDep) -> Response:
    now = eng.clock.now()
    with eng.db.connect() as conn:
        r = _reminder(conn, rid)
        rows = _rows_of(conn, rid)
        people = eng.store.get_recipients(
            conn, {x["recipient"] for x in rows} | set(r["recipients"])
        )
        counts = reminder_counts(conn, [rid], now)[rid]
        subject_ok = False
        if r["subject"]:
            kind, _, key = r["subject"].partition("/")
            rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key))
            subject_ok = rec is not None and not rec.deleted
    sent = _is_sent(rows)
    return render(
        request,
        "reminders/detail.html",
        {
            "r": r,
            "rows": rows,
            "people": people,
            "counts": counts,
            "status": status_of(counts),
            "sent": sent,
            "pending": sum(1 for x in rows if x["state"] == "pending"),
            "subject_ok": subject_ok,
            "title": r["title"],
        },
    )


# --------------------------------------------------------------------------- the form


def _form(
    request: Request,
    eng: Engine,
    values: Mapping[str, Any],
    errors: Mapping[str, str],
    rid: int | None,
    status: int = 200,
) -> Response:
    with eng.db.connect() as conn:
        known = first_recipient_ids(conn)
    return render(
        request,
        "reminders/form.html",
        {
            "v": values,
            "errors": errors,
            "rid": rid,
            "channels": sorted(eng.rules.channels),
            "categories": CATEGORIES,
            "known": known,
            "title": f"Edit reminder {rid}" if rid else "New reminder",
        },
        status,
    )


def _values_of(form: Any) -> dict[str, Any]:
    def text(name: str, n: int) -> str:
        v = form.get(name, "")
        return (v if isinstance(v, str) else "")[:n]

    return {
        "title": text("title", 600),
        "message": text("message", 20001),
        "send_at": text("send_at", 40),
        "recipients": text("recipients", 20000),
        "channels": [c for c in form.getlist("channels") if isinstance(c, str)][:50],
        "subject": text("subject", 400).strip(),
        "category": text("category", 20),
    }


def _check(
    eng: Engine, values: Mapping[str, Any], tz: ZoneInfo
) -> tuple[ReminderInput | None, dict[str, str]]:
    """Every field checked at once: (the input, {}) or (None, {field: message})."""
    errors: dict[str, str] = {}
    now = eng.clock.now()
    title = values["title"].strip()
    if not title:
        errors["title"] = "Give the reminder a title."
    elif len(title) > 500:
        errors["title"] = "Keep the title under 500 characters."
    message = values["message"]
    if len(message) > 20000:
        errors["message"] = "Keep the message under 20,000 characters."
    send_at: datetime | None = None
    try:
        send_at = parse_local_datetime(values["send_at"], tz)
    except ValueError as exc:
        errors["send_at"] = f"Send time: {exc}."
    except OverflowError:
        errors["send_at"] = "Send time: enter a date and time as YYYY-MM-DD HH:MM."
    if send_at is not None and send_at < now - timedelta(seconds=1):
        errors["send_at"] = (
            "The send time is in the past. Choose a time after "
            f"{now.astimezone(tz).strftime('%Y-%m-%d %H:%M')} ({tz.key})."
        )
    channels = list(dict.fromkeys(values["channels"]))
    if not channels:
        errors["channels"] = "Choose at least one channel."
    else:
        unknown = [c for c in channels if c not in eng.rules.channels]
        if unknown:
            errors["channels"] = (
                f"Unknown channel {unknown[0]!r}; the rules define: "
                + ", ".join(sorted(eng.rules.channels))
                + "."
            )
    ids = list(dict.fromkeys(p for p in _SPLIT.split(values["recipients"]) if p))
    if not ids:
        errors["recipients"] = "Enter at least one recipient id."
    elif len(ids) > MAX_RECIPIENTS:
        errors["recipients"] = f"At most {MAX_RECIPIENTS} recipients in one reminder."
    elif any(len(p) > 200 for p in ids):
        errors["recipients"] = "A recipient id has at most 200 characters."
    subject = values["subject"] or None
    kind = key = ""
    if subject is not None:
        kind, sep, key = subject.partition("/")
        if not (kind and sep and key) or len(subject) > 301:
            errors["subject"] = (
                "Write the subject as KIND/KEY, e.g. invoice/INV-1001, or leave it empty."
            )
    category = values["category"] or "reminder"
    if category not in CATEGORIES:
        errors["category"] = "Choose transactional, reminder or promotional."
    # ids and subject exist? (one query each)
    with eng.db.connect() as conn:
        if "recipients" not in errors:
            have = eng.store.get_recipients(conn, ids)
            missing = [p for p in ids if p not in have]
            if missing:
                names = ", ".join(repr(p) for p in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                errors["recipients"] = (
                    f"No recipient with id {names}{more}. Recipients are added through the API "
                    "(PUT /v1/recipients/{id})."
                )
        if subject is not None and "subject" not in errors:
            rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key))
            if rec is None or rec.deleted:
                errors["subject"] = f"There is no subject {subject}."
    if errors or send_at is None:
        return None, errors
    return (
        ReminderInput(title, message, send_at, ids, channels, subject, category),
        {},
    )


def _field_of(exc: DulyError) -> str:
    f = (exc.field or "").split(".")[0]
    return (
        f
        if f in ("title", "message", "send_at", "recipients", "channels", "subject", "category")
        else "title"
    )


@router.post("/reminders")
async def create(request: Request, user: OperatorUser) -> Response:
    form = await request.form()
    eng = engine_of(request)
    tz = viewer_tz(request)
    values = _values_of(form)

    def work() -> tuple[int | None, dict[str, str]]:
        inp, errors = _check(eng, values, tz)
        if inp is None:
            return None, errors
        try:
            rid = eng.create_reminder(inp)
        except InvalidInput as exc:
            return None, {_field_of(exc): str(exc)}
        # its id is known once it is committed: the entry is written just after
        record_now(request, user, "create", "reminder", str(rid), f"Reminder “{inp.title}” "
                   f"planned for {inp.send_at.isoformat()}", subject=inp.subject or None)  # fmt: skip
        return rid, {}

    rid, errors = await run_in_threadpool(work)
    if rid is None:
        return await run_in_threadpool(_form, request, eng, values, errors, None, 400)
    flash(request, f"Reminder “{values['title'].strip()}” planned.")
    return redirect(f"/reminders/{rid}")


@router.get("/reminders/{rid}/edit", response_class=HTMLResponse)
def edit_form(request: Request, rid: DbId, user: OperatorUser, eng: EngineDep) -> Response:
    with eng.db.connect() as conn:
        r = _reminder(conn, rid)
        rows = _rows_of(conn, rid)
    if _is_sent(rows):
        raise Conflict(f"Reminder {rid} was sent already: sent reminders are read-only.")
    tz = viewer_tz(request)
    values = {
        "title": r["title"],
        "message": r["message"],
        "send_at": to_local_input(r["send_at"], tz),
        "recipients": ", ".join(r["recipients"]),
        "channels": list(r["channels"]),
        "subject": r["subject"] or "",
        "category": r["category"],
    }
    return _form(request, eng, values, {}, rid)


@router.post("/reminders/{rid}/edit")
async def update(request: Request, rid: DbId, user: OperatorUser) -> Response:
    form = await request.form()
    eng = engine_of(request)
    tz = viewer_tz(request)
    values = _values_of(form)

    def work() -> dict[str, str]:
        with eng.db.connect() as conn:
            _reminder(conn, rid)  # 404 first
            if _is_sent(_rows_of(conn, rid)):  # 409 before validating, as the Engine
                raise Conflict(f"Reminder {rid} was sent already: sent reminders are read-only.")
        inp, errors = _check(eng, values, tz)
        if inp is None:
            return errors
        try:
            with audited(request, user, "edit", "reminder", str(rid), f"Reminder “{inp.title}” "
                         f"changed, sends at {inp.send_at.isoformat()}",
                         subject=inp.subject or None):  # fmt: skip
                eng.update_reminder(rid, inp)
        except (NotFound, Conflict):
            raise
        except InvalidInput as exc:
            return {_field_of(exc): str(exc)}
        return {}

    errors = await run_in_threadpool(work)
    if errors:
        return await run_in_threadpool(_form, request, eng, values, errors, rid, 400)
    flash(request, "Reminder saved.")
    return redirect(f"/reminders/{rid}")


@router.post("/reminders/{rid}/delete")
def delete(request: Request, rid: DbId, user: OperatorUser, eng: EngineDep) -> Response:
    with eng.db.connect() as conn:
        subject = _reminder(conn, rid)["subject"] or None  # 404 first
    with audited(request, user, "delete", "reminder", str(rid), f"Reminder {rid} deleted",
                 subject=subject):  # fmt: skip
        eng.delete_reminder(rid)  # NotFound → 404 page, Conflict (sent) → 409 page
    flash(request, f"Reminder {rid} deleted; its deliveries were cancelled.")
    return redirect("/reminders")


@router.post("/reminders/{rid}/send-now")
def send_now(request: Request, rid: DbId, user: OperatorUser, eng: EngineDep) -> Response:
    with eng.db.connect() as conn:
        _reminder(conn, rid)
        ids = [x["id"] for x in _rows_of(conn, rid) if x["state"] == "pending"]
    done = 0
    for did in ids:
        try:
            with audited(request, user, "send-now", "delivery", str(did),
                         f"Send now (reminder {rid}): made due now"):  # fmt: skip
                eng.send_now(did)
            done += 1
        except (Conflict, NotFound):
            continue  # claimed or changed meanwhile
    if done:
        flash(request, f"{done} deliver{'y' if done == 1 else 'ies'} due now: sending shortly.")
    else:
        flash(request, "Nothing pending to send.", "info")
    return redirect(f"/reminders/{rid}")
