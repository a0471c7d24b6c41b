"""Acknowledgement over HTTP (docs/reference/rules.md "Acknowledge").

Two routers:

``router`` — ``POST /v1/subjects/{kind}/{key}/ack {rule, recipient?}``: the app acknowledges
on a recipient's behalf (e.g. a button in its own UI). Needs the API key like all of /v1.

``public_router`` — the pages an acknowledge link (``{{ ack_link() }}``) opens, with no API
key (the signed token is the permission):

- ``GET /a/{token}`` shows what the link acknowledges and a button. It changes nothing, so
  mail scanners and link previews that fetch every link acknowledge nothing.
- ``POST /a/{token}`` (the button: a plain HTML form, no JavaScript, no cookie) acknowledges
  and says thank you. Pressing it again is harmless.

A tampered, cut-short or expired link gets a 400 page that says so, a link whose rule or
subject is gone a 410 page; never a 500. The pages are not in the OpenAPI document, are never
cached or framed, and send no Referer (the token is in the URL).
"""

from __future__ import annotations

import html
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as P
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from duly.api.errors import ApiError
from duly.api.schemas import ErrorOut
from duly.core.errors import InvalidInput, UnknownSubject
from duly.delivery.ack import AckClaim, AckLinkExpired, AckLinkInvalid, AckLinks, AckNotConfigured
from duly.engine.service import Engine

__all__ = ["AckIn", "AckOut", "public_router", "router"]

log = logging.getLogger("duly.api")

router = APIRouter(prefix="/v1")
public_router = APIRouter(include_in_schema=False)


def _engine(request: Request) -> Engine:
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(_engine)]


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(min_length=1, max_length=200, description="The rule acknowledged.")
    recipient: str | None = Field(
        None, min_length=1, max_length=200, description="Who acknowledged (a recipient id)."
    )


class AckOut(BaseModel):
    rule: str
    subject: str
    recipient: str | None
    acknowledged: list[str] = Field(description="Every rule acknowledged on the subject.")
    cancelled: int = Field(description="Pending repeats cancelled (reason `acknowledged`).")


@router.post(
    "/subjects/{kind}/{key:path}/ack",
    response_model=AckOut,
    tags=["subjects"],
    responses={404: {"model": ErrorOut, "description": "no such subject"}},
)
def acknowledge(
    kind: Annotated[str, P(min_length=1, max_length=100)],
    key: Annotated[str, P(min_length=1, max_length=200)],
    body: AckIn,
    eng: EngineDep,
) -> AckOut:
    """Acknowledge a rule on a subject: ``acknowledged`` becomes true in the rule's
    conditions, and its pending repeats are cancelled (reason ``acknowledged``)."""
    ref = f"{kind}/{key}"
    if eng.get_subject(kind, key) is None:
        raise ApiError(404, "not_found", f"no subject {ref}", "subject")
    try:
        cancelled = eng.acknowledge(body.rule, ref, body.recipient)
    except UnknownSubject:  # deleted in between
        raise ApiError(404, "not_found", f"no subject {ref}", "subject") from None
    s = eng.get_subject(kind, key)
    return AckOut(
        rule=body.rule,
        subject=ref,
        recipient=body.recipient,
        acknowledged=sorted(s.acknowledged) if s is not None else [body.rule],
        cancelled=cancelled,
    )


# --------------------------------------------------------------------------- pages


def _links(request: Request) -> AckLinks:
    """The runtime's AckLinks (the one its renderer signs with), else one made once for this
    app over the runtime's database and clock."""
    runtime = request.app.state.runtime
    links = getattr(runtime, "ack_links", None)
    if isinstance(links, AckLinks):
        return links
    links = getattr(request.app.state, "ack_links", None)
    if not isinstance(links, AckLinks):
        links = AckLinks(db=runtime.db, clock=runtime.engine.clock)
        request.app.state.ack_links = links
    return links


_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:32rem;"
    "margin:4rem auto;padding:0 1rem;color:#1f2328;line-height:1.5}"
    "h1{font-size:1.4rem}dl{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem}"
    "dt{color:#59636e}dd{margin:0;word-break:break-all}"
    "button{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:6px;"
    "background:#1f6feb;color:#fff;cursor:pointer}"
)


def link_page(status: int, title: str, body: str, extra_style: str = "") -> HTMLResponse:
    """A page answering a signed link (acknowledge, preferences): self-contained (its style
    inline, nothing loaded from elsewhere), not cached, not indexed, not framed."""
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}{extra_style}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def _what(claim: AckClaim) -> str:
    rows = [("Reminder", claim.rule), ("About", claim.subject)]
    if claim.recipient:
        rows.append(("For", claim.recipient))
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    return f"<dl>{items}</dl>"


def _check(request: Request, token: str) -> AckClaim | HTMLResponse:
    """The token's claim, or the page that says why it cannot be used."""
    try:
        return _links(request).verify(token)
    except AckLinkExpired as exc:
        return link_page(
            400,
            "This link has expired",
            f"<p>{html.escape(str(exc))} If the reminders keep coming, ask the sender for a "
            "new one.</p>",
        )
    except AckLinkInvalid:
        return link_page(
            400,
            "This link is not valid",
            "<p>The link may have been cut short or changed. Open it again from the message, "
            "or copy the whole address.</p>",
        )
    except AckNotConfigured as exc:
        log.error("acknowledge link opened, but: %s", exc)
        return link_page(
            503,
            "Acknowledging is not available",
            "<p>This server cannot check acknowledge links right now. Please try again later.</p>",
        )


def _gone(claim: AckClaim) -> HTMLResponse:
    return link_page(
        410,
        "This link no longer applies",
        "<p>What it was about has been closed or removed: there is nothing left to "
        f"acknowledge.</p>{_what(claim)}",
    )


def _applies(eng: Engine, claim: AckClaim) -> bool:
    kind, _, key = claim.subject.partition("/")
    return eng.rules.rule(claim.rule) is not None and eng.get_subject(kind, key) is not None


@public_router.get("/a/{token}", response_class=HTMLResponse)
def ack_page(token: str, request: Request, eng: EngineDep) -> Any:
    """What the link acknowledges, and a button. Changes nothing."""
    claim = _check(request, token)
    if isinstance(claim, HTMLResponse):
        return claim
    if not _applies(eng, claim):
        return _gone(claim)
    return link_page(
        200,
        "Acknowledge this reminder?",
        f"{_what(claim)}<p>Acknowledging tells the sender you have seen it; reminders that "
        "would repeat stop.</p>"
        '<form method="post"><button type="submit">Acknowledge</button></form>',
    )


@public_router.post("/a/{token}", response_class=HTMLResponse)
def ack_submit(token: str, request: Request, eng: EngineDep) -> Any:
    """Acknowledge (the page's button)."""
    claim = _check(request, token)
    if isinstance(claim, HTMLResponse):
        return claim
    try:
        cancelled = eng.acknowledge(claim.rule, claim.subject, claim.recipient)
    except InvalidInput:  # the rule left the rule file, or the subject was deleted
        return _gone(claim)
    log.info(
        "acknowledged %s on %s by %s (link): %d pending cancelled",
        claim.rule,
        claim.subject,
        claim.recipient or "-",
        cancelled,
    )
    return link_page(
        200,
        "Thank you",
        f"<p>Your acknowledgement is recorded.</p>{_what(claim)}",
    )
