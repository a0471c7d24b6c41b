"""The outbox: when email is not sent by SMTP (an ``outbox`` channel, what ``email`` is
when no SMTP host is configured), every message duly "sent" is kept with its delivery; this
page reads them like a mail client — a list (newest first, search by address or subject)
and a reading pane with the headers, the text part and the HTML part in the sandboxed frame
of ``/deliveries/{id}/html``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response

from duly.store.pages_deliveries import outbox_page
from duly.web.core import CurrentUser, EngineDep, page_of, render, runtime_of

router = APIRouter()

LIMIT = 50
MAX_ID = 2**62

OutboxId = Annotated[int, Path(ge=1, le=MAX_ID)]


def outbox_channels(request: Request) -> list[str]:
    """Names of the channels whose messages are kept, not sent."""
    return [n for n, c in runtime_of(request).rules.channels.items() if c.type == "outbox"]


def _page(request: Request, engine: Any, selected: int | None) -> Response:
    channels = outbox_channels(request)
    rules = runtime_of(request).rules
    if not channels:
        configured = [(n, c.type) for n, c in rules.channels.items()]
        return render(
            request,
            "outbox/none.html",
            {"configured": configured, "title": "Outbox"},
        )
    q = request.query_params
    search = q.get("q", "").strip()[:200]
    error = None
    after = None
    raw_after = q.get("after", "").strip()
    if raw_after:
        if raw_after.isdigit() and 1 <= int(raw_after) <= MAX_ID:
            after = int(raw_after)
        else:
            error = "The page cursor is not a message id."
    message = None
    rows: list[dict[str, Any]] = []
    with engine.db.connect() as conn:
        if error is None:
            rows = outbox_page(conn, channels, search, after, LIMIT + 1)
        if selected is not None:
            found = engine.store.outbox(conn, channels, 1, selected)
            if not found:
                raise HTTPException(404)
            message = found[0]
    page = page_of(rows, LIMIT, request)
    keep = ("?" + request.url.query) if request.url.query else ""
    return render(
        request,
        "outbox/list.html",
        {
            "page": page,
            "search": search,
            "error": error,
            "message": message,
            "channels": channels,
            "keep": keep,
            "title": f"Outbox: {message['title'] or 'message ' + str(message['id'])}"
            if message
            else "Outbox",
        },
        status=400 if error else 200,
    )


@router.get("/outbox", response_class=HTMLResponse)
def outbox(request: Request, user: CurrentUser, engine: EngineDep) -> Response:
    return _page(request, engine, None)


@router.get("/outbox/{did}", response_class=HTMLResponse)
def outbox_message(
    did: OutboxId, request: Request, user: CurrentUser, engine: EngineDep
) -> Response:
    return _page(request, engine, did)
