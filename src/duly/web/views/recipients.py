"""Recipients: search (id, name, email, phone) and one recipient's page — addresses, local
time, consent (readable, and a form for admins that saves like PUT
/v1/recipients/{id}/preferences), suppressions of its addresses (clear), its in-app inbox,
and its recent and upcoming deliveries.

Every query is LIMITed: the list pages by id (keyset), its suppression flags and pending
counts are one query each for the whole page; the detail page reads by the recipient
column (``ix_deliveries_recipient``) and the suppressions' ``ix_suppressions_address``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.core.model import Category, Recipient
from duly.delivery.preferences import CATEGORIES, set_consent  # the save of PUT .../preferences
from duly.engine.inbox import InboxStore, inbox_channel_names
from duly.engine.runtime import used_channels
from duly.engine.service import Engine
from duly.store.db import write_transaction
from duly.store.pages_records import (
    has_sent_on,
    pending_count_of_recipient,
    pending_per_recipient,
    recent_deliveries_of_recipient,
    recipients_page,
    suppressions_of_addresses,
    upcoming_deliveries_of_recipient,
)
from duly.store.search import subjects_of_recipient
from duly.web.auditing import audited
from duly.web.core import (
    CurrentUser,
    EngineDep,
    OperatorUser,
    engine_of,
    flash,
    page_of,
    redirect,
    render,
    runtime_of,
    subject_path,
    viewer_tz,
)
from duly.web.subjectcells import describe, role_ids

router = APIRouter()

PAGE = 50
RECENT = 20
UPCOMING = 10
INBOX = 20
SUBJECTS = 50
SUPPRESSIONS = 100

Q = Annotated[str, Query(max_length=200)]
After = Annotated[str | None, Query(max_length=200)]


def _addresses_of(r: Any) -> list[str]:
    """Every address a recipient can be reached at, lower-cased as suppressions store them
    (the id too: inbox and webhook channels address a recipient by it)."""
    found = [r["id"], r["email"], r["phone"], *(r["addresses"] or {}).values()]
    return sorted({str(a).lower() for a in found if a})


# --------------------------------------------------------------------------- list


@router.get("/recipients", response_class=HTMLResponse)
def recipient_list(request: Request, user: CurrentUser, q: Q = "", after: After = None) -> Response:
    q = q.strip()
    eng = engine_of(request)
    with eng.db.connect() as conn:
        rows = recipients_page(conn, q, after, PAGE + 1)
        page = page_of(rows, PAGE, request)
        ids = [r["id"] for r in page.items]
        addrs = {r["id"]: _addresses_of(r) for r in page.items}
        suppressed = eng.store.active_suppressions(conn, [a for v in addrs.values() for a in v])
        pending = pending_per_recipient(conn, ids)
    for r in page.items:
        r["suppressed"] = any(a in suppressed for a in addrs[r["id"]])
        r["pending"] = pending.get(r["id"], 0)
    return render(
        request,
        "recipients/list.html",
        {"page": page, "q": q, "after": after, "total_shown": len(page.items)},
    )


# --------------------------------------------------------------------------- detail


def _recipient(eng: Engine, rid: str) -> Recipient:
    if not rid or len(rid) > 200:
        raise HTTPException(404)
    with eng.db.connect() as conn:
        r = eng.store.get_recipients(conn, [rid]).get(rid)
    if r is None:
        raise HTTPException(404)
    return r


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _rule_names(eng: Engine, consent: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule, category) of the rules a recipient can opt out of: those that send reminder
    or promotional messages, and any rule the consent names (gone ones as "—")."""
    out: dict[str, str] = {}
    for rule in eng.rules.rules:
        if rule.sends_message and rule.category != Category.transactional:
            out[rule.name] = str(rule.category)
    for name in consent.get("rules") or {}:
        out.setdefault(str(name), "—")
    return sorted(out.items())


def _channel_names(eng: Engine, consent: dict[str, Any]) -> list[str]:
    # as the recipient's own preferences page: channels some rule sends on, and any the
    # recipient has an entry for
    return sorted(used_channels(eng.rules) | set(consent.get("channels") or {}))


def _consent_view(eng: Engine, r: Recipient) -> dict[str, Any]:
    c = r.consent or {}
    chans = c.get("channels") or {}
    rules = c.get("rules") or {}
    return {
        "reminder": c.get("reminder") is not False,
        "promotional": c.get("promotional") is True,
        "channels": [(n, chans.get(n) is not False, n in chans) for n in _channel_names(eng, c)],
        "rules": [
            (n, cat, rules.get(n) is not False, n in rules) for n, cat in _rule_names(eng, c)
        ],
    }


def _inbox(request: Request, rid: str) -> tuple[list[dict[str, Any]], int, tuple[str, ...]]:
    runtime = runtime_of(request)
    notifier = getattr(runtime, "inbox_notifier", None)
    store = (
        notifier.store
        if notifier is not None
        else InboxStore(runtime.db, inbox_channel_names(getattr(runtime, "rules", None)))
    )
    with runtime.db.connect() as conn:
        # most recipients have no inbox items: one look by the recipient index says so
        # without InboxStore's queries, which go by state
        has_any = has_sent_on(conn, rid, store.channels)
    if not has_any:
        return [], 0, store.channels
    items, _ = store.list(rid, limit=INBOX)
    for i in items:
        i["sent"] = datetime.fromisoformat(i["sent_at"]) if i["sent_at"] else None
        i["read"] = datetime.fromisoformat(i["read_at"]) if i["read_at"] else None
    return items, store.unread_count(rid), store.channels


