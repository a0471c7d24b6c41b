"""/v1/subjects and /v1/events: upsert (one or a batch), read and delete a subject with its
plan, history and data problems; post an event about a subject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from fastapi import Path as P
from starlette.concurrency import run_in_threadpool

from duly.api import schemas as S
from duly.api.errors import ApiError
from duly.api.v1.common import EngineDep, delivery_out, error_docs
from duly.core.errors import InvalidInput, UnknownSubject
from duly.core.model import held_until_cleared
from duly.core.validation import readable
from duly.engine.service import Engine, SubjectInput


def hold_out(t: datetime | None) -> datetime | str | None:
    """A subject's ``hold_until`` as the API writes it: "indefinite" for a hold until
    cleared (spec: Hold), never the instant the store keeps for it."""
    if t is None:
        return None
    return "indefinite" if held_until_cleared(t) else t.astimezone(UTC)


router = APIRouter()


def _subject_out(eng: Engine, kind: str, key: str, *, detail: bool, result: Any = None) -> Any:
    ref = f"{kind}/{key}"
    with eng.db.connect() as conn:
        rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key))
        if rec is None or rec.deleted:
            raise ApiError(404, "not_found", f"no subject {ref}", "subject")
        rows = eng.store.deliveries_of_subject(conn, ref)
        errors = eng.store.subject_problems(conn, ref) if detail else []
    s = rec.subject
    plan = [delivery_out(r) for r in rows if r["state"] in ("pending", "sending")]
    body: dict[str, Any] = {
        "kind": kind,
        "key": key,
        "revision": s.revision,
        # as far as it can be shown: data stored before the limits of duly.core.validation
        # (deeper than pydantic serialises, lone surrogates) must not make the GET fail
        "attributes": readable(s.attributes),
        "recipients": readable({k: list(v) for k, v in s.recipients.items()}),
        "hold_until": hold_out(s.hold_until),
        "acknowledged": sorted(s.acknowledged),
        "plan": plan,
        "problems": result.problems if result is not None else [],
        "notes": result.notes if result is not None else [],
    }
    if not detail:
        return S.SubjectOut(**body)
    history = [delivery_out(r) for r in rows if r["state"] not in ("pending", "sending")]
    errs = [
        {"rule": e["rule"], "field": e["field"], "message": e["message"], "at": e["at"]}
        for e in errors
    ]
    return S.SubjectDetail(**body, history=history, errors=errs)


@router.put("/subjects/{kind}/{key:path}", response_model=S.SubjectOut, tags=["subjects"])
async def put_subject(
    kind: Annotated[str, P(min_length=1, max_length=100)],
    key: Annotated[str, P(min_length=1, max_length=200)],
    body: S.SubjectIn,
    eng: EngineDep,
) -> S.SubjectOut:
    """Upsert a subject's whole state; answers with its plan (upcoming deliveries)."""
    # The state this request stored (a re-read could show a concurrent upsert's) and its
    # pending rows only, read in its own transaction: the history is GET's business.
    # async, with only the database work in the thread pool: FastAPI would otherwise hop to
    # the pool twice (the handler, then checking its answer against the response model).
    res, rows = await run_in_threadpool(
        eng.upsert_subject_for_answer,
        SubjectInput(kind, key, body.attributes, body.recipients, body.hold_until),
    )
    return subject_answer(kind, key, res, rows)


def subject_answer(kind: str, key: str, res: Any, rows: list[dict[str, Any]]) -> S.SubjectOut:
    """The answer to a PUT: the state the upsert stored (``res``, an UpsertResult) and its
    rows pending or being sent (``rows``). Shared with duly.api.fastput."""
    s = res.subject
    assert s is not None
    return S.SubjectOut(
        kind=kind,
        key=key,
        revision=s.revision,
        attributes=s.attributes,
        recipients={k: list(v) for k, v in s.recipients.items()},
        hold_until=hold_out(s.hold_until),  # as stored
        acknowledged=sorted(s.acknowledged),
        plan=[delivery_out(r) for r in rows],
        problems=res.problems,
        notes=res.notes,
    )


@router.get(
    "/subjects/{kind}/{key:path}",
    response_model=S.SubjectDetail,
    tags=["subjects"],
    responses=error_docs(404),
)
def get_subject(kind: str, key: str, eng: EngineDep) -> S.SubjectDetail:
    """A subject with its plan, history and recorded data problems."""
    return _subject_out(eng, kind, key, detail=True)  # type: ignore[no-any-return]


@router.delete(
    "/subjects/{kind}/{key:path}", status_code=204, tags=["subjects"], responses=error_docs(404)
)
def delete_subject(kind: str, key: str, eng: EngineDep) -> Response:
    """Delete a subject; its pending deliveries are cancelled (subject_deleted)."""
    try:
        eng.delete_subject(kind, key)
    except UnknownSubject:
        raise ApiError(404, "not_found", f"no subject {kind}/{key}", "subject") from None
    return Response(status_code=204)


@router.post("/subjects:batch", response_model=S.BatchOut, tags=["subjects"])
def batch_subjects(body: S.SubjectBatchIn, eng: EngineDep) -> S.BatchOut:
    """Upsert up to 1,000 subjects in one call; a result per item. Items with bad data are
    refused one by one; the others are stored together."""
    from duly.engine.service import _validate_subject

    good: list[SubjectInput] = []
    results: list[S.BatchResult | None] = []
    for item in body.subjects:
        s = SubjectInput(item.kind, item.key, item.attributes, item.recipients, item.hold_until)
        try:
            _validate_subject(s)
        except InvalidInput as exc:
            # readable(): the item's own kind and key may be what was refused (a surrogate)
            results.append(
                S.BatchResult(
                    kind=readable(item.kind),
                    key=readable(item.key),
                    ok=False,
                    error=S.ErrorBody(
                        code=exc.code, message=readable(str(exc)), field=readable(exc.field)
                    ),
                )
            )
            continue
        good.append(s)
        results.append(None)
    done = iter(eng.upsert_subjects(good, validated=True)) if good else iter(())
    by_ref = {r.ref: r for r in done}
    out: list[S.BatchResult] = []
    for item, res in zip(body.subjects, results, strict=True):
        if res is not None:
            out.append(res)
            continue
        r = by_ref[f"{item.kind}/{item.key}"]
        out.append(
            S.BatchResult(
                kind=item.kind,
                key=item.key,
                ok=True,
                revision=r.revision,
                planned=r.created + r.moved,
            )
        )
    ok = sum(1 for r in out if r.ok)
    return S.BatchOut(results=out, ok=ok, failed=len(out) - ok)


# --------------------------------------------------------------------------- events


@router.post(
    "/events",
    response_model=S.EventOut,
    status_code=202,
    tags=["events"],
    responses={200: {"model": S.EventOut, "description": "a repeat: ignored"}},
)
def post_event(body: S.EventIn, eng: EngineDep, response: Response) -> S.EventOut:
    """Post an event about a known subject; ``id`` makes it idempotent (a repeat is
    answered 200 with ``accepted: false``)."""
    accepted = eng.post_event(body.id, body.name, body.subject, body.data)
    if not accepted:
        response.status_code = 200
    return S.EventOut(id=body.id, accepted=accepted)
