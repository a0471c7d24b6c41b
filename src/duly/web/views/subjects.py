"""Subjects: search by kind and key; a subject's page with its attributes, recipients, plan,
history, problems, hold, and its one-off reminders.

Holding goes through the Engine like the API's PUT /v1/subjects/{kind}/{key}: the subject is
upserted again with the same attributes and recipients and a new ``hold_until`` (None clears
it), which re-plans it (planner.apply_hold; the dispatcher's hold check for event and one-off
messages).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.core.errors import InvalidInput
from duly.core.model import HOLD_INDEFINITE, held_until_cleared
from duly.engine.service import SubjectInput
from duly.store.db import Connection
from duly.store.pages_records import (
    pending_per_subject,
    reminder_counts,
    reminders_of_subject,
    stored_subject_kinds,
    subject_history,
    subject_plan,
    subject_times,
    subjects_page,
)
from duly.store.search import subject_details
from duly.web.auditing import audited
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
    subject_path,
    to_local_input,
    viewer_tz,
)
from duly.web.subjectcells import describe, role_ids
from duly.web.views.reminders import status_of

router = APIRouter()

PAGE = 50
ROWS = 100  # plan and history rows shown on a subject's page
# "Hold indefinitely": a hold until it is cleared (spec: Hold; the engine keeps it as
# duly.core.model.HOLD_INDEFINITE). Shown as "indefinitely (until cleared)", never as a date.
INDEFINITE = HOLD_INDEFINITE


def _kinds(eng: Any, conn: Connection) -> list[str]:
    """Kinds the rules name, and kinds stored (at most 100 of them)."""
    ruled = {r.subject for r in eng.rules.rules if getattr(r, "subject", None)}
    stored = stored_subject_kinds(conn, limit=100)
    return sorted(ruled | set(stored))


# --------------------------------------------------------------------------- list


@router.get("/subjects", response_class=HTMLResponse)
def subject_list(
    request: Request,
    user: CurrentUser,
    eng: EngineDep,
    kind: Annotated[str, Query(max_length=100)] = "",
    key: Annotated[str, Query(max_length=200)] = "",
    deleted: Annotated[str, Query(max_length=5)] = "",
    after: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> Response:
    now = eng.clock.now()
    key = key.strip()
    with eng.db.connect() as conn:
        rows = subjects_page(
            conn, kind=kind, key=key, deleted=bool(deleted), after=after, limit=PAGE + 1
        )
        page = page_of(rows, PAGE, request)
        refs = [f"{r['kind']}/{r['key']}" for r in page.items]
        pending = pending_per_subject(conn, refs)
        kinds = _kinds(eng, conn)
        details = subject_details(conn, [r["id"] for r in page.items])
        rows = [{**r, **details.get(r["id"], {})} for r in page.items]
        views = eng.rules.subjects
        people = eng.store.get_recipients(conn, role_ids(views, rows))
    tz = viewer_tz(request)
    items = [
        {
            **r,
            **describe(views, r, now=now, tz=tz, people=people),
            "url": subject_path(r["kind"], r["key"]),
            "pending": pending.get(f"{r['kind']}/{r['key']}", 0),
            "held": r["hold_until"] is not None and r["hold_until"] > now,
            "indefinite": held_until_cleared(r["hold_until"]),
        }
        for r in rows
    ]
    # one kind on the page (chosen, or the only one): its columns are the table's; with
    # several kinds each row shows its own as "label: value"
    shown = {r["kind"] for r in items}
    one = kind if kind else (next(iter(shown)) if len(shown) == 1 else "")
    view = views.get(one) if one else None
    columns = [c.label for c in view.columns] if view else []
    return render(
        request,
        "subjects/list.html",
        {
            "page": page,
            "items": items,
            "kinds": kinds,
            "kind": kind,
            "key": key,
            "deleted": bool(deleted),
            "searching": bool(kind or key or deleted or after),
            "columns": columns,
        },
    )


# --------------------------------------------------------------------------- one subject


def _load(eng: Any, kind: str, key: str, tz: Any) -> dict[str, Any]:
    ref = f"{kind}/{key}"
    now = eng.clock.now()
    with eng.db.connect() as conn:
        rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key))
        if rec is None or rec.deleted:
            raise HTTPException(404)
        times = subject_times(conn, rec.id)
        plan = subject_plan(conn, ref, ROWS + 1)
        history = subject_history(conn, ref, ROWS + 1)
        problems = eng.store.subject_problems(conn, ref)
        rems = reminders_of_subject(conn, ref, PAGE)
        counts = reminder_counts(conn, [r["id"] for r in rems], now)
        ids = {i for ids in rec.subject.recipients.values() for i in ids}
        ids |= {d["recipient"] for d in plan + history if d["recipient"]}
        people = eng.store.get_recipients(conn, ids)
    for r in rems:
        r["counts"] = counts[r["id"]]
        r["status"] = status_of(counts[r["id"]])
    s = rec.subject
    hold = s.hold_until
    shown = describe(
        eng.rules.subjects,
        {"kind": kind, "key": key, "attributes": s.attributes, "recipients": s.recipients},
        now=now,
        tz=tz,
        people=people,
    )
    return {
        "shown": shown,
        "s": s,
        "ref": ref,
        "url": subject_path(kind, key),
        "created_at": times[0] if times else None,
        "updated_at": times[1] if times else None,
        "plan": plan[:ROWS],
        "plan_more": len(plan) > ROWS,
        "history": history[:ROWS],
        "history_more": len(history) > ROWS,
        "problems": problems,
        "reminders": rems,
        "people": people,
        "held": hold is not None and hold > now,
        "indefinite": held_until_cleared(hold),
        "hold_ended": hold is not None and hold <= now,
        "title": f"{ref} — {shown['title']}" if shown["title"] else ref,
    }


@router.get("/subjects/{kind}/{key:path}", response_class=HTMLResponse)
def subject_page(
    request: Request, kind: str, key: str, user: CurrentUser, eng: EngineDep
) -> Response:
    if not key or len(kind) > 100 or len(key) > 200:
        raise HTTPException(404)
    ctx = _load(eng, kind, key, viewer_tz(request))
    ctx["hold_value"] = (
        to_local_input(ctx["s"].hold_until, viewer_tz(request))
        if ctx["held"] and not ctx["indefinite"]
        else ""
    )
    ctx["errors"] = {}
    return render(request, "subjects/detail.html", ctx)


def _hold_text(until: datetime | None) -> str | None:
    """A hold's end as the audit trail keeps it: ISO UTC, "indefinite", or None."""
    if until is None:
        return None
    return "indefinite" if held_until_cleared(until) else until.isoformat()


