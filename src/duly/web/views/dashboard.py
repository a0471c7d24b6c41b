"""The dashboard (``/``): what happened today and in the last 7 days, what comes next, what
needs attention, and whether the engine is running.

Every query (duly.store.pages_deliveries) is bounded by an index: outcomes by
``delivery_log.at`` (ix_delivery_log_at, the last 7 local days), the queue and the lists by
``deliveries (state, due_at)`` (ix_deliveries_state_due); lists are LIMITed. Days are the
viewer's (their timezone).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from duly.store.db import Connection
from duly.store.pages_deliveries import (
    dashboard_attention,
    dashboard_next_day,
    dashboard_queue,
    other_workers,
    outcomes_by_day,
)
from duly.web.core import CurrentUser, render, runtime_of, viewer_tz
from duly.web.svg import ChartDay, outcome_chart

router = APIRouter()

OUTCOMES = ("sent", "failed", "skipped", "cancelled")
DAYS = 7
LIST_LIMIT = 8
WORKER_STALE = timedelta(minutes=2)

BREAKER_TEXT = {
    "closed": "sending normally",
    "open": "paused after repeated failures; deliveries wait",
    "half-open": "trying one delivery to see if the channel is back",
}


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
    breakers = [
        {"name": name, "state": b.state(now), "text": BREAKER_TEXT.get(b.state(now), "")}
        for name, b in sorted(getattr(disp, "breakers", {}).items())
    ]
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


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: CurrentUser) -> HTMLResponse:
    rt = runtime_of(request)
    now = rt.engine.clock.now()
    tz = viewer_tz(request)
    bounds = day_bounds(now, tz)
    starts = [b for _, b in bounds]
    with rt.db.connect() as conn:
        per_day = outcomes_by_day(conn, starts)
        queue = dashboard_queue(conn, now)
        upcoming_count, upcoming = dashboard_next_day(conn, now, LIST_LIMIT)
        needs = dashboard_attention(conn, now, starts[0], LIST_LIMIT)
        health = engine_health(request, conn, now)
        rids = {r["recipient"] for r in upcoming + needs["failed"] + needs["overdue"]}
        people = rt.engine.store.get_recipients(conn, rids)
    week: Counter[str] = Counter()
    for c in per_day:
        week.update(c)
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
    return render(
        request,
        "dashboard/index.html",
        {
            "title": "Dashboard",
            "outcomes": OUTCOMES,
            "today": per_day[-1],
            "week": week,
            "since": starts[0],
            "days": days,
            "chart": outcome_chart(days, title="Deliveries per day by outcome"),
            "queue": queue,
            "upcoming": upcoming,
            "upcoming_count": upcoming_count,
            "needs": needs,
            "health": health,
            "zones": zones,
        },
    )
