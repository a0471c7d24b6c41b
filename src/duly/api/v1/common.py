"""What the /v1 resource modules share: the documented error answers, the Engine
dependency, path parameter types, and a delivery row as the API shows it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as P

from duly.api import schemas as S
from duly.core.model import held_until_cleared
from duly.core.planner import Identity
from duly.core.validation import readable
from duly.engine.service import Engine

__all__ = ["DbId", "EngineDep", "RecipientId", "delivery_out", "engine", "error_docs"]


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, all in the one error shape."""
    what = {
        401: "no API key, or not a valid one",
        404: "no such record",
        409: "the record's state does not allow this",
        413: "the body is too large",
        422: "invalid input; `error.field` names it",
        429: "busy: as many simulations as the server runs at once are running; see Retry-After",
    }
    return {c: {"model": S.ErrorOut, "description": what[c]} for c in codes}


async def engine(request: Request) -> Engine:
    # async: FastAPI runs a plain ``def`` dependency in the thread pool, a hop per request
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(engine)]
RecipientId = Annotated[str, P(min_length=1, max_length=200)]
DbId = Annotated[int, P(ge=1, le=2**62)]


def delivery_out(r: dict[str, Any]) -> S.DeliveryOut:
    ident = Identity.from_db(
        r["rule"], r["step"], r["occurrence"], r["subject"], r["recipient"], r["channel"]
    )
    # readable(): rows planned from text older versions let in (a lone surrogate) still show
    return S.DeliveryOut(
        id=r["id"],
        rule=r["rule"],
        step=readable(ident.step),
        occurrence=readable(ident.occurrence),
        subject=readable(ident.subject),
        recipient=readable(ident.recipient),
        channel=ident.channel,
        state=r["state"],
        reason=r["reason"],
        category=r["category"],
        planned_at=r["planned_at"],
        # spec: Hold: a row waiting for an indefinite hold to be cleared has no date
        due_at=None if held_until_cleared(r["due_at"]) else r["due_at"],
        held_until_cleared=held_until_cleared(r["due_at"]) and r["state"] == "pending",
        sent_at=r["sent_at"],
        attempts=r["attempts"],
        last_error=readable(r["last_error"]),
        title=readable(r["title"]),
        message_id=r["message_id"],
    )
