"""The /v1 resources (spec/api.md): recipients, subjects, events, deliveries, reminders,
rules, simulate. Handlers are plain functions (run in the server's thread pool) over the
engine; they turn its errors into the one JSON error shape."""

from __future__ import annotations

import io
import re
import tempfile
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as P

from duly.api import schemas as S
from duly.api.edge import id_cursor, id_from_cursor
from duly.api.errors import ApiError, error_response
from duly.engine.service import REMINDER_RULE, Engine, ReminderInput, SubjectInput
from duly.errors import DulyError, InvalidInput, UnknownSubject
from duly.model import Recipient
from duly.planner import Identity
from duly.validation import readable


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
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


router = APIRouter(prefix="/v1", responses=_errors(401, 413, 422))

# A template file name posted to /simulate is written into a temporary folder: no path
# separator, no leading dot, no NUL, short enough for any file system (255 bytes).
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def engine(request: Request) -> Engine:
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(engine)]
RecipientId = Annotated[str, P(min_length=1, max_length=200)]
DbId = Annotated[int, P(ge=1, le=2**62)]


# --------------------------------------------------------------------------- helpers


def _delivery(r: dict[str, Any]) -> S.DeliveryOut:
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
        due_at=r["due_at"],
        sent_at=r["sent_at"],
        attempts=r["attempts"],
        last_error=readable(r["last_error"]),
        title=readable(r["title"]),
        message_id=r["message_id"],
    )


def _subject_out(eng: Engine, kind: str, key: str, *, detail: bool, result: Any = None) -> Any:
    ref = f"{kind}/{key}"
    with eng.db.connect() as conn:
        rec = eng.store.get_subjects(conn, [(kind, key)]).get((kind, key))
        if rec is None or rec.deleted:
            raise ApiError(404, "not_found", f"no subject {ref}", "subject")
        rows = eng.store.deliveries_of_subject(conn, ref)
        errors = eng.store.subject_problems(conn, ref) if detail else []
    s = rec.subject
    plan = [_delivery(r) for r in rows if r["state"] in ("pending", "sending")]
    body: dict[str, Any] = {
        "kind": kind,
        "key": key,
        "revision": s.revision,
        # as far as it can be shown: data stored before the limits of duly.validation
        # (deeper than pydantic serialises, lone surrogates) must not make the GET fail
        "attributes": readable(s.attributes),
        "recipients": readable({k: list(v) for k, v in s.recipients.items()}),
        "hold_until": s.hold_until,
        "acknowledged": sorted(s.acknowledged),
        "plan": plan,
        "problems": result.problems if result is not None else [],
        "notes": result.notes if result is not None else [],
    }
    if not detail:
        return S.SubjectOut(**body)
    history = [_delivery(r) for r in rows if r["state"] not in ("pending", "sending")]
    errs = [
        {"rule": e["rule"], "field": e["field"], "message": e["message"], "at": e["at"]}
        for e in errors
    ]
    return S.SubjectDetail(**body, history=history, errors=errs)


def _cursor(after: int | None) -> str | None:
    return None if after is None else id_cursor("d", after)


# --------------------------------------------------------------------------- recipients


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
    "/recipients/{rid}", response_model=S.RecipientOut, tags=["recipients"], responses=_errors(404)
)
def get_recipient(rid: RecipientId, eng: EngineDep) -> S.RecipientOut:
    with eng.db.connect() as conn:
        r = eng.store.get_recipients(conn, [rid]).get(rid)
    if r is None:
        raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    return _recipient_out(r)


@router.delete("/recipients/{rid}", status_code=204, tags=["recipients"], responses=_errors(404))
def delete_recipient(rid: RecipientId, eng: EngineDep) -> Response:
    """Delete a recipient; its pending deliveries are cancelled (recipient_removed)."""
    with eng.db.connect() as conn:
        if not eng.store.get_recipients(conn, [rid]):
            raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    eng.delete_recipient(rid)
    return Response(status_code=204)


# --------------------------------------------------------------------------- subjects


@router.put("/subjects/{kind}/{key:path}", response_model=S.SubjectOut, tags=["subjects"])
def put_subject(
    kind: Annotated[str, P(min_length=1, max_length=100)],
    key: Annotated[str, P(min_length=1, max_length=200)],
    body: S.SubjectIn,
    eng: EngineDep,
) -> S.SubjectOut:
    """Upsert a subject's whole state; answers with its plan (upcoming deliveries)."""
    res = eng.upsert_subject(
        SubjectInput(kind, key, body.attributes, body.recipients, body.hold_until)
    )
    s = res.subject
    assert s is not None
    # The state this request stored (a re-read could show a concurrent upsert's) and its
    # pending rows only: the history is GET's business.
    with eng.db.connect() as conn:
        rows = eng.store.deliveries_of_subject(conn, res.ref, states=("pending", "sending"))
    return S.SubjectOut(
        kind=kind,
        key=key,
        revision=s.revision,
        attributes=s.attributes,
        recipients={k: list(v) for k, v in s.recipients.items()},
        hold_until=s.hold_until.astimezone(UTC) if s.hold_until else None,  # as stored
        acknowledged=sorted(s.acknowledged),
        plan=[_delivery(r) for r in rows],
        problems=res.problems,
        notes=res.notes,
    )


