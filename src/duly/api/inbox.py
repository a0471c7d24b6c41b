"""The inbox API: a recipient's in-app notifications, their read state and a
Server-Sent Events stream of new ones.

* ``GET  /v1/recipients/{id}/inbox?unread=&limit=&cursor=`` — items newest first, the unread
  count and ``next_cursor``
* ``GET  /v1/recipients/{id}/inbox/count`` — ``{"unread": n}``
* ``POST /v1/recipients/{id}/inbox/{delivery_id}/read`` — mark read (404: not an item of
  this recipient's inbox)
* ``GET  /v1/recipients/{id}/inbox/stream`` — ``text/event-stream``: ``event: message`` with
  the item as JSON for every new item, ``id:`` its stream position (``Last-Event-ID``
  resumes), a ``: keep-alive`` comment every 15 s. How new items are found:
  :mod:`duly.engine.inbox`.

A recipient id with no items (or unknown) has an empty inbox, not a 404: items outlive a
deleted recipient until retention prunes them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi import Path as P
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from duly.api.errors import ApiError
from duly.api.schemas import ErrorOut
from duly.engine.inbox import InboxNotifier, InboxStore, inbox_channel_names

__all__ = ["HEARTBEAT", "router"]

HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle stream

router = APIRouter(prefix="/v1", tags=["inbox"])

RecipientId = Annotated[str, P(min_length=1, max_length=200)]
DbId = Annotated[int, P(ge=1, le=2**62)]
_404 = {404: {"model": ErrorOut, "description": "not an item of this recipient's inbox"}}


class InboxItem(BaseModel):
    id: int  # the delivery id
    title: str | None
    text: str | None
    html: str | None
    sent_at: str | None
    read_at: str | None
    rule: str
    subject: str | None
    category: str


class InboxPage(BaseModel):
    items: list[InboxItem]
    unread: int
    next_cursor: str | None


class InboxCount(BaseModel):
    unread: int


def inbox_of(app: Any) -> tuple[InboxStore, InboxNotifier]:
    """The app's inbox store and notifier, made on first use. The notifier hooks itself to
    the dispatcher's ``on_outcome`` (called after a send's transaction commits) unless the
    runtime already wired one (``runtime.inbox_notifier``)."""
    state = app.state
    found = getattr(state, "inbox", None)
    if found is not None:
        return found  # type: ignore[no-any-return]
    runtime = state.runtime
    notifier = getattr(runtime, "inbox_notifier", None)
    if notifier is not None:
        store = notifier.store
    else:
        store = InboxStore(runtime.db, inbox_channel_names(getattr(runtime, "rules", None)))
        notifier = InboxNotifier(store)
        disp = getattr(runtime, "dispatcher", None)
        if disp is not None:
            previous = disp.on_outcome

            def on_outcome(row: Any, logrow: dict[str, Any]) -> None:
                if previous is not None:
                    previous(row, logrow)
                notifier.on_outcome(row, logrow)

            disp.on_outcome = on_outcome
    state.inbox = (store, notifier)
    return store, notifier


@router.get("/recipients/{rid}/inbox", response_model=InboxPage)
def list_inbox(
    rid: RecipientId,
    request: Request,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> InboxPage:
    """The recipient's inbox, newest first; ``unread=true`` lists only unread items."""
    store, _ = inbox_of(request.app)
    try:
        items, nxt = store.list(rid, unread=unread, limit=limit, cursor=cursor)
    except ValueError:
        raise ApiError(422, "invalid", "cursor is not one this API gave out", "cursor") from None
    return InboxPage(
        items=[InboxItem(**i) for i in items], unread=store.unread_count(rid), next_cursor=nxt
    )


@router.get("/recipients/{rid}/inbox/count", response_model=InboxCount)
def count_inbox(rid: RecipientId, request: Request) -> InboxCount:
    """How many items the recipient has not read."""
    store, _ = inbox_of(request.app)
    return InboxCount(unread=store.unread_count(rid))


@router.post("/recipients/{rid}/inbox/{delivery_id}/read", response_model=InboxItem, responses=_404)
def read_item(rid: RecipientId, delivery_id: DbId, request: Request) -> InboxItem:
    """Mark an item read (again: no change, the first read time stays)."""
    store, _ = inbox_of(request.app)
    now = request.app.state.runtime.engine.clock.now()
    item = store.mark_read(rid, delivery_id, now)
    if item is None:
        raise ApiError(404, "not_found", f"no item {delivery_id} in {rid}'s inbox", "delivery_id")
    return InboxItem(**item)


def _event(log_id: int, item: dict[str, Any]) -> str:
    data = json.dumps(item, separators=(",", ":"))
    return f"id: {log_id}\nevent: message\ndata: {data}\n\n"


@router.get(
    "/recipients/{rid}/inbox/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def stream_inbox(
    rid: RecipientId,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> StreamingResponse:
    """New items as Server-Sent Events (``event: message``, the item as JSON); send
    ``Last-Event-ID`` to get the items recorded since that event first."""
    resume: int | None = None
    if last_event_id:
        try:
            resume = max(0, int(last_event_id))
        except ValueError:
            raise ApiError(
                422, "invalid", "Last-Event-ID is not an event id", "Last-Event-ID"
            ) from None
    _, notifier = await run_in_threadpool(inbox_of, request.app)
    conn = await run_in_threadpool(_connect, notifier, rid, resume, asyncio.get_running_loop())

    async def events() -> AsyncIterator[str]:
        try:
            yield ": connected\nretry: 1000\n\n"
            while True:
                try:
                    log_id, item = await asyncio.wait_for(conn.queue.get(), HEARTBEAT)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield _event(log_id, item)
        finally:
            notifier.disconnect(conn)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _connect(
    notifier: InboxNotifier, rid: str, resume: int | None, loop: asyncio.AbstractEventLoop
) -> Any:
    # registering reads the database: off the event loop, on the stream's loop
    return notifier.connect(rid, resume, loop=loop)
