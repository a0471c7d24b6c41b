"""Read models over the deliveries and their log, for the web UI's pages: the dashboard,
the upcoming timeline, the outbox, the deliveries list and one delivery, a rule's next
pending deliveries.

Every function takes an open connection (the caller decides the transaction), reads only,
and returns plain dicts, lists and tuples. Every list is LIMITed and ordered by an index
(``ix_deliveries_state_due``, ``ix_delivery_log_at`` or the primary key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import deliveries, delivery_log, workers

__all__ = [
    "OVERDUE_AFTER",
    "attempt_totals",
    "dashboard_attention",
    "dashboard_next_day",
    "dashboard_queue",
    "finished_counts",
    "delivery_html_part",
    "deliveries_page",
    "next_pending_of_rule",
    "other_workers",
    "outbox_page",
    "outcomes_by_day",
    "sibling_deliveries",
    "upcoming_page",
]

# as the UI's state_of: a pending row this late is overdue
OVERDUE_AFTER = timedelta(seconds=60)


def _rows(conn: Connection, q: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(q).mappings()]


# --------------------------------------------------------------------------- dashboard


def outcomes_by_day(conn: Connection, starts: list[datetime]) -> list[Counter[str]]:
    """Outcomes recorded in each interval [starts[i], starts[i+1]), one Counter (outcome →
    count; a missing outcome counted as "") per interval, in the order of ``starts``.

    One grouped scan of the log's index range (ix_delivery_log_at); the bucket is a CASE
    over the day starts (in a subquery, so PostgreSQL groups by the same expression it
    selects)."""
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


def _finished_in(start: datetime, end: datetime) -> Any:
    """A delivery whose outcome, recorded in [start, end), is still its state (a failure
    retried and sent since counts as sent, once). The one condition behind the dashboard's
    numbers and the deliveries list they open, so the two always agree."""
    log = delivery_log.c
    return sa.exists().where(
        log.delivery_id == deliveries.c.id,
        log.kind == "outcome",
        log.outcome == deliveries.c.state,
        log.at >= start,
        log.at < end,
    )


def finished_counts(conn: Connection, start: datetime, end: datetime) -> Counter[str]:
    """Deliveries by state (sent, failed, skipped, cancelled, set) whose outcome was recorded
    in [start, end) and is still their state: what ``deliveries_page(finished=(start, end),
    state=...)`` lists, counted (a delivery with two such outcomes, once). One join from the
    log's index range (ix_delivery_log_at) to each delivery by its key."""
    log = delivery_log.c
    q = (
        sa.select(deliveries.c.state, sa.func.count(sa.distinct(deliveries.c.id)))
        .select_from(delivery_log.join(deliveries, deliveries.c.id == log.delivery_id))
        .where(
            log.kind == "outcome",
            log.at >= start,
            log.at < end,
            log.outcome == deliveries.c.state,
        )
        .group_by(deliveries.c.state)
    )
    return Counter({str(state): int(n) for state, n in conn.execute(q)})


def dashboard_queue(conn: Connection, now: datetime) -> dict[str, Any]:
    """Pending rows at ``now``: ``pending`` (all), ``due`` (the backlog), ``overdue`` (due
    more than OVERDUE_AFTER ago), ``oldest_due`` (the oldest due time, None if none); and
    ``sending`` (rows being sent). Three counts served by ix_deliveries_state_due."""
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


_CHECK_COLS = (
    deliveries.c.occurrence,
    deliveries.c.category,
    deliveries.c.deadline_at,
)


def dashboard_next_day(
    conn: Connection, now: datetime, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """Pending deliveries due in the next 24 h and not yet overdue: their count, and the
    first ``limit`` of them by (due_at, id)."""
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
        .limit(limit),
    )
    return int(n), rows


