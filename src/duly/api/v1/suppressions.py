"""/v1/suppressions: addresses suppressed after a permanent failure; list and clear."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as P

from duly.api.errors import ApiError
from duly.api.v1.common import EngineDep, error_docs

router = APIRouter()


@router.get("/suppressions", tags=["suppressions"])
def list_suppressions(
    eng: EngineDep, all: Annotated[bool, Query(description="include cleared ones")] = False
) -> dict[str, list[dict[str, Any]]]:
    """Addresses suppressed after a permanent failure (deliveries to them are skipped
    ``suppressed``), newest first."""
    with eng.db.connect() as conn:
        rows = eng.store.list_suppressions(conn, active=not all)
    keep = ("id", "address", "channel", "reason", "delivery_id", "created_at", "cleared_at")
    return {"items": [{k: r[k] for k in keep} for r in rows]}


@router.delete(
    "/suppressions/{address}", status_code=204, tags=["suppressions"], responses=error_docs(404)
)
def clear_suppression(
    address: Annotated[str, P(min_length=1, max_length=320)], eng: EngineDep
) -> Response:
    """Clear the suppression of an address: deliveries to it go out again."""
    from duly.store.db import write_transaction

    with write_transaction(eng.db) as conn:
        n = eng.store.clear_suppression(conn, address, eng.clock.now())
    if not n:
        raise ApiError(404, "not_found", f"{address} is not suppressed", "address")
    return Response(status_code=204)
