"""Reading deliveries: listings, one delivery and its history, outcomes, counts.

The queries of :class:`ReadingQueries` are part of :class:`duly.store.store.Store`; with
:func:`outcome_stats` (what a schedule's ``{stats: PERIOD}`` collects) and
:func:`pending_gauges` (what ``/metrics`` reads at each scrape). None of them writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from duly.store.rows import StoreBase
from duly.store.tables import deliveries, delivery_log

__all__ = ["ReadingQueries", "outcome_stats", "pending_gauges"]

log = logging.getLogger(__name__)


class ReadingQueries(StoreBase):
    """Deliveries, their history and outcomes, read."""

    # ------------------------------------------------------------------ reading

    def outcomes(self, conn: Connection) -> list[dict[str, Any]]:
        """Every outcome recorded, with its delivery's identity (simulation output)."""
        return list(self.iter_outcomes(conn))

    def count_outcomes_after(self, conn: Connection, after_id: int) -> tuple[int, int]:
        """(outcomes recorded after log row ``after_id``, the id of the last of them): a
        simulation counts what each step added, by the primary key, not the whole log."""
        q = select(func.count(), func.max(delivery_log.c.id)).where(
            delivery_log.c.id > after_id, delivery_log.c.kind == "outcome"
        )
        n, last = conn.execute(q).one()
        return int(n or 0), int(last or after_id)

    def iter_outcomes(self, conn: Connection) -> Iterator[dict[str, Any]]:
        """:meth:`outcomes` one row at a time (a simulation keeps only what it shows)."""
        q = (
            select(
                delivery_log.c.at,
                delivery_log.c.outcome,
                delivery_log.c.reason,
                delivery_log.c.attempt,
                delivery_log.c.title,
                delivery_log.c.message_id,
                delivery_log.c.planned_at,
                deliveries.c.rule,
                deliveries.c.step,
                deliveries.c.occurrence,
                deliveries.c.subject,
                deliveries.c.recipient,
                deliveries.c.channel,
                deliveries.c.category,
                deliveries.c.changes,
            )
            .join(deliveries, deliveries.c.id == delivery_log.c.delivery_id)
            .where(delivery_log.c.kind == "outcome")
            .order_by(delivery_log.c.id)
        )
        for r in conn.execute(q).mappings():
            yield dict(r)

    def outbox(
        self,
        conn: Connection,
        channels: Sequence[str],
        limit: int = 50,
        delivery_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sent messages kept for reading (outbox channels), newest first."""
        q = select(deliveries).where(
            deliveries.c.state == "sent", deliveries.c.channel.in_(list(channels))
        )
        if delivery_id is not None:
            q = q.where(deliveries.c.id == delivery_id)
        q = q.order_by(deliveries.c.sent_at.desc(), deliveries.c.id.desc()).limit(limit)
        return [dict(r) for r in conn.execute(q).mappings()]

    def list_deliveries(
        self,
        conn: Connection,
        *,
        state: str | None = None,
        rule: str | None = None,
        subject: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Deliveries matching every given filter, newest id first; ``after_id`` continues a
        listing (cursor paging: ids only ever grow). ``from_``/``to`` bound the due time."""
        q = select(deliveries)
        for col, val in (
            (deliveries.c.state, state),
            (deliveries.c.rule, rule),
            (deliveries.c.subject, subject),
            (deliveries.c.recipient, recipient),
            (deliveries.c.channel, channel),
        ):
            if val is not None:
                q = q.where(col == val)
        if from_ is not None:
            q = q.where(deliveries.c.due_at >= from_)
        if to is not None:
            q = q.where(deliveries.c.due_at < to)
        if after_id is not None:
            q = q.where(deliveries.c.id < after_id)
        q = q.order_by(deliveries.c.id.desc()).limit(limit)
        return [dict(r) for r in conn.execute(q).mappings()]

    def delivery(self, conn: Connection, did: int) -> dict[str, Any] | None:
        """Delivery ``did``'s row, every column; None when there is none."""
        r = conn.execute(select(deliveries).where(deliveries.c.id == did)).mappings().first()
        return dict(r) if r is not None else None

    def delivery_history(self, conn: Connection, did: int) -> list[dict[str, Any]]:
        """Every attempt and outcome of one delivery, in order."""
        q = (
            select(delivery_log)
            .where(delivery_log.c.delivery_id == did)
            .order_by(delivery_log.c.id)
        )
        return [dict(r) for r in conn.execute(q).mappings()]

    def deliveries_of_subject(
        self, conn: Connection, ref: str, states: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """The subject's deliveries (only those in ``states`` if given), by due time."""
        q = (
            select(deliveries)
            .where(deliveries.c.subject == ref)
            .order_by(deliveries.c.due_at, deliveries.c.id)
        )
        if states:
            q = q.where(deliveries.c.state.in_(states))
        return [dict(r) for r in conn.execute(q).mappings()]

    def counts_by_state(self, conn: Connection) -> dict[str, int]:
        """How many deliveries are in each state (states with none are absent)."""
        q = select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
        return {s: n for s, n in conn.execute(q)}


# --------------------------------------------------------------------------- reads without a Store


def outcome_stats(conn: Connection, start: datetime, end: datetime) -> dict[str, Any]:
    """The outcomes recorded in [start, end), counted: ``total``, ``by_outcome``,
    ``by_reason`` (outcomes with a reason), ``by_rule`` (rule → outcome → count) and
    ``by_channel`` (rows with a channel), with ``from`` and ``to``. One grouped query."""
    q = (
        select(
            delivery_log.c.outcome,
            delivery_log.c.reason,
            deliveries.c.rule,
            deliveries.c.channel,
            func.count(),
        )
        .join(deliveries, deliveries.c.id == delivery_log.c.delivery_id)
        .where(
            delivery_log.c.kind == "outcome",
            delivery_log.c.at >= start,
            delivery_log.c.at < end,
        )
        .group_by(
            delivery_log.c.outcome, delivery_log.c.reason, deliveries.c.rule, deliveries.c.channel
        )
    )
    out: dict[str, Any] = {
        "from": start,
        "to": end,
        "total": 0,
        "by_outcome": {},
        "by_reason": {},
        "by_rule": {},
        "by_channel": {},
    }
    for outcome, reason, rule, channel, n in conn.execute(q):
        out["total"] += n
        out["by_outcome"][outcome] = out["by_outcome"].get(outcome, 0) + n
        if reason:
            out["by_reason"][reason] = out["by_reason"].get(reason, 0) + n
        r = out["by_rule"].setdefault(rule, {})
        r[outcome] = r.get(outcome, 0) + n
        if channel:
            out["by_channel"][channel] = out["by_channel"].get(channel, 0) + n
    return out


def pending_gauges(db: Engine, now: datetime) -> tuple[int, int] | None:
    """``(pending, backlog)``: the deliveries pending, and those of them due by ``now``.
    One count served by ix_deliveries_state_due (state, due_at), on a connection of its
    own (a scrape is its own read). None, logged, when the database cannot be read."""
    try:
        with db.connect() as conn:
            q = select(
                func.count(),
                func.coalesce(func.sum(case((deliveries.c.due_at <= now, 1), else_=0)), 0),
            ).where(deliveries.c.state == "pending")
            pending, backlog = (int(v) for v in conn.execute(q).one())
    except SQLAlchemyError:
        log.warning("metrics: cannot read the database", exc_info=True)
        return None
    return pending, backlog
