"""The header's search box: one query over subjects, recipients and deliveries
(:func:`duly.store.search.search_all`), results grouped by type. When exactly one thing
matches exactly (a subject's key, a recipient's id, name or email, a delivery's id or
Message-ID), or only one thing matches at all, the page opens it instead."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from duly.store.search import MAX_QUERY, exact_matches, search_all
from duly.web.core import (
    CurrentUser,
    EngineDep,
    recipient_path,
    redirect,
    render,
    subject_path,
    viewer_tz,
)
from duly.web.subjectcells import describe, role_ids

router = APIRouter()

LIMIT = 20  # rows shown per type


def _url(kind: str, ref: str) -> str:
    if kind == "subject":
        k, _, key = ref.partition("/")
        return subject_path(k, key)
    if kind == "recipient":
        return recipient_path(ref)
    return f"/deliveries/{int(ref)}"


def _target(res: dict[str, Any]) -> str | None:
    """Where to go instead of the results: the one exact match, else the one result."""
    found = [
        *((s, "subject") for s in res["subjects"]),
        *((r, "recipient") for r in res["recipients"]),
        *((d, "delivery") for d in res["deliveries"]),
    ]
    exact = [f for f in found if f[0].get("exact")]
    more = any(res["more"].values())
    pick = exact if exact else (found if not more else [])
    if len(pick) != 1 or (exact and res["exact"] != 1):
        return None
    row, kind = pick[0]
    if kind == "subject":
        return subject_path(row["kind"], row["key"])
    if kind == "recipient":
        return recipient_path(row["id"])
    return f"/deliveries/{int(row['id'])}"


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    user: CurrentUser,
    eng: EngineDep,
    q: Annotated[str, Query(max_length=1000)] = "",
    all: Annotated[str, Query(max_length=5)] = "",  # noqa: A002 - the query parameter's name
) -> Response:
    text = " ".join(q.split())
    cut = len(text) > MAX_QUERY
    text = text[:MAX_QUERY]
    res: dict[str, Any] = {"subjects": [], "recipients": [], "deliveries": [], "more": {}}
    if text:
        with eng.db.connect() as conn:
            if not all:  # a key, an id, a number: one look-up by index, no search
                exact = exact_matches(conn, text)
                if len(exact) == 1:
                    return redirect(_url(*exact[0]))
            res = search_all(conn, text, LIMIT)
            views = eng.rules.subjects
            people = eng.store.get_recipients(conn, role_ids(views, res["subjects"]))
        if not all:
            target = _target(res)
            if target is not None:
                return redirect(target)
        now, tz = eng.clock.now(), viewer_tz(request)
        for s in res["subjects"]:
            s.update(describe(views, s, now=now, tz=tz, people=people))
            s["url"] = subject_path(s["kind"], s["key"])
        for r in res["recipients"]:
            r["url"] = recipient_path(r["id"])
    total = len(res["subjects"]) + len(res["recipients"]) + len(res["deliveries"])
    return render(
        request,
        "search/results.html",
        {
            "q": text,
            "search_q": text,
            "cut": cut,
            "res": res,
            "total": total,
            "limit": LIMIT,
            "max_query": MAX_QUERY,
            "title": f"Search: {text}" if text else "Search",
        },
    )
