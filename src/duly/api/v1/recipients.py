"""/v1/recipients: create or replace (one or a batch), read, delete a recipient."""

from __future__ import annotations

from fastapi import APIRouter, Response

from duly.api import schemas as S
from duly.api.errors import ApiError
from duly.api.v1.common import EngineDep, RecipientId, error_docs
from duly.core.errors import InvalidInput
from duly.core.model import Recipient
from duly.core.validation import readable

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
    r = _recipient(rid, body)
    created = eng.put_recipient(r)
    response.status_code = 201 if created else 200
    return _recipient_out(r)


def _recipient(rid: str, body: S.RecipientIn) -> Recipient:
    return Recipient(
        id=rid,
        name=body.name,
        email=body.email,
        phone=body.phone,
        timezone=body.timezone,
        locale=body.locale,
        addresses=dict(body.addresses),
        consent=body.consent.model_dump(exclude_none=True, exclude_defaults=True),
    )


@router.post("/recipients:batch", response_model=S.RecipientBatchOut, tags=["recipients"])
def batch_recipients(body: S.RecipientBatchIn, eng: EngineDep) -> S.RecipientBatchOut:
    """Create or replace up to 1,000 recipients in one call (whole state each); a result
    per item, in order. Items with bad data are refused one by one; the others are stored
    together, in one transaction."""
    from duly.engine.service.inputs import _validate_recipient

    good: list[Recipient] = []
    results: list[S.RecipientBatchResult | None] = []
    for item in body.recipients:
        r = _recipient(item.id, item)
        try:
            _validate_recipient(r)
        except InvalidInput as exc:
            error = S.ErrorBody(
                code=exc.code, message=readable(str(exc)), field=readable(exc.field)
            )
            results.append(S.RecipientBatchResult(id=readable(item.id), ok=False, error=error))
            continue
        good.append(r)
        results.append(None)
    created = iter(eng.put_recipients(good) if good else ())
    out = [
        res
        if res is not None
        else S.RecipientBatchResult(id=item.id, ok=True, created=next(created))
        for item, res in zip(body.recipients, results, strict=True)
    ]
    ok = sum(1 for r in out if r.ok)
    return S.RecipientBatchOut(results=out, ok=ok, failed=len(out) - ok)


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
