"""Statistics: outcomes counted over a period and the queue now (behind /v1/stats).

Counted in SQL with GROUP BY over ``delivery_log`` outcome rows in the period (the index on
``delivery_log.at`` bounds the scan) — two grouped scans and one count of the queue, on
SQLite and PostgreSQL alike — so the answer stays fast with millions of rows.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import deliveries, delivery_log

__all__ = ["period_stats"]


def _day(col: Any) -> Any:
    # date(ts) exists on both backends: a 'YYYY-MM-DD' string on SQLite, a date on PostgreSQL
    return sa.func.date(col)


def _as_date(v: Any) -> date:
    return v if isinstance(v, date) else date.fromisoformat(str(v)[:10])


def period_stats(conn: Connection, start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    """What happened in [start, end) and what waits at ``now``, as plain data (the body
    of duly.api.stats.StatsOut): outcomes recorded in the period by outcome, by (outcome,
    reason) most frequent first, by rule and by channel most outcomes first, and by every
    UTC day of the period oldest first; the queue now (pending incl. sending, sending,
    overdue = pending and due, failed). Two grouped scans of the log's ``at`` index range
    and one grouped count of the queue (ix_deliveries_state_due)."""
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
