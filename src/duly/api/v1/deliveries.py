"""/v1/deliveries: the filtered list (newest first, cursor paging), one delivery in full,
and the actions send-now, cancel and retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from duly.api import schemas as S
from duly.api.edge import id_cursor, id_from_cursor
from duly.api.errors import ApiError
from duly.api.v1.common import DbId, EngineDep, delivery_out, error_docs
from duly.engine.service import Engine
from duly.store.receipts import receipts_of

router = APIRouter()


def _cursor(after: int | None) -> str | None:
    return None if after is None else id_cursor("d", after)


@router.get("/deliveries", response_model=S.DeliveryList, tags=["deliveries"])
def list_deliveries(
    eng: EngineDep,
    state: Annotated[
        str | None, Query(pattern="^(pending|sending|sent|failed|skipped|cancelled|set)$")
    ] = None,
    rule: Annotated[str | None, Query(max_length=200)] = None,
    subject: Annotated[str | None, Query(max_length=301)] = None,
    recipient: Annotated[str | None, Query(max_length=200)] = None,
    channel: Annotated[str | None, Query(max_length=100)] = None,
    from_: Annotated[S.Instant | None, Query(alias="from")] = None,
    to: Annotated[S.Instant | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> S.DeliveryList:
    """Deliveries, newest first, filtered; pass ``next_cursor`` back as ``cursor`` for more."""
    with eng.db.connect() as conn:
        rows = eng.store.list_deliveries(
            conn,
            state=state,
            rule=rule,
            subject=subject,
            recipient=recipient,
            channel=channel,
            from_=from_,
            to=to,
            after_id=id_from_cursor("d", cursor),
            limit=limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return S.DeliveryList(
        items=[delivery_out(r) for r in rows],
        next_cursor=_cursor(rows[-1]["id"]) if more and rows else None,
    )


@router.get(
    "/deliveries/{did}",
    response_model=S.DeliveryDetail,
    tags=["deliveries"],
    responses=error_docs(404),
)
def get_delivery(did: DbId, eng: EngineDep) -> S.DeliveryDetail:
    """One delivery: plan, every attempt with its error, history, rendered content, receipt."""
    with eng.db.connect() as conn:
        r = eng.store.delivery(conn, did)
        if r is None:
            raise ApiError(404, "not_found", f"no delivery {did}", "id")
        hist = eng.store.delivery_history(conn, did)
        got = receipts_of(conn, did)
    base = delivery_out(r).model_dump()
    return S.DeliveryDetail(
        **base,
        deadline_at=r["deadline_at"],
        receipt=r["receipt"],
        changes=r["changes"],
        content=S.Content(
            to=r["to_address"], title=r["title"], text=r["body_text"], html=r["body_html"]
        ),
        attempt_log=[
            S.Attempt(
                attempt=h["attempt"],
                at=h["at"],
                error=h["error"],
                receipt=h["receipt"],
                outcome=h["outcome"],
            )
            for h in hist
            if h["kind"] == "attempt"
        ],
        possibly_sent_before=any(
            h["kind"] == "attempt" and h["outcome"] == "unknown" for h in hist
        ),
        history=[
            S.HistoryItem(at=h["at"], outcome=h["outcome"], reason=h["reason"])
            for h in hist
            if h["kind"] == "outcome"
        ],
        receipts=[S.ReceiptOut(**x) for x in got],
    )


def _action(did: int, eng: Engine, fn: str) -> S.DeliveryOut:
    getattr(eng, fn)(did)
    with eng.db.connect() as conn:
        r = eng.store.delivery(conn, did)
    assert r is not None
    return delivery_out(r)


@router.post(
    "/deliveries/{did}/send-now",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=error_docs(404, 409),
)
def send_now(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Make a pending delivery due now (policies still apply); 409 unless pending."""
    return _action(did, eng, "send_now")


@router.post(
    "/deliveries/{did}/cancel",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=error_docs(404, 409),
)
def cancel(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Cancel a pending delivery (reason manual); 409 unless pending."""
    return _action(did, eng, "cancel_delivery")


@router.post(
    "/deliveries/{did}/retry",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=error_docs(404, 409),
)
def retry(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Try a failed, skipped or cancelled delivery again now; 409 otherwise (a sent
    delivery is never sent twice)."""
    return _action(did, eng, "retry_delivery")