NOTE_MAX = 300  # characters of a hold's note


@router.post("/subjects/{kind}/{key:path}")
async def hold(request: Request, kind: str, key: str, user: OperatorUser) -> Response:
    """The hold form: ``action`` = hold (with ``until`` or ``indefinite``) or clear."""
    form = await request.form()
    eng = engine_of(request)
    tz = viewer_tz(request)
    action = str(form.get("action", ""))
    until_text = str(form.get("until", ""))[:40]
    # why, in the operator's words ("promised to pay by the 15th"): kept in the audit trail
    note = " ".join(str(form.get("note", "")).split())[:NOTE_MAX]
    if not key or len(kind) > 100 or len(key) > 200:
        raise HTTPException(404)

    def work() -> tuple[str | None, str]:
        """(error or None, flash message)."""
        s = eng.get_subject(kind, key)
        if s is None:
            raise HTTPException(404)
        now = eng.clock.now()
        until: datetime | None
        if action == "clear":
            until = None
            msg = "Hold cleared: pending deliveries are back at their planned times."
        elif action == "hold":
            if form.get("indefinite"):
                until = HOLD_INDEFINITE
                msg = "On hold until you clear it."
            else:
                try:
                    until = parse_local_datetime(until_text, tz)
                except (ValueError, OverflowError) as exc:
                    return f"Hold until: {exc}.", ""
                if until <= now:
                    return "Hold until: choose a time in the future.", ""
                local = until.astimezone(tz)
                msg = f"On hold until {local.strftime('%a %d %b %Y, %H:%M')} {local.tzname()}."
        else:
            return "Choose hold or clear hold.", ""
        ref = f"{kind}/{key}"
        try:
            with audited(
                request,
                user,
                "hold" if until is not None else "clear_hold",
                "subject",
                ref,
                f"{msg} Note: {note}" if note else msg,
                subject=ref,
                before={"hold_until": _hold_text(s.hold_until)},
                after={"hold_until": _hold_text(until)},
            ):
                eng.upsert_subject(
                    SubjectInput(kind, key, dict(s.attributes), dict(s.recipients), until)
                )
        except InvalidInput as exc:
            return str(exc), ""
        return None, msg

    error, msg = await run_in_threadpool(work)
    if error is not None:
        ctx = await run_in_threadpool(_load, eng, kind, key, tz)
        ctx["hold_value"] = until_text
        ctx["hold_note"] = note
        ctx["errors"] = {"until": error}
        return render(request, "subjects/detail.html", ctx, 400)
    flash(request, msg)
    return redirect(subject_path(kind, key))