def dashboard_attention(
    conn: Connection, now: datetime, since: datetime, limit: int
) -> dict[str, Any]:
    """What may need attention: ``failed_count`` (failed deliveries due since ``since``),
    ``failed`` (those of them whose deadline, if any, has not passed, newest first, at most
    ``limit``: the caller leaves out the ones that no longer matter), and ``overdue``
    (pending ones overdue at ``now``, oldest first, at most ``limit``). Rows carry what the
    checks of a send need (occurrence, category, deadline)."""
    failed_where = (deliveries.c.state == "failed", deliveries.c.due_at >= since)
    live = sa.or_(deliveries.c.deadline_at.is_(None), deliveries.c.deadline_at >= now)
    overdue_where = (deliveries.c.state == "pending", deliveries.c.due_at < now - OVERDUE_AFTER)
    return {
        "failed_count": int(
            conn.execute(sa.select(sa.func.count()).where(*failed_where)).scalar() or 0
        ),
        "failed": _rows(
            conn,
            sa.select(*_LIST_COLS, *_CHECK_COLS)
            .where(*failed_where, live)
            .order_by(deliveries.c.due_at.desc(), deliveries.c.id.desc())
            .limit(limit),
        ),
        "overdue": _rows(
            conn,
            sa.select(*_LIST_COLS, *_CHECK_COLS)
            .where(*overdue_where)
            .order_by(deliveries.c.due_at, deliveries.c.id)
            .limit(limit),
        ),
    }


def other_workers(conn: Connection, own: str | None, limit: int = 20) -> list[dict[str, Any]]:
    """The workers' rows (every column) but ``own``'s, latest heartbeat first, at most
    ``limit``."""
    return _rows(
        conn,
        sa.select(workers)
        .where(workers.c.id != (own or ""))
        .order_by(workers.c.heartbeat_at.desc())
        .limit(limit),
    )


# --------------------------------------------------------------------------- upcoming


