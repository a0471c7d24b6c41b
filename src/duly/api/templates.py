"""/v1/templates: templates kept in the database, versioned.

A template is a name with parts, one per channel and extension (``txt``, ``html``), like the
files ``templates/NAME.CHANNEL.EXT``. Every save is a new version of the name, recorded with
the API key's name and the time; the newest version of a part overrides the file of the
same name for every delivery rendered from then on (other processes see it within seconds).
A save is rendered with sample data and with the data of the newest few subjects its rules
work on first, and refused (422, naming the file and line, and the subject when one was
used) when a part does not compile, breaks the sandbox or goes over a ``render:`` limit of
the rule file (code ``render_limit``, ``template_error.limit`` naming it, e.g.
``render.timeout``). Previews are bounded by the same limits (422 ``render_limit``). Renders
share a few render processes and deliveries come first: when none comes free in time, a
preview or save answers 503 ``busy`` with ``Retry-After``. Restoring is saving an old version's bodies
again: ``POST /v1/templates/{name}/restore {"version": N}`` does that in one call (or read
``GET /v1/templates/{name}?version=N`` and ``PUT`` its bodies).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as P
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from duly.api.errors import ApiError, error_response
from duly.api.schemas import ErrorBody
from duly.asgi import template_store_of as store_of  # the runtime's TemplateStore
from duly.core.errors import NotFound
from duly.delivery.rendering import RenderBusy, RenderError, RenderLimitExceeded
from duly.delivery.templates import (
    EXTS,
    MAX_BODY,
    Part,
    Saved,
    TemplateInvalid,
    TemplateOverLimit,
    TemplateStore,
    TemplateView,
    filename,
    preview_input,
    preview_parties,
)
from duly.engine.service import Engine

router = APIRouter(prefix="/v1", tags=["templates"])

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, P(min_length=1, max_length=200, pattern=NAME_PATTERN)]
Ext = Literal["txt", "html"]
assert set(EXTS) == {"txt", "html"}


# --------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartIn(_Strict):
    channel: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN, examples=["email"])
    ext: Ext = "txt"
    body: str = Field(
        max_length=MAX_BODY,
        description="the template source; a first line `Subject: ...` gives the title",
        examples=["Subject: Invoice {{ subject.key }} is due\n\nHello {{ recipient.name }},\n"],
    )


class PartsIn(_Strict):
    parts: list[PartIn] = Field(min_length=1, max_length=50)


class RestoreIn(_Strict):
    version: int = Field(ge=0, le=2**31 - 1, description="0: the wording shipped in the files")


class PreviewEventIn(_Strict):
    name: str = Field("preview", min_length=1, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)


class PreviewIn(_Strict):
    channel: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN, examples=["email"])
    ext: Ext = Field("txt", description="the part that `body` stands in for")
    subject: str | None = Field(
        None,
        min_length=3,
        max_length=301,
        description="KIND/KEY of a subject whose real data to render with (else sample data)",
        examples=["invoice/INV-1"],
    )
    recipient: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a recipient's id (else the subject's first recipient, else a sample one)",
    )
    version: int | None = Field(
        None, ge=0, le=2**31 - 1, description="render a past version (0: as shipped)"
    )
    body: str | None = Field(
        None, max_length=MAX_BODY, description="unsaved source for the part `ext`"
    )
    event: PreviewEventIn | None = Field(None, description="the event, for event-triggered rules")


class PartSummary(BaseModel):
    channel: str
    ext: str
    source: Literal["file", "database"]
    version: int | None = Field(description="the database version that last changed it")
    overrides_file: bool = Field(description="a file of the same name exists and is overridden")


class TemplateSummaryOut(BaseModel):
    name: str
    latest_version: int | None = Field(description="None: only files, never saved here")
    parts: list[PartSummary]


class TemplateList(BaseModel):
    templates: list[TemplateSummaryOut]


class PartOut(PartSummary):
    author: str | None = None
    saved_at: datetime | None = None
    body: str


class VersionOut(BaseModel):
    version: int
    author: str | None = Field(description="the name of the API key that saved it")
    created_at: datetime
    parts: list[str] = Field(description="CHANNEL.EXT of the parts this version changed")


class TemplateOut(BaseModel):
    name: str
    version: int | None = Field(description="the version shown (the newest unless asked)")
    latest_version: int | None
    parts: list[PartOut]
    history: list[VersionOut]


class SaveOut(BaseModel):
    saved: bool = Field(description="false when every part was already current")
    version: int | None = Field(description="the new version")
    changed: list[str] = Field(description="CHANNEL.EXT of the parts saved")
    warnings: list[str] = Field(
        description="render problems with sample data (missing attributes and the like): "
        "not errors, but worth a preview with a real subject"
    )
    template: TemplateOut


class PreviewOut(BaseModel):
    title: str | None
    text: str | None
    html: str | None
    data: Literal["sample", "real"]
    subject: str | None
    recipient: str | None


class TemplateErrorDetail(BaseModel):
    file: str
    line: int | None
    reason: str
    limit: str | None = Field(
        None, description="the render: limit gone over (render.timeout, ...), if that was it"
    )
    subject: str | None = Field(
        None, description="KIND/KEY of the real subject whose data the save failed with"
    )


class TemplateErrorOut(BaseModel):
    """An error answer; a template that fails says where (schema name of its own: the API's
    plain ErrorOut is another)."""

    error: ErrorBody
    template_error: TemplateErrorDetail | None = Field(
        None, description="where a template failed (a refused save or a failed preview)"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {
        "model": TemplateErrorOut,
        "description": "no such template, version, subject or recipient",
    },
    422: {
        "model": TemplateErrorOut,
        "description": "invalid input, or the template fails (file, line) or goes over a "
        "render limit (code render_limit)",
    },
    503: {
        "model": TemplateErrorOut,
        "description": "every render process is busy (code busy): retry after Retry-After",
    },
}


# --------------------------------------------------------------------------- helpers


def _engine(request: Request) -> Engine:
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


def _template_error(status: int, code: str, exc: TemplateInvalid | RenderError) -> JSONResponse:
    file = (exc.file if isinstance(exc, TemplateInvalid) else exc.template) or ""
    field = exc.field if isinstance(exc, TemplateInvalid) else "body"
    limit = exc.limit if isinstance(exc, TemplateOverLimit | RenderLimitExceeded) else None
    subject = exc.subject if isinstance(exc, TemplateInvalid) else None
    detail: dict[str, Any] = {"file": file, "line": exc.line, "reason": exc.reason}
    # only when they say something: other template errors keep their shape
    if limit is not None:
        detail["limit"] = limit
    if subject is not None:
        detail["subject"] = subject
    return JSONResponse(
        {"error": {"code": code, "message": str(exc), "field": field}, "template_error": detail},
        status_code=status,
    )


def _busy(exc: RenderBusy) -> JSONResponse:
    return error_response(
        503, "busy", str(exc), None, headers={"Retry-After": str(exc.retry_after)}
    )


def _part(p: Part, *, body: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "channel": p.channel,
        "ext": p.ext,
        "source": p.source,
        "version": p.version,
        "overrides_file": p.source == "database" and p.has_file,
    }
    if body:
        out.update(author=p.author, saved_at=p.saved_at, body=p.body)
    return out


def _view(v: TemplateView) -> TemplateOut:
    return TemplateOut(
        name=v.name,
        version=v.version,
        latest_version=v.latest,
        parts=[PartOut(**_part(p, body=True)) for p in v.parts],
        history=[
            VersionOut(
                version=h.version, author=h.author, created_at=h.created_at, parts=list(h.parts)
            )
            for h in v.history
        ],
    )


def _saved(ts: TemplateStore, name: str, s: Saved) -> SaveOut:
    return SaveOut(
        saved=s.version is not None,
        version=s.version,
        changed=s.changed,
        warnings=s.warnings,
        template=_view(ts.get(name)),
    )


def _author(request: Request) -> str | None:
    key = getattr(request.state, "key", None)
    return getattr(key, "name", None)


# --------------------------------------------------------------------------- routes


@router.get("/templates", response_model=TemplateList)
def list_templates(request: Request) -> TemplateList:
    """Every template name, from the files and the database: its parts (channel and
    extension), where each comes from and the newest version."""
    ts = store_of(request)
    return TemplateList(
        templates=[
            TemplateSummaryOut(
                name=s.name,
                latest_version=s.latest,
                parts=[PartSummary(**_part(p, body=False)) for p in s.parts],
            )
            for s in ts.summaries()
        ]
    )


@router.get("/templates/{name}", response_model=TemplateOut, responses=ERRORS)
def get_template(
    name: Name,
    request: Request,
    version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> TemplateOut:
    """A template's parts (body, source, version) as rendered now — or, with ``version``,
    as they were after that save — and its history (who saved which parts, when)."""
    return _view(store_of(request).get(name, version))


@router.put("/templates/{name}", response_model=SaveOut, responses=ERRORS)
def put_template(
    name: Name, body: PartIn | list[PartIn] | PartsIn, request: Request
) -> SaveOut | JSONResponse:
    """Save one part (``{channel, ext, body}``) or several (a list, or ``{parts: [...]}``)
    as a new version. Checked first: a syntax error, an unknown name or a sandbox violation
    is refused with 422 naming the file and line, and nothing is saved. Parts equal to the
    current ones are not saved again (``saved: false`` when nothing changed). To restore an
    old version, PUT its bodies (or POST .../restore)."""
    parts = body.parts if isinstance(body, PartsIn) else body if isinstance(body, list) else [body]
    ts = store_of(request)
    try:
        saved = ts.save(
            name,
            [(p.channel, p.ext, p.body) for p in parts],
            author=_author(request),
            now=_engine(request).clock.now(),
        )
    except TemplateInvalid as exc:
        return _template_error(422, exc.code, exc)
    except RenderBusy as exc:
        return _busy(exc)
    return _saved(ts, name, saved)


@router.post("/templates/{name}/restore", response_model=SaveOut, responses=ERRORS)
def restore_template(name: Name, body: RestoreIn, request: Request) -> SaveOut | JSONResponse:
    """Save the parts as they were at ``version`` as a new version (a part first saved
    after that version stays as it is)."""
    ts = store_of(request)
    try:
        saved = ts.restore(
            name, body.version, author=_author(request), now=_engine(request).clock.now()
        )
    except TemplateInvalid as exc:
        return _template_error(422, exc.code, exc)
    except RenderBusy as exc:
        return _busy(exc)
    return _saved(ts, name, saved)


@router.post("/templates/{name}/preview", response_model=PreviewOut, responses=ERRORS)
def preview_template(name: Name, body: PreviewIn, request: Request) -> PreviewOut | JSONResponse:
    """Render for ``channel`` with a subject's and recipient's real data (or sample data),
    the current parts — or a past ``version`` — and, optionally, unsaved ``body`` for the
    part ``ext``. Answers title, text and html, or 422 with the render error (file, line;
    code ``render_limit`` over a ``render:`` limit), or 503 ``busy`` with Retry-After."""
    ts, eng = store_of(request), _engine(request)
    now = eng.clock.now()
    sources: dict[str, str] = {}
    view: TemplateView | None = None
    try:
        view = ts.get(name, body.version)
    except NotFound:
        if body.body is None or body.version is not None:
            raise
    # A past version: its database parts, and the files for the parts saved later.
    if view is not None and body.version is not None:
        sources = {
            filename(name, p.channel, p.ext): p.body for p in view.parts if p.source == "database"
        }
    if body.body is not None:
        sources[filename(name, body.channel, body.ext)] = body.body
    elif view is None or not any(p.channel == body.channel for p in view.parts):
        raise ApiError(
            404,
            "not_found",
            f"template {name!r} has no part for channel {body.channel!r}",
            "channel",
        )

    try:
        subject, recipient = preview_parties(eng, body.subject, body.recipient)
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc), exc.field) from None
    event = None
    if body.event is not None:
        event = {"id": "preview", "name": body.event.name, "data": body.event.data, "at": now}
    pin = preview_input(ts, eng, name, subject, recipient, now=now, event=event)
    try:
        out = ts.preview(
            name,
            body.channel,
            pin.context,
            sources=sources,
            exact=body.version is not None,
            recipient=pin.recipient,
            timezone=pin.timezone,
            locale=pin.locale,
        )
    except RenderBusy as exc:
        return _busy(exc)
    except RenderLimitExceeded as exc:
        return _template_error(422, "render_limit", exc)
    except RenderError as exc:
        return _template_error(422, "render_error", exc)
    return PreviewOut(
        title=out.title,
        text=out.text,
        html=out.html,
        data="real" if pin.real else "sample",
        subject=pin.subject.ref,
        recipient=pin.recipient.id if pin.recipient is not None else None,
    )
