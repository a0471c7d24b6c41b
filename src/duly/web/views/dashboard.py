"""The dashboard (``/``): what happened today and in the last 7 days, what comes next, what
needs attention, and whether the engine is running.

Every query (duly.store.pages_deliveries) is bounded by an index: outcomes by
``delivery_log.at`` (ix_delivery_log_at, the last 7 local days), the queue and the lists by
``deliveries (state, due_at)`` (ix_deliveries_state_due); lists are LIMITed. Days are the
viewer's (their timezone).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from duly.engine.service import Engine
from duly.store.db import Connection
from duly.store.pages_deliveries import (
    attempt_totals,
    dashboard_attention,
    dashboard_next_day,
    dashboard_queue,
    finished_counts,
    other_workers,
    outcomes_by_day,
)
from duly.web.core import SESSION_FLASH, CurrentUser, render, runtime_of, viewer_tz
from duly.web.svg import ChartDay, outcome_chart
from duly.web.views.delivery_checks import GONE, verdicts
from duly.web.words import BREAKER_HINTS, breaker_words, reason_words, subject_kind

router = APIRouter()

OUTCOMES = ("sent", "failed", "skipped", "cancelled")
DAYS = 7
LIST_LIMIT = 8
WORKER_STALE = timedelta(minutes=2)

ATTENTION_CANDIDATES = 200  # failures read to find the LIST_LIMIT that still matter
REFRESH_SECONDS = 30  # the page fetches its live part this often (a reload without script)


def local_midnight(d: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) the day ``d`` starts in ``tz``."""
    return datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)


def day_bounds(now: datetime, tz: ZoneInfo, days: int = DAYS) -> list[tuple[date, datetime]]:
    """The last ``days`` local days up to today, oldest first, each with the instant it
    starts; then tomorrow (the end of the last one)."""
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    return [
        (d, local_midnight(d, tz)) for d in (first + timedelta(days=i) for i in range(days + 1))
    ]


def engine_health(request: Request, conn: Connection, now: datetime) -> dict[str, Any]:
    """What /readyz reports (dispatcher thread, channel breakers) and the workers' heartbeats."""
    rt = runtime_of(request)
    disp = getattr(rt, "dispatcher", None)
    tz = viewer_tz(request)
    breakers = []
    for name, b in sorted(getattr(disp, "breakers", {}).items()):
        state = b.state(now)
        breakers.append({
            "name": name,
            "state": state,
            "words": breaker_words(state, getattr(b, "open_until", None), tz),
            "text": BREAKER_HINTS.get(state, ""),
        })  # fmt: skip
    own = getattr(disp, "owner", None)
    others = [
        {**r, "alive": r["heartbeat_at"] >= now - WORKER_STALE}
        for r in other_workers(conn, own, limit=20)
    ]
    return {
        "alive": rt.dispatcher_alive(),
        "workers": others,
        "breakers": breakers,
        "schedule_errors": dict(getattr(rt.engine, "schedule_errors", {}) or {}),
        "last_error": getattr(disp, "last_error", None),
    }


def attention(engine: Engine, conn: Connection, now: datetime, since: datetime) -> dict[str, Any]:
    """Failures that still matter and overdue deliveries, each with why it is listed.

    A failure no longer matters when its subject was deleted or no longer meets its rule
    (the invoice was paid), its rule is gone, or its deadline has passed: retrying could not
    send it. Those are counted (``left_out``), not listed."""
    found = dashboard_attention(conn, now, since, ATTENTION_CANDIDATES)
    checks = verdicts(engine, conn, found["failed"] + found["overdue"], now)
    failed = []
    for d in found["failed"]:
        v = checks.get(d["id"])
        if v is not None and v.reason in GONE:
            continue
        d["why"] = reason_words(d["reason"], d["subject"]) or "Failed"
        kind = subject_kind(d["subject"])
        d["why_more"] = (
            f"retrying would not send it either: {v.text}" if v is not None
            else f"still needed: the {kind} still meets its rule" if kind
            else "still needed"
        )  # fmt: skip
        failed.append(d)
    overdue = []
    for d in found["overdue"]:
        v = checks.get(d["id"])
        d["why_more"] = f"it will not be sent: {v.text}" if v is not None and not v.waits else ""
        overdue.append(d)
    totals = attempt_totals(conn, [d["id"] for d in failed[:LIST_LIMIT]])
    for d in failed[:LIST_LIMIT]:  # as the delivery's page lists them (retries included)
        d["attempts"] = max(d["attempts"] or 0, totals.get(d["id"], 0))
    more = len(found["failed"]) >= ATTENTION_CANDIDATES
    return {
        "failed": failed[:LIST_LIMIT],
        "failed_count": len(failed),
        "failed_more": more,
        "left_out": found["failed_count"] - len(failed) if not more else None,
        "overdue": overdue[:LIST_LIMIT],
    }


def _links(day: date, first: date) -> dict[str, str]:
    return {
        "today": f"finished_from={day.isoformat()}&finished_to={day.isoformat()}",
        "week": f"finished_from={first.isoformat()}&finished_to={day.isoformat()}",
    }


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: CurrentUser) -> HTMLResponse:
    rt = runtime_of(request)
    now = rt.engine.clock.now()
    tz = viewer_tz(request)
    bounds = day_bounds(now, tz)
    starts = [b for _, b in bounds]
    with rt.db.connect() as conn:
        per_day = outcomes_by_day(conn, starts)
        # the numbers count what their links list (finished_counts = the list's filter)
        today = finished_counts(conn, starts[-2], starts[-1])
        week = finished_counts(conn, starts[0], starts[-1])
        queue = dashboard_queue(conn, now)
        upcoming_count, upcoming = dashboard_next_day(conn, now, LIST_LIMIT)
        needs = attention(rt.engine, conn, now, starts[0])
        health = engine_health(request, conn, now)
        rids = {r["recipient"] for r in upcoming + needs["failed"] + needs["overdue"]}
        people = rt.engine.store.get_recipients(conn, rids)
    days = [
        ChartDay(
            key=d.isoformat(),
            label=d.strftime("%a %d"),
            title=d.strftime("%a %d %b"),
            counts=c,
        )
        for (d, _), c in zip(bounds[:-1], per_day, strict=True)
    ]
    zones = {rid: r.timezone for rid, r in people.items()}
    context = {
        "title": "Dashboard",
        "outcomes": OUTCOMES,
        "today": today,
        "week": week,
        "links": _links(bounds[-2][0], bounds[0][0]),
        "since_day": bounds[0][0].isoformat(),
        "since": starts[0],
        "days": days,
        "chart": outcome_chart(days, title="Deliveries per day by outcome"),
        "queue": queue,
        "upcoming": upcoming,
        "upcoming_count": upcoming_count,
        "needs": needs,
        "health": health,
        "zones": zones,
        "refresh": REFRESH_SECONDS,
    }
    if request.query_params.get("part") == "live":
        # the live part alone, for the page's script; a message waiting for the next full
        # page stays for it
        waiting = list(request.session.get(SESSION_FLASH, []))
        out = render(request, "dashboard/_live.html", context)
        if waiting:
            request.session[SESSION_FLASH] = waiting
        out.headers["cache-control"] = "no-store"
        return out
    return render(request, "dashboard/index.html", context)
