"""Preferences and one-click unsubscribe over HTTP (consent: docs/reference/rules.md;
RFC 8058).

Two routers:

``router`` — the consent API for apps, with the API key like all of /v1:
``GET /v1/recipients/{id}/preferences`` answers the recipient's consent object
(``{promotional, reminder, channels, rules}``); ``PUT`` replaces it.

``public_router`` — the pages a preference link (``BASE_URL/u/TOKEN``, see
:mod:`duly.delivery.preferences`) opens, with no API key: the signed token is the permission.

- ``GET /u/{token}``: an HTML page (labels, fieldsets, no JavaScript, no cookies) with the
  recipient's categories, channels and opted-out rules as checkboxes in their current state.
  It changes nothing, so link scanners that fetch every URL in a message change nothing.
- ``POST /u/{token}`` with the page's form (``form=preferences``) saves the checkboxes.
- ``POST /u/{token}`` with ``List-Unsubscribe=One-Click`` (RFC 8058, what mailbox providers
  send: ``application/x-www-form-urlencoded`` or ``multipart/form-data``, no cookies, no
  JavaScript, no Origin promised) opts out of what the token names
  (:func:`duly.delivery.preferences.apply_unsubscribe`) and answers 200 with a short page.

CSRF. There is no session and no cookie, so there is nothing ambient for another site to
ride on: a forged POST must carry the token itself, which is in the URL, signed, bound to one
recipient, and known only to whoever received the message. That is the protection. On top,
the preferences form is refused (403) when the browser says it came from elsewhere: an
``Origin`` (or, without one, a ``Referer``) that is present and is neither ``DULY_BASE_URL``'s
origin nor the request's own. ``Origin: null`` counts as absent — our pages send
``Referrer-Policy: no-referrer``, which makes browsers send exactly that on the form's POST.
The one-click POST is not checked: providers send it from their servers, or from webmail
pages of their own origin, and RFC 8058 requires it to work without any context.

A tampered, cut-short or expired token gets a 400 page, a token for a recipient that is gone a
410 page; never a 500. The pages are not in the OpenAPI document, never cached or framed, and
send no Referer (the token is in the URL).
"""

from __future__ import annotations

import html
import logging
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi import Path as P
from fastapi.responses import HTMLResponse

from duly.api import schemas as S
from duly.api.ack import link_page
from duly.api.errors import ApiError
from duly.core.model import Recipient
from duly.delivery.ack import AckNotConfigured
from duly.delivery.preferences import (
    PrefClaim,
    PrefLinkExpired,
    PrefLinkInvalid,
    PrefLinks,
    apply_unsubscribe,
    set_consent,
    unsubscribe_scope,
)
from duly.engine.service import Engine

__all__ = ["public_router", "router", "set_consent"]

log = logging.getLogger("duly.api")

router = APIRouter(prefix="/v1")
public_router = APIRouter(include_in_schema=False)

RecipientId = Annotated[str, P(min_length=1, max_length=200)]

_LABELS = {
    "reminder": ("Reminders", "Reminders about things that are due or waiting on you."),
    "promotional": ("News and offers", "Occasional news, tips and offers."),
}


def _engine(request: Request) -> Engine:
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(_engine)]


def _get(eng: Engine, rid: str) -> Recipient | None:
    with eng.db.connect() as conn:
        return eng.store.get_recipients(conn, [rid]).get(rid)


def _consent_out(r: Recipient) -> S.Consent:
    return S.Consent(**r.consent) if r.consent else S.Consent()


_404 = {404: {"model": S.ErrorOut, "description": "no such record"}}
_422 = {422: {"model": S.ErrorOut, "description": "invalid input; `error.field` names it"}}