@router.get("/recipients/{rid:path}", response_class=HTMLResponse)
def recipient_page(rid: str, request: Request, user: CurrentUser, eng: EngineDep) -> Response:
    r = _recipient(eng, rid)
    addrs = _addresses_of(
        {"id": r.id, "email": r.email, "phone": r.phone, "addresses": r.addresses}
    )
    with eng.db.connect() as conn:
        recent = recent_deliveries_of_recipient(conn, r.id, RECENT)
        upcoming = upcoming_deliveries_of_recipient(conn, r.id, UPCOMING)
        pending_total = pending_count_of_recipient(conn, r.id)
        sups = suppressions_of_addresses(conn, addrs, SUPPRESSIONS)
        subs, subs_more = subjects_of_recipient(conn, r.id, SUBJECTS)
        people = eng.store.get_recipients(conn, role_ids(eng.rules.subjects, subs))
    inbox, unread, inbox_channels = _inbox(request, r.id)
    zone = _zone(r.timezone)
    now = eng.clock.now()
    tz = viewer_tz(request)
    for s in subs:
        s.update(describe(eng.rules.subjects, s, now=now, tz=tz, people=people))
        s["url"] = subject_path(s["kind"], s["key"])
    others = sorted((k, v) for k, v in (r.addresses or {}).items())
    return render(
        request,
        "recipients/detail.html",
        {
            "r": r,
            "rid_q": quote(r.id, safe=""),
            "title": r.name or r.id,
            "zone": zone,
            "local_now": now.astimezone(zone) if zone else None,
            "rule_tz": getattr(eng.rules, "timezone", None),
            "other_addresses": others,
            "consent": _consent_view(eng, r),
            "suppressions": sups,
            "active_suppressions": [x for x in sups if x["cleared_at"] is None],
            "inbox": inbox,
            "unread": unread,
            "inbox_channels": inbox_channels,
            "recent": recent,
            "upcoming": upcoming,
            "pending_total": pending_total,
            "subjects": subs,
            "subjects_more": subs_more,
        },
    )


# --------------------------------------------------------------------------- changes


def _save_consent(eng: Engine, rid: str, form: Any) -> tuple[Recipient, dict[str, Any]]:
    """The recipient and the consent the form's checkboxes make of theirs, to be saved as
    PUT .../preferences saves it
    (``duly.delivery.preferences.set_consent``: tidied, then Engine.put_recipient, which
    re-plans the recipient's pending deliveries). Only what the form showed is changed."""
    r = _recipient(eng, rid)
    cats = set(form.getlist("category"))
    consent = dict(r.consent or {})
    for cat in CATEGORIES:
        consent[cat] = cat in cats
    checked = set(form.getlist("channel"))
    chans = dict(consent.get("channels") or {})
    for name in _channel_names(eng, consent):
        if name in checked:
            chans.pop(name, None)
        else:
            chans[name] = False
    consent["channels"] = chans
    checked = set(form.getlist("rule"))
    rules = dict(consent.get("rules") or {})
    for name, _ in _rule_names(eng, consent):
        if name not in checked:
            rules[name] = False
        elif name in rules:
            rules[name] = True  # an entry the recipient made stays, now allowing
    consent["rules"] = rules
    return r, consent


@router.post("/recipients/{rid:path}/consent")
async def change_consent(rid: str, request: Request, user: OperatorUser) -> Response:
    form = await request.form()
    eng = engine_of(request)

    def work() -> None:
        r, consent = _save_consent(eng, rid, form)
        before = r.consent or {}
        try:
            with audited(
                request,
                user,
                "consent",
                "recipient",
                r.id,
                f"Consent of {r.name or r.id} changed",
                before=before,
                after=consent,
            ):
                if (set_consent(eng, r, consent).consent or {}) == before:
                    raise _Unchanged()  # nothing saved: nothing to record
        except _Unchanged:
            pass

    await run_in_threadpool(work)
    flash(request, "Consent saved.")
    return redirect(f"/recipients/{quote(rid, safe='')}#consent")


def _clear(eng: Engine, rid: str, address: str, request: Request, user: Any) -> int:
    r = _recipient(eng, rid)
    addrs = _addresses_of(
        {"id": r.id, "email": r.email, "phone": r.phone, "addresses": r.addresses}
    )
    if address.lower() not in addrs:
        raise HTTPException(404)
    summary = f"Suppression of {address} cleared"
    with audited(request, user, "unsuppress", "recipient", r.id, summary):
        with write_transaction(eng.db) as conn:
            n = int(eng.store.clear_suppression(conn, address, eng.clock.now()))
            if not n:
                raise _NotSuppressed()
    return n


class _Unchanged(Exception):
    """The form saved nothing new: no audit entry."""


class _NotSuppressed(Exception):
    """Nothing to clear: rolls the audit entry back with the (empty) change."""


@router.post("/recipients/{rid:path}/unsuppress")
async def clear_suppression(rid: str, request: Request, user: OperatorUser) -> Response:
    form = await request.form()
    address = str(form.get("address", ""))[:320]
    eng = engine_of(request)
    try:
        n = await run_in_threadpool(_clear, eng, rid, address, request, user)
    except _NotSuppressed:
        n = 0
    if n:
        flash(request, f"Suppression of {address} cleared: deliveries to it go out again.")
    else:
        flash(request, f"{address} was not suppressed.", "info")
    return redirect(f"/recipients/{quote(rid, safe='')}#suppressions")
