"""/v1/recipients: create or replace, read, delete a recipient."""

from __future__ import annotations

from fastapi import APIRouter, Response

from duly.api import schemas as S
from duly.api.errors import ApiError
from duly.api.v1.common import EngineDep, RecipientId, error_docs
from duly.core.model import Recipient

router = APIRouter()


def _recipient_out(r: Recipient) -> S.RecipientOut:
    return S.RecipientOut(
        id=r.id,
        name=r.name,
        email=r.email,
        phone=r.phone,
        timezone=r.timezone,
        locale=r.locale,
        addresses=r.addresses,
        consent=S.Consent(**r.consent) if r.consent else S.Consent(),
    )


@router.put(
    "/recipients/{rid}",
    response_model=S.RecipientOut,
    tags=["recipients"],
    responses={201: {"model": S.RecipientOut, "description": "created"}},
)
def put_recipient(
    rid: RecipientId, body: S.RecipientPut, eng: EngineDep, response: Response
) -> S.RecipientOut:
    """Create or replace a recipient (whole state). The body may repeat the path's id."""
    if body.id is not None and body.id != rid:
        raise ApiError(
            422,
            "invalid",
            f"id: the body's id {body.id!r} is not the path's {rid!r} "
            "(leave it out, or give the same)",
            "id",
        )
    consent = body.consent.model_dump(exclude_none=True, exclude_defaults=True)
    r = Recipient(
        id=rid,
        name=body.name,
        email=body.email,
        phone=body.phone,
        timezone=body.timezone,
        locale=body.locale,
        addresses=dict(body.addresses),
        consent=consent,
    )
    created = eng.put_recipient(r)
    response.status_code = 201 if created else 200
    return _recipient_out(r)


@router.get(
    "/recipients/{rid}",
    response_model=S.RecipientOut,
    tags=["recipients"],
    responses=error_docs(404),
)
def get_recipient(rid: RecipientId, eng: EngineDep) -> S.RecipientOut:
    with eng.db.connect() as conn:
        r = eng.store.get_recipients(conn, [rid]).get(rid)
    if r is None:
        raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    return _recipient_out(r)


@router.delete("/recipients/{rid}", status_code=204, tags=["recipients"], responses=error_docs(404))
def delete_recipient(rid: RecipientId, eng: EngineDep) -> Response:
    """Delete a recipient; its pending deliveries are cancelled (recipient_removed)."""
    with eng.db.connect() as conn:
        if not eng.store.get_recipients(conn, [rid]):
            raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    eng.delete_recipient(rid)
    return Response(status_code=204)
