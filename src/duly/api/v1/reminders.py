"""/v1/reminders: one-off reminders — create, read, edit and delete (edit and delete only
until one of its deliveries was sent)."""

from __future__ import annotations

from datetime import UTC

from fastapi import APIRouter, Response

from duly.api import schemas as S
from duly.api.errors import ApiError
from duly.api.v1.common import DbId, EngineDep, delivery_out, error_docs
from duly.core.model import LATE_AFTER
from duly.engine.service import Engine, ReminderInput
from duly.store.pages_records import every_reminder_delivery, live_reminder

router = APIRouter()


def _reminder_out(eng: Engine, rid: int) -> S.ReminderOut:
    with eng.db.connect() as conn:
        r = live_reminder(conn, rid)
        if r is None:
            raise ApiError(404, "not_found", f"no reminder {rid}", "id")
        rows = every_reminder_delivery(conn, rid)
    now = eng.clock.now()
    live = [x for x in rows if x["state"] != "cancelled"]
    counts = S.ReminderCounts(
        total=len(live),
        pending=sum(1 for x in live if x["state"] in ("pending", "sending")),
        sent=sum(1 for x in live if x["state"] == "sent"),
        overdue=sum(
            1
            for x in live
            if x["state"] in ("pending", "sending") and x["due_at"] < now - LATE_AFTER
        ),
        failed=sum(1 for x in live if x["state"] == "failed"),
    )
    return S.ReminderOut(
        id=r["id"],
        title=r["title"],
        message=r["message"],
        recipients=r["recipients"],
        send_at=r["send_at"],
        channels=r["channels"],
        subject=r["subject"],
        category=r["category"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        counts=counts,
        deliveries=[delivery_out(x) for x in rows],
    )


@router.post("/reminders", response_model=S.ReminderOut, status_code=201, tags=["reminders"])
def create_reminder(body: S.ReminderIn, eng: EngineDep) -> S.ReminderOut:
    """A one-off reminder to several recipients on several channels. Refused: send_at in
    the past, no channel, no recipient, an unknown channel or subject."""
    rid = eng.create_reminder(
        ReminderInput(
            body.title,
            body.message,
            body.send_at.astimezone(UTC),
            body.recipients,
            body.channels,
            body.subject,
            body.category,
        )
    )
    return _reminder_out(eng, rid)


@router.get(
    "/reminders/{rid}", response_model=S.ReminderOut, tags=["reminders"], responses=error_docs(404)
)
def get_reminder(rid: DbId, eng: EngineDep) -> S.ReminderOut:
    return _reminder_out(eng, rid)


@router.patch(
    "/reminders/{rid}",
    response_model=S.ReminderOut,
    tags=["reminders"],
    responses=error_docs(404, 409),
)
def patch_reminder(rid: DbId, body: S.ReminderPatch, eng: EngineDep) -> S.ReminderOut:
    """Edit a reminder that has not been sent (409 once sent)."""
    cur = _reminder_out(eng, rid)
    ch = body.model_dump(exclude_unset=True)
    send_at = ch.get("send_at") or cur.send_at
    eng.update_reminder(
        rid,
        ReminderInput(
            title=ch.get("title") or cur.title,
            message=ch["message"] if ch.get("message") is not None else cur.message,
            send_at=send_at.astimezone(UTC),
            recipients=ch.get("recipients") or cur.recipients,
            channels=ch.get("channels") or cur.channels,
            subject=ch["subject"] if "subject" in ch else cur.subject,
            category=ch.get("category") or cur.category,
        ),
    )
    return _reminder_out(eng, rid)


@router.delete(
    "/reminders/{rid}", status_code=204, tags=["reminders"], responses=error_docs(404, 409)
)
def delete_reminder(rid: DbId, eng: EngineDep) -> Response:
    """Delete a reminder that has not been sent (409 once sent)."""
    eng.delete_reminder(rid)
    return Response(status_code=204)
