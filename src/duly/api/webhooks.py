"""/v1/webhooks: the outgoing webhook outbox, for operators — which events were sent, which
are waiting or failed and why (every attempt with its status code or error), and a retry for
a failed one. URLs are shown without query string or password (they may carry a token)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as P
from pydantic import BaseModel, Field

from duly.api.edge import id_cursor, id_from_cursor
from duly.api.errors import ApiError
from duly.api.schemas import ErrorOut  # the one error shape: one schema name
from duly.delivery import webhooks
from duly.store.db import write_transaction

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

EventId = Annotated[int, P(ge=1, le=2**62)]


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no webhook event with that id"}
}


class WebhookAttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(description="None: no answer (refused, timeout, network)")
    error: str | None
    duration_ms: int


class WebhookEventOut(BaseModel):
    id: int
    msg_id: str = Field(description="the webhook-id header, the same on every retry")
    type: str = Field(examples=["subject.updated", "delivery.sent", "action"])
    url: str
    state: str = Field(description="pending | sent | failed")
    attempts: int
    next_at: datetime | None = Field(description="when it is tried next (pending only)")
    last_status: int | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    payload: Any


class WebhookEventDetail(WebhookEventOut):
    attempt_log: list[WebhookAttemptOut]


class WebhookEventList(BaseModel):
    items: list[WebhookEventOut]
    next_cursor: str | None


def _db(request: Request) -> Any:
    return request.app.state.runtime.db


def _clock(request: Request) -> Any:
    return request.app.state.runtime.engine.clock


def _cursor(before: int) -> str:
    return id_cursor("w", before)


def _uncursor(c: str | None) -> int | None:
    return id_from_cursor("w", c)


@router.get(
    "/events",
    response_model=WebhookEventList,
    responses={422: {"model": ErrorOut, "description": "a bad filter or cursor"}},
)
def list_webhook_events(
    request: Request,
    state: Annotated[str | None, Query(pattern="^(pending|sent|failed)$")] = None,
    type: Annotated[str | None, Query(max_length=200)] = None,  # noqa: A002 - the field's name
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> WebhookEventList:
    """Webhook events, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    with _db(request).connect() as conn:
        rows = webhooks.list_events(
            conn, state=state, type=type, before_id=_uncursor(cursor), limit=limit + 1
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return WebhookEventList(
        items=[WebhookEventOut(**r) for r in rows],
        next_cursor=_cursor(rows[-1]["id"]) if more and rows else None,
    )


@router.get("/events/{eid}", response_model=WebhookEventDetail, responses=NOT_FOUND)
def get_webhook_event(eid: EventId, request: Request) -> WebhookEventDetail:
    """One webhook event with every attempt."""
    with _db(request).connect() as conn:
        ev = webhooks.get_event(conn, eid)
    if ev is None:
        raise ApiError(404, "not_found", f"no webhook event {eid}", "id")
    return WebhookEventDetail(**ev)


@router.post(
    "/events/{eid}/retry",
    response_model=WebhookEventDetail,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorOut, "description": "the event is not failed (pending or sent)"},
    },
)
def retry_webhook_event(eid: EventId, request: Request) -> WebhookEventDetail:
    """Send a failed event again, now, with a full set of retries."""
    with write_transaction(_db(request)) as conn:
        done = webhooks.retry(conn, eid, _clock(request).now())
        ev = webhooks.get_event(conn, eid)
    if ev is None:
        raise ApiError(404, "not_found", f"no webhook event {eid}", "id")
    if not done:
        raise ApiError(409, "conflict", f"webhook event {eid} is {ev['state']}, not failed", "id")
    runtime = request.app.state.runtime
    if getattr(runtime, "webhooks", None) is not None:
        runtime.webhooks.wake()
    return WebhookEventDetail(**ev)
