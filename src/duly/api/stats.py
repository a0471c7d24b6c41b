"""/v1/stats: what happened in a period (outcomes by outcome, reason, rule, channel and
day) and what is waiting now (USE-CASES U3.5, a monitoring view).

Counted in SQL with GROUP BY over ``delivery_log`` outcome rows in the period (the index on
``delivery_log.at`` bounds the scan) — two grouped scans and one count of the queue, on
SQLite and PostgreSQL alike — so the answer stays fast with millions of rows.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from duly.api.errors import ApiError
from duly.api.schemas import ErrorOut, Instant  # ErrorOut: the one error shape, one name
from duly.store.tables import deliveries, delivery_log

router = APIRouter(prefix="/v1", tags=["stats"])

DEFAULT_PERIOD = timedelta(days=7)
MAX_PERIOD = timedelta(days=400)


# --------------------------------------------------------------------------- schemas


class Counts(BaseModel):
    total: int
    outcomes: dict[str, int] = Field(
        description="count by outcome (sent, failed, skipped, cancelled, set)",
        examples=[{"sent": 41, "skipped": 2}],
    )


class RuleCounts(Counts):
    rule: str


class ChannelCounts(Counts):
    channel: str | None = Field(description="None for rows with no channel (`set` actions)")


class DayCounts(Counts):
    day: date = Field(description="a UTC date")


class ReasonCount(BaseModel):
    outcome: str
    reason: str
    count: int


class StatsOut(BaseModel):
    from_: datetime = Field(alias="from", description="start of the period (included)")
    to: datetime = Field(description="end of the period (excluded)")
    total: int = Field(description="outcomes recorded in the period")
    by_outcome: dict[str, int]
    by_reason: list[ReasonCount] = Field(
        description="outcomes that have a reason (skipped: no_consent, failed: "
        "retries_exhausted, …), most frequent first"
    )
    by_rule: list[RuleCounts] = Field(description="most outcomes first")
    by_channel: list[ChannelCounts] = Field(description="most outcomes first")
    by_day: list[DayCounts] = Field(description="every UTC day of the period, oldest first")
    pending: int = Field(description="now (whatever the period): planned and not yet sent")
    sending: int = Field(description="now: claimed by a dispatcher, being sent")
    overdue: int = Field(description="now: pending and already due")
    failed: int = Field(description="now: deliveries whose last outcome is failed")


# --------------------------------------------------------------------------- queries


def _day(col: Any) -> Any:
    # date(ts) exists on both backends: a 'YYYY-MM-DD' string on SQLite, a date on PostgreSQL
    return sa.func.date(col)


def _as_date(v: Any) -> date:
    return v if isinstance(v, date) else date.fromisoformat(str(v)[:10])


def period_stats(
    conn: sa.Connection, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    """The body of StatsOut for outcomes recorded in [start, end), and the queue at ``now``."""
    in_period = sa.and_(
        delivery_log.c.kind == "outcome",
        delivery_log.c.at >= start,
        delivery_log.c.at < end,
    )
    # 1. by day, outcome and reason — no join (the log row has them)
    day = _day(delivery_log.c.at).label("day")
    q1 = (
        sa.select(day, delivery_log.c.outcome, delivery_log.c.reason, sa.func.count())
        .where(in_period)
        .group_by(day, delivery_log.c.outcome, delivery_log.c.reason)
    )
    by_outcome: Counter[str] = Counter()
    by_reason: Counter[tuple[str, str]] = Counter()
    by_day: dict[date, Counter[str]] = {}
    for d, outcome, reason, n in conn.execute(q1):
        outcome = outcome or ""
        by_outcome[outcome] += n
        if reason:
            by_reason[(outcome, reason)] += n
        by_day.setdefault(_as_date(d), Counter())[outcome] += n
    # 2. by rule, channel and outcome — joined to the delivery for its identity
    q2 = (
        sa.select(deliveries.c.rule, deliveries.c.channel, delivery_log.c.outcome, sa.func.count())
        .select_from(delivery_log.join(deliveries, deliveries.c.id == delivery_log.c.delivery_id))
        .where(in_period)
        .group_by(deliveries.c.rule, deliveries.c.channel, delivery_log.c.outcome)
    )
    by_rule: dict[str, Counter[str]] = {}
    by_channel: dict[str, Counter[str]] = {}
    for rule, channel, outcome, n in conn.execute(q2):
        by_rule.setdefault(rule, Counter())[outcome or ""] += n
        by_channel.setdefault(channel or "", Counter())[outcome or ""] += n
    # 3. the queue now — served by ix_deliveries_state_due
    q3 = (
        sa.select(
            deliveries.c.state,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((deliveries.c.due_at <= now, 1), else_=0)), 0),
        )
        .where(deliveries.c.state.in_(("pending", "sending", "failed")))
        .group_by(deliveries.c.state)
    )
    queue = {state: (int(n), int(due)) for state, n, due in conn.execute(q3)}

    def counts(c: Counter[str]) -> dict[str, Any]:
        return {"total": sum(c.values()), "outcomes": dict(sorted(c.items()))}

    days = []
    d = start.astimezone(UTC).date()
    while datetime(d.year, d.month, d.day, tzinfo=UTC) < end:
        days.append({"day": d, **counts(by_day.get(d, Counter()))})
        d += timedelta(days=1)
    return {
        "from": start,
        "to": end,
        "total": sum(by_outcome.values()),
        "by_outcome": dict(sorted(by_outcome.items())),
        "by_reason": [
            {"outcome": o, "reason": r, "count": n}
            for (o, r), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "by_rule": [
            {"rule": k, **counts(c)}
            for k, c in sorted(by_rule.items(), key=lambda kv: (-kv[1].total(), kv[0]))
        ],
        "by_channel": [
            {"channel": k or None, **counts(c)}
            for k, c in sorted(by_channel.items(), key=lambda kv: (-kv[1].total(), kv[0]))
        ],
        "by_day": days,
        "pending": queue.get("pending", (0, 0))[0] + queue.get("sending", (0, 0))[0],
        "sending": queue.get("sending", (0, 0))[0],
        "overdue": queue.get("pending", (0, 0))[1],
        "failed": queue.get("failed", (0, 0))[0],
    }


# --------------------------------------------------------------------------- route


@router.get(
    "/stats",
    response_model=StatsOut,
    response_model_by_alias=True,
    responses={422: {"model": ErrorOut, "description": "a bad period"}},
)
def stats(
    request: Request,
    from_: Annotated[
        Instant | None,
        Query(alias="from", description="ISO 8601 with an offset; default: `to` − 7 days"),
    ] = None,
    to: Annotated[
        Instant | None, Query(description="ISO 8601 with an offset; default: now")
    ] = None,
) -> StatsOut:
    """Counts of the outcomes recorded in a period (by outcome, reason, rule, channel and
    UTC day), and the deliveries pending, being sent, overdue and failed now. The period is
    at most 400 days."""
    for name, t in (("from", from_), ("to", to)):
        if t is not None and t.tzinfo is None:
            raise ApiError(422, "invalid", f"{name} needs a UTC offset or Z", name)
    rt = request.app.state.runtime
    now = rt.engine.clock.now()
    end = (to or now).astimezone(UTC)
    start = (from_ or end - DEFAULT_PERIOD).astimezone(UTC)
    if start >= end:
        raise ApiError(422, "invalid", "from must be before to", "from")
    if end - start > MAX_PERIOD:
        raise ApiError(422, "invalid", f"the period is at most {MAX_PERIOD.days} days", "from")
    with rt.db.connect() as conn:
        body = period_stats(conn, start, end, now)
    return StatsOut.model_validate(body)
