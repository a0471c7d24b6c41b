"""The queries behind the inbox (in-app notifications); :mod:`duly.engine.inbox` pages them,
formats them and streams them.

An inbox item is a delivery on one of the given ``channels`` (those of type ``inbox``) in
state ``sent``; ``inbox_reads`` says when its recipient read it (no row: unread). Every
function takes an open connection inside the caller's transaction and returns plain data:
an item is a dict with ``id``, ``recipient``, ``title``, ``body_text``, ``body_html``,
``sent_at``, ``rule``, ``subject``, ``category`` and ``read_at`` (None: unread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import deliveries, delivery_log, inbox_reads

__all__ = [
    "inbox_item",
    "inbox_page",
    "inbox_position",
    "inbox_sends_since",
    "mark_inbox_item_read",
    "unread_inbox_count",
]


def _columns() -> list[Any]:
    d = deliveries.c
    return [
        d.id,
        d.recipient,
        d.title,
        d.body_text,
        d.body_html,
        d.sent_at,
        d.rule,
        d.subject,
        d.category,
        inbox_reads.c.read_at,
    ]


def _items(channels: Sequence[str], recipient: str) -> Any:
    d = deliveries.c
    return (
        sa.select(*_columns())
        .select_from(
            deliveries.outerjoin(inbox_reads, inbox_reads.c.delivery_id == deliveries.c.id)
        )
        .where(d.recipient == recipient, d.channel.in_(channels), d.state == "sent")
    )


def inbox_page(
    conn: Connection,
    channels: Sequence[str],
    recipient: str,
    *,
    unread: bool = False,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """At most ``limit`` items of the recipient, newest first (by ``sent_at``, then id):
    only unread ones with ``unread``; with ``before=(sent_at, id)`` only those after that
    item in this order (keyset paging: stable while new items arrive)."""
    d = deliveries.c
    q = _items(channels, recipient)
    if unread:
        q = q.where(inbox_reads.c.read_at.is_(None))
    if before is not None:
        at, ident = before
        q = q.where(sa.or_(d.sent_at < at, sa.and_(d.sent_at == at, d.id < ident)))
    q = q.order_by(d.sent_at.desc(), d.id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def unread_inbox_count(conn: Connection, channels: Sequence[str], recipient: str) -> int:
    """How many items of the recipient have not been read."""
    d = deliveries.c
    q = (
        sa.select(sa.func.count())
        .select_from(
            deliveries.outerjoin(inbox_reads, inbox_reads.c.delivery_id == deliveries.c.id)
        )
        .where(
            d.recipient == recipient,
            d.channel.in_(channels),
            d.state == "sent",
            inbox_reads.c.read_at.is_(None),
        )
    )
    return int(conn.execute(q).scalar_one())


def inbox_item(
    conn: Connection, channels: Sequence[str], recipient: str, delivery_id: int
) -> dict[str, Any] | None:
    """The item ``delivery_id`` when it is an item of this recipient's inbox, else None."""
    r = (
        conn.execute(_items(channels, recipient).where(deliveries.c.id == delivery_id))
        .mappings()
        .first()
    )
    return dict(r) if r is not None else None


def mark_inbox_item_read(
    conn: Connection, channels: Sequence[str], recipient: str, delivery_id: int, now: datetime
) -> dict[str, Any] | None:
    """Mark the item read at ``now`` and return it as it now is; idempotent (the first read
    time is kept). None, and nothing written, when it is not an item of this recipient's
    inbox."""
    r = inbox_item(conn, channels, recipient, delivery_id)
    if r is None:
        return None
    if r["read_at"] is None:
        conn.execute(sa.insert(inbox_reads).values(delivery_id=delivery_id, read_at=now))
    return inbox_item(conn, channels, recipient, delivery_id)


def inbox_position(conn: Connection) -> int:
    """The current end of the inbox streams: the highest ``delivery_log`` id (0 if none)."""
    return int(conn.execute(sa.select(sa.func.max(delivery_log.c.id))).scalar() or 0)


def inbox_sends_since(
    conn: Connection,
    channels: Sequence[str],
    after: int,
    recipients: Iterable[str] | None,
    limit: int = 5000,
) -> list[dict[str, Any]]:
    """The items whose send was recorded in ``delivery_log`` after log id ``after`` (an
    ``outcome`` row with outcome ``sent``), oldest record first, at most ``limit``, for
    ``recipients`` (None: everyone); each item also carries its ``log_id``."""
    d, lg = deliveries.c, delivery_log.c
    q = (
        sa.select(lg.id.label("log_id"), *_columns())
        .select_from(
            delivery_log.join(deliveries, deliveries.c.id == lg.delivery_id).outerjoin(
                inbox_reads, inbox_reads.c.delivery_id == deliveries.c.id
            )
        )
        .where(
            lg.id > after,
            lg.kind == "outcome",
            lg.outcome == "sent",
            d.channel.in_(channels),
            d.state == "sent",
        )
        .order_by(lg.id)
        .limit(limit)
    )
    if recipients is not None:
        q = q.where(d.recipient.in_(sorted(recipients)))
    return [dict(r) for r in conn.execute(q).mappings()]