def _like_prefix(kind: str) -> str:
    escaped = kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def upcoming_page(
    conn: Connection,
    *,
    rule: str = "",
    channel: str = "",
    recipient: str = "",
    kind: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    after: tuple[datetime, int] | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Pending deliveries soonest first, by (due_at, id), at most ``limit``: filtered by
    each non-empty ``rule``, ``channel``, ``recipient`` (equal), ``kind`` (the subject's kind,
    taken literally), due time in [``start``, ``end``); keyset paging after the (due_at, id)
    of the last row of the previous page. ix_deliveries_state_due serves the order."""
    d = deliveries
    q = sa.select(
        d.c.id,
        d.c.rule,
        d.c.step,
        d.c.occurrence,
        d.c.subject,
        d.c.recipient,
        d.c.channel,
        d.c.state,
        d.c.category,
        d.c.due_at,
        d.c.planned_at,
        d.c.attempts,
        d.c.last_error,
    ).where(d.c.state == "pending")
    for col, val in ((d.c.rule, rule), (d.c.channel, channel), (d.c.recipient, recipient)):
        if val:
            q = q.where(col == val)
    if kind:
        q = q.where(d.c.subject.like(_like_prefix(kind), escape="\\"))
    if start:
        q = q.where(d.c.due_at >= start)
    if end:
        q = q.where(d.c.due_at < end)
    if after is not None:
        t, i = after
        q = q.where(sa.or_(d.c.due_at > t, sa.and_(d.c.due_at == t, d.c.id > i)))
    q = q.order_by(d.c.due_at, d.c.id).limit(limit)
    return _rows(conn, q)


# --------------------------------------------------------------------------- outbox


def outbox_page(
    conn: Connection,
    channels: Sequence[str],
    search: str,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Sent messages of the outbox ``channels``, newest first, at most ``limit``; with
    ``search``, those whose address or title contains it (case-insensitive, taken
    literally) or whose recipient id is it.

    Ordered by due time, then id: a sent row's due time is when the dispatcher sent it (a
    retry or "send now" moves it), and (state, due_at) is indexed, where sent_at is not.
    ``after`` is the id of the last message of the previous page (an unknown id: [])."""
    c = deliveries.c
    q = sa.select(
        c.id, c.rule, c.step, c.subject, c.recipient, c.channel, c.to_address, c.title,
        c.sent_at, c.due_at, c.category,
    ).where(c.state == "sent", c.channel.in_(channels))  # fmt: skip
    if search:
        q = q.where(
            sa.or_(
                c.to_address.icontains(search, autoescape=True),
                c.title.icontains(search, autoescape=True),
                c.recipient == search,
            )
        )
    if after is not None:
        last = conn.execute(sa.select(c.due_at).where(c.id == after)).scalar_one_or_none()
        if last is None:
            return []
        q = q.where(sa.or_(c.due_at < last, sa.and_(c.due_at == last, c.id < after)))
    q = q.order_by(c.due_at.desc(), c.id.desc()).limit(limit)
    return _rows(conn, q)


# --------------------------------------------------------------------------- deliveries


def deliveries_page(
    conn: Connection,
    *,
    now: datetime,
    state: str = "",
    rule: str = "",
    channel: str = "",
    recipient: str = "",
    subject: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    finished: tuple[datetime, datetime] | None = None,
    after: int | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Deliveries (the list's columns, no message bodies) newest id first, at most
    ``limit``: filtered by each non-empty field (``state`` "overdue": pending and due more
    than OVERDUE_AFTER before ``now``), due time in [``start``, ``end``), outcome recorded
    in ``finished`` and still their state (as ``finished_counts`` counts them), and ids
    below ``after`` (keyset paging: ids only grow)."""
    c = deliveries.c
    q = sa.select(
        c.id, c.rule, c.step, c.occurrence, c.subject, c.recipient, c.channel, c.state,
        c.reason, c.due_at, c.sent_at, c.title, c.attempts, c.category,
    )  # fmt: skip
    if state == "overdue":
        q = q.where(c.state == "pending", c.due_at < now - OVERDUE_AFTER)
    elif state:
        q = q.where(c.state == state)
    for col, val in (
        (c.rule, rule),
        (c.channel, channel),
        (c.recipient, recipient),
        (c.subject, subject),
    ):
        if val:
            q = q.where(col == val)
    if start is not None:
        q = q.where(c.due_at >= start)
    if end is not None:
        q = q.where(c.due_at < end)
    if finished is not None:
        q = q.where(_finished_in(*finished))
    if after is not None:
        q = q.where(c.id < after)
    q = q.order_by(c.id.desc()).limit(limit)
    return _rows(conn, q)


def attempt_totals(conn: Connection, ids: Sequence[int]) -> dict[int, int]:
    """Every attempt the log records for each of ``ids`` (a delivery's ``attempts`` counter
    starts again at each retry; the log keeps them all), absent when none. One grouped read
    by ix_delivery_log_delivery_id; callers pass a page's ids."""
    if not ids:
        return {}
    log = delivery_log.c
    q = (
        sa.select(log.delivery_id, sa.func.count())
        .where(log.delivery_id.in_(sorted(set(ids))), log.kind == "attempt")
        .group_by(log.delivery_id)
    )
    return {int(i): int(n) for i, n in conn.execute(q)}


def sibling_deliveries(
    conn: Connection, row: dict[str, Any], limit: int = 20
) -> list[dict[str, Any]]:
    """The same delivery as ``row`` (rule, step, occurrence, subject, recipient) on the
    other channels (several channels, fallback), by id, at most ``limit``."""
    c = deliveries.c
    q = (
        sa.select(c.id, c.channel, c.state, c.reason, c.due_at, c.sent_at, c.attempts)
        .where(
            c.rule == row["rule"],
            c.step == row["step"],
            c.occurrence == row["occurrence"],
            c.subject == row["subject"],
            c.recipient == row["recipient"],
            c.id != row["id"],
        )
        .order_by(c.id)
        .limit(limit)
    )
    return _rows(conn, q)


def delivery_html_part(conn: Connection, did: int) -> str | None:
    """The stored HTML part of delivery ``did`` (None: no such delivery, or no HTML)."""
    return conn.execute(
        sa.select(deliveries.c.body_html).where(deliveries.c.id == did)
    ).scalar_one_or_none()


# --------------------------------------------------------------------------- rules


def next_pending_of_rule(conn: Connection, rule: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` pending deliveries of ``rule`` by (due_at, id): id, step,
    subject, recipient, channel, due_at."""
    q = (
        sa.select(
            deliveries.c.id,
            deliveries.c.step,
            deliveries.c.subject,
            deliveries.c.recipient,
            deliveries.c.channel,
            deliveries.c.due_at,
        )
        .where(deliveries.c.state == "pending", deliveries.c.rule == rule)
        .order_by(deliveries.c.due_at, deliveries.c.id)
        .limit(limit)
    )
    return _rows(conn, q)