@router.get(
    "/subjects/{kind}/{key:path}",
    response_model=S.SubjectDetail,
    tags=["subjects"],
    responses=_errors(404),
)
def get_subject(kind: str, key: str, eng: EngineDep) -> S.SubjectDetail:
    """A subject with its plan, history and recorded data problems."""
    return _subject_out(eng, kind, key, detail=True)  # type: ignore[no-any-return]


@router.delete(
    "/subjects/{kind}/{key:path}", status_code=204, tags=["subjects"], responses=_errors(404)
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
    done = iter(eng.upsert_subjects(good)) if good else iter(())
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


# --------------------------------------------------------------------------- deliveries


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
        items=[_delivery(r) for r in rows],
        next_cursor=_cursor(rows[-1]["id"]) if more and rows else None,
    )


@router.get(
    "/deliveries/{did}",
    response_model=S.DeliveryDetail,
    tags=["deliveries"],
    responses=_errors(404),
)
def get_delivery(did: DbId, eng: EngineDep) -> S.DeliveryDetail:
    """One delivery: plan, every attempt with its error, history, rendered content, receipt."""
    with eng.db.connect() as conn:
        r = eng.store.delivery(conn, did)
        if r is None:
            raise ApiError(404, "not_found", f"no delivery {did}", "id")
        hist = eng.store.delivery_history(conn, did)
    base = _delivery(r).model_dump()
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
    )


def _action(did: int, eng: Engine, fn: str) -> S.DeliveryOut:
    getattr(eng, fn)(did)
    with eng.db.connect() as conn:
        r = eng.store.delivery(conn, did)
    assert r is not None
    return _delivery(r)


@router.post(
    "/deliveries/{did}/send-now",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=_errors(404, 409),
)
def send_now(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Make a pending delivery due now (policies still apply); 409 unless pending."""
    return _action(did, eng, "send_now")


@router.post(
    "/deliveries/{did}/cancel",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=_errors(404, 409),
)
def cancel(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Cancel a pending delivery (reason manual); 409 unless pending."""
    return _action(did, eng, "cancel_delivery")


@router.post(
    "/deliveries/{did}/retry",
    response_model=S.DeliveryOut,
    tags=["deliveries"],
    responses=_errors(404, 409),
)
def retry(did: DbId, eng: EngineDep) -> S.DeliveryOut:
    """Try a failed, skipped or cancelled delivery again now; 409 otherwise (a sent
    delivery is never sent twice)."""
    return _action(did, eng, "retry_delivery")


# --------------------------------------------------------------------------- reminders


def _reminder_out(eng: Engine, rid: int) -> S.ReminderOut:
    from duly.store.tables import deliveries, reminders

    with eng.db.connect() as conn:
        r = (
            conn.execute(
                sa.select(reminders).where(reminders.c.id == rid, reminders.c.deleted_at.is_(None))
            )
            .mappings()
            .first()
        )
        if r is None:
            raise ApiError(404, "not_found", f"no reminder {rid}", "id")
        rows = (
            conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.rule == REMINDER_RULE, deliveries.c.occurrence == str(rid))
                .order_by(deliveries.c.id)
            )
            .mappings()
            .all()
        )
    now = eng.clock.now()
    live = [x for x in rows if x["state"] != "cancelled"]
    counts = S.ReminderCounts(
        total=len(live),
        pending=sum(1 for x in live if x["state"] in ("pending", "sending")),
        sent=sum(1 for x in live if x["state"] == "sent"),
        overdue=sum(1 for x in live if x["state"] in ("pending", "sending") and x["due_at"] < now),
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
        deliveries=[_delivery(dict(x)) for x in rows],
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
    "/reminders/{rid}", response_model=S.ReminderOut, tags=["reminders"], responses=_errors(404)
)
def get_reminder(rid: DbId, eng: EngineDep) -> S.ReminderOut:
    return _reminder_out(eng, rid)