@router.get(
    "/recipients/{rid}/preferences",
    response_model=S.Consent,
    tags=["recipients"],
    responses=_404,
)
def get_preferences(rid: RecipientId, eng: EngineDep) -> S.Consent:
    """The recipient's consent: ``reminder`` (allowed unless false), ``promotional`` (only
    when true), and opt-outs (false) per channel and per rule. Transactional mail is always
    allowed."""
    r = _get(eng, rid)
    if r is None:
        raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    return _consent_out(r)


@router.put(
    "/recipients/{rid}/preferences",
    response_model=S.Consent,
    tags=["recipients"],
    responses={**_404, **_422},
)
def put_preferences(rid: RecipientId, body: S.Consent, eng: EngineDep) -> S.Consent:
    """Replace the recipient's consent (whole object); the rest of the recipient is kept."""
    r = _get(eng, rid)
    if r is None:
        raise ApiError(404, "not_found", f"no recipient {rid}", "id")
    new = set_consent(eng, r, body.model_dump(exclude_none=True, exclude_defaults=True))
    return _consent_out(new)


# --------------------------------------------------------------------------- pages


def _links(request: Request) -> PrefLinks:
    """The runtime's PrefLinks (the one the dispatcher signs List-Unsubscribe with), else
    one made once for this app over the runtime's database and clock."""
    runtime = request.app.state.runtime
    links = getattr(runtime, "preferences", None)
    if isinstance(links, PrefLinks):
        return links
    links = getattr(request.app.state, "pref_links", None)
    if not isinstance(links, PrefLinks):
        links = PrefLinks(db=runtime.db, clock=runtime.engine.clock)
        request.app.state.pref_links = links
    return links


_FORM_STYLE = (
    "fieldset{border:1px solid #d1d9e0;border-radius:6px;margin:0 0 1rem;padding:.5rem 1rem}"
    "legend{font-weight:600;padding:0 .25rem}"
    ".opt{display:flex;gap:.6rem;align-items:flex-start;margin:.5rem 0}"
    ".opt input{width:1.15rem;height:1.15rem;margin-top:.2rem}"
    ".hint{display:block;color:#59636e;font-size:.9rem}"
    ".note{color:#59636e;font-size:.9rem}"
)


def _page(status: int, title: str, body: str) -> HTMLResponse:
    return link_page(status, title, body, _FORM_STYLE)


def _check(request: Request, token: str) -> PrefClaim | HTMLResponse:
    """The token's claim, or the page that says why it cannot be used."""
    try:
        return _links(request).verify(token)
    except PrefLinkExpired as exc:
        return _page(
            400,
            "This link has expired",
            f"<p>{html.escape(str(exc))} Use the link in a more recent message, or ask the "
            "sender to change your preferences.</p>",
        )
    except PrefLinkInvalid:
        return _page(
            400,
            "This link is not valid",
            "<p>The link may have been cut short or changed. Open it again from the message, "
            "or copy the whole address.</p>",
        )
    except AckNotConfigured as exc:
        log.error("preferences link opened, but: %s", exc)
        return _page(
            503,
            "Preferences are not available",
            "<p>This server cannot check preference links right now. Please try again later.</p>",
        )


def _gone() -> HTMLResponse:
    return _page(
        410,
        "This link no longer applies",
        "<p>We no longer keep this address: no messages are sent to it.</p>",
    )


def _shown_channels(eng: Engine, r: Recipient) -> list[str]:
    consent = r.consent or {}
    from duly.engine.runtime import used_channels

    # the channels some rule sends on, and any the recipient has an entry for
    return sorted(used_channels(eng.rules) | set(consent.get("channels") or {}))


def _shown_rules(r: Recipient, claim: PrefClaim) -> list[str]:
    """The rule the link came with, and every rule the recipient has an entry for."""
    names = set((r.consent or {}).get("rules") or {})
    if claim.rule:
        names.add(claim.rule)
    return sorted(names)


