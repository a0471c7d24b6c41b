"""Upcoming (``/upcoming``): the timeline of planned deliveries, soonest first, grouped by
day in the viewer's timezone, filterable by rule, channel, recipient, subject kind and a
from/to window.

Pending rows ordered by (due_at, id) with keyset paging — ``ix_deliveries_state_due``
serves ``state = 'pending' ORDER BY due_at``; 50 rows a page; the recipients of a page are
read in one query.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from itertools import groupby
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from duly.core.model import REMINDER_RULE, held_until_cleared
from duly.store.pages_deliveries import OVERDUE_AFTER, upcoming_page
from duly.web.core import (
    CurrentUser,
    page_of,
    parse_local_datetime,
    render,
    runtime_of,
    to_local_input,
    viewer_tz,
)
from duly.web.words import rule_words

router = APIRouter()

LIMIT = 50
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_CURSOR = re.compile(r"^(\d{1,12})\.(\d{6})~(\d{1,19})$")  # epoch seconds.micros~id


def _cursor(row: dict[str, Any]) -> str:
    t = row["due_at"].astimezone(UTC)
    return f"{int(t.timestamp())}.{t.microsecond:06d}~{row['id']}"


def _parse_cursor(value: str) -> tuple[datetime, int]:
    m = _CURSOR.match(value)
    if not m:
        raise ValueError("this page link is damaged; start again from the first page")
    t = datetime.fromtimestamp(int(m.group(1)), UTC).replace(microsecond=int(m.group(2)))
    return t, int(m.group(3))


def options(rt: Any) -> dict[str, list[tuple[str, str]]]:
    """The choices of the filter form, from the loaded rule file."""
    rf = rt.rules
    rules = [(r.name, r.name) for r in rf.rules]
    rules.append((REMINDER_RULE, rule_words(REMINDER_RULE) + "s"))
    channels = sorted(set(rf.channels) | {c for r in rf.rules for c in (r.channels or ())})
    kinds = sorted({r.subject for r in rf.rules if r.subject})
    return {
        "rules": rules,
        "channels": [(c, c) for c in channels],
        "kinds": [(k, k) for k in kinds],
    }


def read_filters(
    params: Any, tz: ZoneInfo, opts: dict[str, list[tuple[str, str]]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The filters asked for (as given, for the form) and a message per bad one."""
    f = {k: str(params.get(k, "")).strip()[:300] for k in ("rule", "channel", "recipient", "kind")}
    f["from"] = str(params.get("from", "")).strip()[:40]
    f["to"] = str(params.get("to", "")).strip()[:40]
    errors: dict[str, str] = {}
    if f["rule"] and f["rule"] not in {v for v, _ in opts["rules"]}:
        errors["rule"] = "There is no rule of that name in the loaded rule file."
    if f["channel"] and f["channel"] not in {v for v, _ in opts["channels"]}:
        errors["channel"] = "There is no channel of that name in the loaded rule file."
    if f["kind"] and not _KIND.match(f["kind"]):
        errors["kind"] = "A subject kind is letters, digits, and . _ : - (at most 100)."
    if len(f["recipient"]) > 200:
        errors["recipient"] = "A recipient id is at most 200 characters."
    for name in ("from", "to"):
        if f[name]:
            try:
                f[name + "_at"] = parse_local_datetime(f[name], tz)
            except ValueError as exc:
                errors[name] = f"{exc}."
    if "from_at" in f and "to_at" in f and f["from_at"] >= f["to_at"]:
        errors["to"] = "The end of the window must be after its start."
    return f, errors


@router.get("/upcoming", response_class=HTMLResponse)
def upcoming(request: Request, user: CurrentUser) -> HTMLResponse:
    rt = runtime_of(request)
    now = rt.engine.clock.now()
    tz = viewer_tz(request)
    opts = options(rt)
    f, errors = read_filters(request.query_params, tz, opts)
    after = None
    raw_after = str(request.query_params.get("after", ""))[:80]
    if raw_after:
        try:
            after = _parse_cursor(raw_after)
        except ValueError as exc:
            errors["after"] = str(exc)
    rows: list[dict[str, Any]] = []
    zones: dict[str, str | None] = {}
    if not errors:
        with rt.db.connect() as conn:
            rows = upcoming_page(
                conn,
                rule=f["rule"],
                channel=f["channel"],
                recipient=f["recipient"],
                kind=f["kind"],
                start=f.get("from_at"),
                end=f.get("to_at"),
                after=after,
                limit=LIMIT + 1,
            )
            people = rt.engine.store.get_recipients(conn, {r["recipient"] for r in rows[:LIMIT]})
        zones = {rid: p.timezone for rid, p in people.items()}
    for r in rows:
        r["cursor"] = _cursor(r)
        r["overdue"] = r["due_at"] < now - OVERDUE_AFTER
    page = page_of(rows, LIMIT, request, key="cursor", param="after")
    # spec: Hold: what waits for an indefinite hold to be cleared has no day; it comes last
    # (due at HOLD_INDEFINITE) under its own heading (day None)
    days = [
        (day, list(items))
        for day, items in groupby(
            page.items,
            key=lambda r: (
                None if held_until_cleared(r["due_at"]) else r["due_at"].astimezone(tz).date()
            ),
        )
    ]
    filtered = any(f.get(k) for k in ("rule", "channel", "recipient", "kind", "from", "to"))
    return render(
        request,
        "upcoming/index.html",
        {
            "title": "Upcoming",
            "f": f,
            "errors": errors,
            "opts": opts,
            "page": page,
            "days": days,
            "today": now.astimezone(tz).date(),
            "zones": zones,
            "filtered": filtered,
            "continued": after is not None,
            "from_value": to_local_input(f.get("from_at"), tz) if f.get("from_at") else f["from"],
            "to_value": to_local_input(f.get("to_at"), tz) if f.get("to_at") else f["to"],
        },
        status=400 if errors else 200,
    )