@router.patch(
    "/reminders/{rid}",
    response_model=S.ReminderOut,
    tags=["reminders"],
    responses=_errors(404, 409),
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


@router.delete("/reminders/{rid}", status_code=204, tags=["reminders"], responses=_errors(404, 409))
def delete_reminder(rid: DbId, eng: EngineDep) -> Response:
    """Delete a reminder that has not been sent (409 once sent)."""
    eng.delete_reminder(rid)
    return Response(status_code=204)


# --------------------------------------------------------------------------- rules


@router.get("/rules", response_model=S.RulesOut, tags=["rules"])
def get_rules(eng: EngineDep) -> S.RulesOut:
    """The loaded rules."""
    rf = eng.rules
    out = []
    for r in rf.rules:
        trigger = (
            r.cron
            if r.cron
            else ((r.on.event or f"change of {r.on.change}") if r.on is not None else None)
        )
        out.append(
            S.RuleOut(
                name=r.name,
                kind=r.kind,
                subject=r.subject,
                category=str(r.category),
                channels=list(r.channels or r.fallback or ()),
                steps=[s.name for s in r.steps],
                trigger=trigger,
                line=r.line,
            )
        )
    return S.RulesOut(path=str(rf.path), timezone=rf.timezone, rules=out)


@router.post("/rules:check", response_model=S.RulesCheckOut, tags=["rules"])
def check_rules(body: S.RulesCheckIn) -> S.RulesCheckOut:
    """Validate a rule file without loading it (templates are not required)."""
    from duly.rules.loader import RuleFileError, load_rules_text

    try:
        rf = load_rules_text(body.rules, path="duly.yaml", check_templates=False, resolve_env=False)
    except RuleFileError as exc:
        return S.RulesCheckOut(
            ok=False,
            errors=[
                S.RuleErrorOut(file=e.file, line=e.line, field=e.field, message=e.message)
                for e in exc.errors
            ],
        )
    return S.RulesCheckOut(ok=True, rules=len(rf.rules))


# --------------------------------------------------------------------------- simulate


@router.post("/simulate", response_model=S.SimulateOut, tags=["simulate"], responses=_errors(429))
def simulate(body: S.SimulateIn) -> Any:
    """Run a simulation (spec/simulate.md) of posted rules over a posted timeline. With
    ``templates`` (file name → source) messages are rendered; without, nothing is.

    Bounded (docs/reference/simulate.md): at most 92 days of virtual time from the first
    line, 10,000 outcomes and 10 s of real time (422 ``limit_exceeded``, field ``until``),
    and two simulations at a time (429 ``busy`` with Retry-After)."""
    from duly import simulate as sims

    srv = sims.server
    if not srv.try_enter():
        return error_response(
            429,
            "busy",
            f"the server is running as many simulations as it runs at once; try again in "
            f"{srv.retry_after} s (or run `duly simulate`)",
            None,
            headers={"Retry-After": str(srv.retry_after)},
        )
    try:
        return _simulate(body, srv.limits)
    finally:
        srv.leave()


def _simulate(body: S.SimulateIn, limits: Any) -> S.SimulateOut:
    from duly.rules.loader import RuleFileError, load_rules_text
    from duly.simulate import (
        EngineFailed,
        LimitExceeded,
        SimulationError,
        check_until,
        describe_span,
        parse_timeline,
        run,
    )

    render = body.templates is not None
    with tempfile.TemporaryDirectory() as d:
        tdir = Path(d) / "templates"
        tdir.mkdir()
        for name, src in (body.templates or {}).items():
            if not _TEMPLATE_FILE.fullmatch(name):
                raise ApiError(
                    422, "invalid", f"bad template file name {name!r}", f"templates.{name}"
                )
            (tdir / name).write_text(src, encoding="utf-8")
        try:
            rf = load_rules_text(
                body.rules,
                path="duly.yaml",
                templates_dir=str(tdir),
                check_templates=render,
                resolve_env=False,
                check_channels=False,
            )
            timeline = parse_timeline(body.timeline, "timeline.jsonl")
        except RuleFileError as exc:
            raise ApiError(422, "invalid_rules", str(exc), "rules") from None
        except RecursionError:  # YAML nested thousands deep
            raise ApiError(
                422, "invalid_rules", "the rules are nested too deeply", "rules"
            ) from None
        except SimulationError as exc:
            raise ApiError(422, "invalid_timeline", str(exc), "timeline") from None
        try:
            until = check_until(body.until) if body.until is not None else None
        except SimulationError as exc:
            raise ApiError(422, "invalid", str(exc), "until") from None
        err = io.StringIO()
        try:
            rows = run(rf, timeline, until=until, render=render, stderr=err, limits=limits)
        except LimitExceeded as exc:
            bounds = (
                f"{describe_span(limits.span)} of virtual time" if limits.span else None,
                f"{limits.outcomes:,} outcomes" if limits.outcomes else None,
                f"{limits.wall:g} s" if limits.wall else None,
            )
            raise ApiError(
                422,
                "limit_exceeded",
                f"{exc} ({exc.limit}). This server simulates at most "
                f"{', '.join(b for b in bounds if b)}: give an earlier until, or run "
                "`duly simulate`, whose limits can be raised",
                "until",
            ) from None
        except EngineFailed as exc:
            raise ApiError(422, "simulation_failed", str(exc), None) from None
        except DulyError as exc:
            raise ApiError(422, "invalid", str(exc), exc.field) from None
    return S.SimulateOut(rows=rows, warnings=[w for w in err.getvalue().splitlines() if w])


# --------------------------------------------------------------------------- suppressions


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
    "/suppressions/{address}", status_code=204, tags=["suppressions"], responses=_errors(404)
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