def _checkbox(name: str, value: str, idx: str, label: str, checked: bool, hint: str = "") -> str:
    hint_html = f'<span class="hint">{html.escape(hint)}</span>' if hint else ""
    return (
        f'<div class="opt"><input type="checkbox" id="{idx}" name="{html.escape(name)}" '
        f'value="{html.escape(value)}"{" checked" if checked else ""}>'
        f'<label for="{idx}">{html.escape(label)}{hint_html}</label></div>'
    )


def _form(eng: Engine, r: Recipient, claim: PrefClaim, notice: str = "") -> str:
    c = r.consent or {}
    who = r.name or r.id
    parts = [
        notice,
        f"<p>Choose what <strong>{html.escape(who)}</strong> receives from us.</p>",
        '<form method="post"><input type="hidden" name="form" value="preferences">',
        "<fieldset><legend>Kinds of message</legend>",
        _checkbox(
            "category",
            "reminder",
            "cat-reminder",
            _LABELS["reminder"][0],
            c.get("reminder") is not False,
            _LABELS["reminder"][1],
        ),
        _checkbox(
            "category",
            "promotional",
            "cat-promotional",
            _LABELS["promotional"][0],
            c.get("promotional") is True,
            _LABELS["promotional"][1],
        ),
        '<p class="note">Messages about your own account, orders and security are always '
        "sent.</p></fieldset>",
    ]
    channels = _shown_channels(eng, r)
    if channels:
        parts.append("<fieldset><legend>Ways to reach you</legend>")
        opted = c.get("channels") or {}
        for i, name in enumerate(channels):
            parts.append(_checkbox("channel", name, f"ch-{i}", name, opted.get(name) is not False))
        parts.append("</fieldset>")
    rules = _shown_rules(r, claim)
    if rules:
        parts.append("<fieldset><legend>Particular messages</legend>")
        opted = c.get("rules") or {}
        for i, name in enumerate(rules):
            parts.append(_checkbox("rule", name, f"rule-{i}", name, opted.get(name) is not False))
        parts.append("</fieldset>")
    parts.append('<button type="submit">Save preferences</button></form>')
    return "".join(parts)


async def _fields(request: Request) -> dict[str, list[str]]:
    """The posted form: ``application/x-www-form-urlencoded`` or ``multipart/form-data``
    (RFC 8058 allows both), parsed here rather than with python-multipart; anything else,
    or a body that does not parse, is no fields."""
    ctype = request.headers.get("content-type", "")
    body = await request.body()
    main = ctype.split(";", 1)[0].strip().lower()
    out: dict[str, list[str]] = {}
    try:
        if main == "application/x-www-form-urlencoded":
            text = body.decode("utf-8")
            return parse_qs(text, keep_blank_values=True, max_num_fields=1000)
        if main == "multipart/form-data":
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
            )
            if not msg.is_multipart():
                return {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str) or part.get_filename():
                    continue
                payload = part.get_payload(decode=True)
                value = payload.decode("utf-8") if isinstance(payload, bytes) else ""
                out.setdefault(name, []).append(value.rstrip("\r\n") if value else value)
    except (ValueError, UnicodeError, LookupError):
        return {}
    return out


def _origin_of(url: str) -> str | None:
    try:
        p = urlsplit(url)
    except ValueError:
        return None
    if not p.scheme or not p.netloc:
        return None
    return f"{p.scheme.lower()}://{p.netloc.lower()}"


def _same_origin(request: Request, links: PrefLinks) -> bool:
    """False only when the browser says the form came from another site (see the module's
    docstring); no Origin/Referer, or ``Origin: null``, passes."""
    origin = request.headers.get("origin")
    if origin is None or origin.strip() == "null":
        referer = request.headers.get("referer")
        if not referer:
            return True
        origin = _origin_of(referer) or "?"
    allowed = {_origin_of(links.base_url), _origin_of(str(request.base_url))}
    host = request.headers.get("host")
    if host:
        allowed.add(f"{request.url.scheme}://{host.lower()}")
    return origin.strip().lower().rstrip("/") in allowed


