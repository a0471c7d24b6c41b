"""The dashboard (``/``): what happened today and in the last 7 days, what comes next, what
needs attention, and whether the engine is running.

Every query is bounded by an index: outcomes by ``delivery_log.at`` (ix_delivery_log_at,
the last 7 local days), the queue and the lists by ``deliveries (state, due_at)``
(ix_deliveries_state_due); lists are LIMITed. Days are the viewer's (their timezone).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from duly.store.tables import deliveries, delivery_log, workers
from duly.web.core import CurrentUser, render, runtime_of, viewer_tz
from duly.web.svg import ChartDay, outcome_chart

router = APIRouter()

OUTCOMES = ("sent", "failed", "skipped", "cancelled")
DAYS = 7
LIST_LIMIT = 8
OVERDUE_AFTER = timedelta(seconds=60)  # as core.state_of: a pending row this late is overdue
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


def outcomes_by_day(conn: sa.Connection, starts: list[datetime]) -> list[Counter[str]]:
    """Outcomes recorded in each interval [starts[i], starts[i+1]), one Counter each.

    One grouped scan of the log's index range; the bucket is a CASE over the day starts (in
    a subquery, so PostgreSQL groups by the same expression it selects)."""
    at = delivery_log.c.at
    bucket = sa.case(
        *[(at < b, i) for i, b in enumerate(starts[1:-1])], else_=len(starts) - 2
    ).label("b")
    inner = (
        sa.select(bucket, delivery_log.c.outcome.label("outcome"))
        .where(delivery_log.c.kind == "outcome", at >= starts[0], at < starts[-1])
        .subquery()
    )
    q = sa.select(inner.c.b, inner.c.outcome, sa.func.count()).group_by(inner.c.b, inner.c.outcome)
    out: list[Counter[str]] = [Counter() for _ in starts[:-1]]
    for b, outcome, n in conn.execute(q):
        out[int(b)][outcome or ""] += int(n)
    return out


def queue_now(conn: sa.Connection, now: datetime) -> dict[str, Any]:
    """Pending rows now: how many, how many due (the backlog), how many overdue, the oldest
    due time; and how many are being sent. Served by ix_deliveries_state_due."""
    due = deliveries.c.due_at
    late = now - OVERDUE_AFTER
    row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((due <= now, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((due < late, 1), else_=0)), 0),
        ).where(deliveries.c.state == "pending")
    ).one()
    oldest = conn.execute(
        sa.select(sa.func.min(due)).where(deliveries.c.state == "pending", due <= now)
    ).scalar()
    sending = conn.execute(
        sa.select(sa.func.count()).where(deliveries.c.state == "sending")
    ).scalar()
    return {
        "pending": int(row[0]),
        "due": int(row[1]),
        "overdue": int(row[2]),
        "oldest_due": oldest,
        "sending": int(sending or 0),
    }


_LIST_COLS = (
    deliveries.c.id,
    deliveries.c.rule,
    deliveries.c.step,
    deliveries.c.subject,
    deliveries.c.recipient,
    deliveries.c.channel,
    deliveries.c.state,
    deliveries.c.reason,
    deliveries.c.due_at,
    deliveries.c.attempts,
    deliveries.c.last_error,
    deliveries.c.title,
)


def _rows(conn: sa.Connection, q: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(q).mappings()]


def next_day(conn: sa.Connection, now: datetime) -> tuple[int, list[dict[str, Any]]]:
    """Pending deliveries due in the next 24 h (not yet overdue): their count and the first
    few."""
    where = (
        deliveries.c.state == "pending",
        deliveries.c.due_at >= now - OVERDUE_AFTER,
        deliveries.c.due_at < now + timedelta(hours=24),
    )
    n = conn.execute(sa.select(sa.func.count()).where(*where)).scalar() or 0
    rows = _rows(
        conn,
        sa.select(*_LIST_COLS)
        .where(*where)
        .order_by(deliveries.c.due_at, deliveries.c.id)
        .limit(LIST_LIMIT),
    )
    return int(n), rows


def attention(conn: sa.Connection, now: datetime, since: datetime) -> dict[str, Any]:
    """Failed deliveries due since ``since`` (newest first) and overdue pending ones (oldest
    first), with their counts."""
    failed_where = (deliveries.c.state == "failed", deliveries.c.due_at >= since)
    overdue_where = (deliveries.c.state == "pending", deliveries.c.due_at < now - OVERDUE_AFTER)
    return {
        "failed_count": int(
            conn.execute(sa.select(sa.func.count()).where(*failed_where)).scalar() or 0
        ),
        "failed": _rows(
            conn,
            sa.select(*_LIST_COLS)
            .where(*failed_where)
            .order_by(deliveries.c.due_at.desc(), deliveries.c.id.desc())
            .limit(LIST_LIMIT),
        ),
        "overdue": _rows(
            conn,
            sa.select(*_LIST_COLS)
            .where(*overdue_where)
            .order_by(deliveries.c.due_at, deliveries.c.id)
            .limit(LIST_LIMIT),
        ),
    }


def engine_health(request: Request, conn: sa.Connection, now: datetime) -> dict[str, Any]:
    """What /readyz reports (dispatcher thread, channel breakers) and the workers' heartbeats."""
    rt = runtime_of(request)
    disp = getattr(rt, "dispatcher", None)
    breakers = [
        {"name": name, "state": b.state(now), "text": BREAKER_TEXT.get(b.state(now), "")}
        for name, b in sorted(getattr(disp, "breakers", {}).items())
    ]
    own = getattr(disp, "owner", None)
    others = [
        {**dict(r), "alive": r["heartbeat_at"] >= now - WORKER_STALE}
        for r in conn.execute(
            sa.select(workers)
            .where(workers.c.id != (own or ""))
            .order_by(workers.c.heartbeat_at.desc())
            .limit(20)
        ).mappings()
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
        queue = queue_now(conn, now)
        upcoming_count, upcoming = next_day(conn, now)
        needs = attention(conn, now, starts[0])
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