def _unsubscribed(claim: PrefClaim, path: str) -> str:
    kind, what = unsubscribe_scope(claim.rule, claim.category)
    if kind == "rule":
        done = f"You will no longer receive <strong>{html.escape(str(what))}</strong>."
    elif kind == "category":
        done = f"You will no longer receive {html.escape(_LABELS[str(what)][0].lower())}."
    else:
        done = "You will no longer receive reminders or news and offers."
    return (
        f"<p>{done} Messages about your own account, orders and security are still sent.</p>"
        f'<p><a href="{html.escape(path)}">Change your preferences</a></p>'
    )


@public_router.get("/u/{token}", response_class=HTMLResponse)
def preferences_page(token: str, request: Request, eng: EngineDep) -> Any:
    """The recipient's preferences as a form. Changes nothing."""
    claim = _check(request, token)
    if isinstance(claim, HTMLResponse):
        return claim
    r = _get(eng, claim.recipient)
    if r is None:
        return _gone()
    return _page(200, "Your notification preferences", _form(eng, r, claim))


@public_router.post("/u/{token}", response_class=HTMLResponse)
async def preferences_post(token: str, request: Request) -> Any:
    """One-click unsubscribe (RFC 8058) or the preferences form."""
    fields = await _fields(request)
    eng: Engine = _engine(request)
    links = _links(request)
    claim = _check(request, token)
    if isinstance(claim, HTMLResponse):
        return claim
    if fields.get("List-Unsubscribe") == ["One-Click"]:
        return await _run(_one_click, eng, claim, request.url.path)
    if fields.get("form") == ["preferences"]:
        if not _same_origin(request, links):
            return _page(
                403,
                "This form came from another site",
                "<p>Nothing was changed. Open the link from your message and save your "
                "preferences there.</p>",
            )
        return await _run(_save, eng, claim, fields)
    return _page(
        400,
        "Nothing to do",
        "<p>This address takes the preferences form, or a one-click unsubscribe "
        "(<code>List-Unsubscribe=One-Click</code>).</p>",
    )


async def _run(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _one_click(eng: Engine, claim: PrefClaim, path: str) -> HTMLResponse:
    r = _get(eng, claim.recipient)
    if r is None:
        # nothing is sent to a recipient that is gone: the unsubscribe has its effect
        return _page(200, "You are unsubscribed", "<p>No more messages will be sent.</p>")
    set_consent(eng, r, apply_unsubscribe(r.consent, rule=claim.rule, category=claim.category))
    log.info(
        "one-click unsubscribe: %s from %s",
        claim.recipient,
        "/".join(str(x) for x in unsubscribe_scope(claim.rule, claim.category) if x),
    )
    return _page(200, "You are unsubscribed", _unsubscribed(claim, path))


def _save(eng: Engine, claim: PrefClaim, fields: dict[str, list[str]]) -> HTMLResponse:
    r = _get(eng, claim.recipient)
    if r is None:
        return _gone()
    checked_cats = set(fields.get("category", []))
    consent = dict(r.consent or {})
    consent["reminder"] = "reminder" in checked_cats
    consent["promotional"] = "promotional" in checked_cats
    # only what the page showed is changed; an unchecked box is absent from the form
    checked = set(fields.get("channel", []))
    chans = dict(consent.get("channels") or {})
    for name in _shown_channels(eng, r):
        if name in checked:
            chans.pop(name, None)
        else:
            chans[name] = False
    consent["channels"] = chans
    checked = set(fields.get("rule", []))
    rules = dict(consent.get("rules") or {})
    for name in _shown_rules(r, claim):
        rules[name] = name in checked  # kept (true), so the page keeps showing it
    consent["rules"] = rules
    new = set_consent(eng, r, consent)
    log.info("preferences saved for %s", claim.recipient)
    notice = '<p role="status"><strong>Your preferences are saved.</strong></p>'
    return _page(200, "Your notification preferences", _form(eng, new, claim, notice))
