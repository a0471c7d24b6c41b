"""Delivery receipts (what providers said after accepting a message) and inbound messages.

Receipts are found by the provider's message id, the ``Receipt.provider_id`` the dispatcher
stores in ``deliveries.receipt`` when a channel accepts a message. Every function takes an
open connection inside the caller's transaction; duly.engine.receipts decides what a
receipt changes (suppressions, consent, webhooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from duly.core.model import Recipient
from duly.store.db import Connection
from duly.store.rows import _recipient_from_row
from duly.store.tables import deliveries, delivery_receipts, inbound_addresses, recipients

__all__ = [
    "RECEIPT_STATUSES",
    "RecordedReceipt",
    "deliveries_with_provider_id",
    "latest_provider_id",
    "match_unmatched",
    "last_inbound",
    "note_inbound",
    "receipt_counts",
    "receipts_of",
    "recipients_with_number",
    "recipients_with_phone",
    "record_receipt",
]

RECEIPT_STATUSES = ("accepted", "delivered", "read", "undelivered", "bounced", "complained")
_DETAIL_MAX = 2000

# What a receipt needs to know of the deliveries it is about.
_DELIVERY_COLUMNS = (
    deliveries.c.id,
    deliveries.c.rule,
    deliveries.c.step,
    deliveries.c.occurrence,
    deliveries.c.subject,
    deliveries.c.recipient,
    deliveries.c.channel,
    deliveries.c.category,
    deliveries.c.state,
    deliveries.c.attempts,
    deliveries.c.to_address,
    deliveries.c.sent_at,
)


@dataclass(frozen=True, slots=True)
class RecordedReceipt:
    """What :func:`record_receipt` did: ``new`` (False: the same receipt was already
    recorded, nothing written) and the deliveries the provider message id names (empty:
    unmatched), each a dict of the delivery's identity, category, state, address."""

    new: bool
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def deliveries_with_provider_id(conn: Connection, provider_message_id: str) -> list[dict[str, Any]]:
    """The deliveries whose channel accepted them under ``provider_message_id`` (a batched
    message: several), by id; empty when none (an unknown or foreign id)."""
    if not provider_message_id:
        return []
    q = (
        sa.select(*_DELIVERY_COLUMNS)
        .where(deliveries.c.receipt == provider_message_id)
        .order_by(deliveries.c.id)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def latest_provider_id(
    conn: Connection,
    *,
    rule: str,
    subject: str,
    recipient: str,
    channel: str,
    step: str | None = None,
) -> str | None:
    """The provider message id of the latest sent delivery (highest ``sent_at``, then id) of
    this rule, subject (``KIND/KEY``), recipient and channel (and step, when given); None
    when there is none (nothing sent, or the channel gave no id)."""
    q = (
        sa.select(deliveries.c.receipt)
        .where(
            deliveries.c.rule == rule,
            deliveries.c.subject == subject,
            deliveries.c.recipient == recipient,
            deliveries.c.channel == channel,
            deliveries.c.state == "sent",
            deliveries.c.receipt.is_not(None),
        )
        .order_by(deliveries.c.sent_at.desc(), deliveries.c.id.desc())
        .limit(1)
    )
    if step is not None:
        q = q.where(deliveries.c.step == step)
    return conn.execute(q).scalar()  # type: ignore[no-any-return]


def record_receipt(
    conn: Connection,
    *,
    provider: str,
    provider_message_id: str,
    status: str,
    hard: bool,
    occurred_at: datetime | None,
    received_at: datetime,
    detail: str | None = None,
) -> RecordedReceipt:
    """Record one receipt, idempotently: a receipt with the same (provider, provider message
    id, status, occurred_at) is recorded once (a later copy returns ``new=False`` and writes
    nothing; two concurrent copies: the unique constraint keeps one, the other is treated as
    a copy). ``occurred_at`` None (the provider gives no time): one receipt per (provider,
    message id, status), stored as occurring at ``received_at``. An id no delivery has is
    recorded with no delivery (unmatched), never an error. Raises ValueError for a status
    outside :data:`RECEIPT_STATUSES`."""
    if status not in RECEIPT_STATUSES:
        raise ValueError(f"unknown receipt status {status!r}")
    pmid = provider_message_id[:200]
    matched = deliveries_with_provider_id(conn, pmid)
    key = (
        (delivery_receipts.c.provider == provider)
        & (delivery_receipts.c.provider_message_id == pmid)
        & (delivery_receipts.c.status == status)
    )
    if occurred_at is not None:
        key = key & (delivery_receipts.c.occurred_at == occurred_at)
    if conn.execute(sa.select(delivery_receipts.c.id).where(key)).first() is not None:
        return RecordedReceipt(False, matched)
    row = {
        "delivery_id": matched[0]["id"] if matched else None,
        "provider": provider[:32],
        "provider_message_id": pmid,
        "status": status,
        "hard": bool(hard),
        "occurred_at": occurred_at or received_at,
        "received_at": received_at,
        "detail": detail[:_DETAIL_MAX] if detail else None,
    }
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(delivery_receipts).values(**row))
    except sa.exc.IntegrityError:  # a concurrent copy won
        return RecordedReceipt(False, matched)
    return RecordedReceipt(True, matched)


# How long an unmatched receipt waits for its send to be recorded (the race is of a few
# milliseconds; a send is recorded at the latest when its lease runs out).
PENDING_MATCH = timedelta(days=1)


def match_unmatched(
    conn: Connection, provider_message_ids: list[str], now: datetime
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Attach the unmatched receipts (received since ``now`` - :data:`PENDING_MATCH`) under
    ``provider_message_ids`` to the deliveries that now carry those ids: each receipt is
    attached once (a conditional UPDATE: two processes never both attach it). Returns
    (receipt, its deliveries) for each receipt attached here, in the order things happened;
    each receipt a dict of provider, provider_message_id, status, hard, occurred_at,
    detail."""
    ids = sorted({p[:200] for p in provider_message_ids if p})
    if not ids:
        return []
    q = (
        sa.select(
            delivery_receipts.c.id,
            delivery_receipts.c.provider,
            delivery_receipts.c.provider_message_id,
            delivery_receipts.c.status,
            delivery_receipts.c.hard,
            delivery_receipts.c.occurred_at,
            delivery_receipts.c.detail,
        )
        .where(
            delivery_receipts.c.delivery_id.is_(None),
            delivery_receipts.c.received_at >= now - PENDING_MATCH,
            delivery_receipts.c.provider_message_id.in_(ids),
        )
        .order_by(delivery_receipts.c.occurred_at, delivery_receipts.c.id)
    )
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    found: dict[str, list[dict[str, Any]]] = {}
    for rec in [dict(r) for r in conn.execute(q).mappings()]:
        pmid = rec["provider_message_id"]
        if pmid not in found:
            found[pmid] = deliveries_with_provider_id(conn, pmid)
        matched = found[pmid]
        if not matched:
            continue
        res = conn.execute(
            sa.update(delivery_receipts)
            .where(delivery_receipts.c.id == rec["id"], delivery_receipts.c.delivery_id.is_(None))
            .values(delivery_id=matched[0]["id"])
        )
        if res.rowcount:
            out.append((rec, matched))
    return out


def receipts_of(conn: Connection, delivery_id: int) -> list[dict[str, Any]]:
    """The receipts of delivery ``delivery_id`` in the order things happened (``occurred_at``,
    then arrival), whatever order the callbacks came in: those recorded for it and those
    under its provider message id (a message batched with others, a callback that came
    before the send was recorded). Each: status, hard, provider, provider_message_id,
    occurred_at, received_at, detail. Empty for an unknown delivery."""
    pmid = conn.execute(
        sa.select(deliveries.c.receipt).where(deliveries.c.id == delivery_id)
    ).scalar()
    cond = delivery_receipts.c.delivery_id == delivery_id
    if pmid:
        cond = cond | (delivery_receipts.c.provider_message_id == pmid)
    q = (
        sa.select(
            delivery_receipts.c.status,
            delivery_receipts.c.hard,
            delivery_receipts.c.provider,
            delivery_receipts.c.provider_message_id,
            delivery_receipts.c.occurred_at,
            delivery_receipts.c.received_at,
            delivery_receipts.c.detail,
        )
        .where(cond)
        .order_by(delivery_receipts.c.occurred_at, delivery_receipts.c.id)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def receipt_counts(
    conn: Connection, since: datetime | None = None, until: datetime | None = None
) -> dict[str, int]:
    """Receipts recorded (received) in [``since``, ``until``) (None: unbounded), by status,
    every status present (0 when none), plus ``unmatched``: those no delivery had the
    message id of (also counted under their status)."""
    cond = sa.true()
    if since is not None:
        cond = cond & (delivery_receipts.c.received_at >= since)
    if until is not None:
        cond = cond & (delivery_receipts.c.received_at < until)
    q = (
        sa.select(delivery_receipts.c.status, sa.func.count())
        .where(cond)
        .group_by(delivery_receipts.c.status)
    )
    u = (
        sa.select(sa.func.count())
        .select_from(delivery_receipts)
        .where(cond, delivery_receipts.c.delivery_id.is_(None))
    )
    out = dict.fromkeys(RECEIPT_STATUSES, 0)
    for status, n in conn.execute(q):
        out[status] = int(n)
    out["unmatched"] = int(conn.execute(u).scalar() or 0)
    return out


# --------------------------------------------------------------------------- inbound


def note_inbound(conn: Connection, address: str, channel: str, at: datetime) -> bool:
    """Remember that ``address`` wrote in on ``channel`` at ``at`` (the latest time wins;
    an older message arriving late changes nothing). Idempotent. Returns whether ``at`` is
    the latest time known (False: a message from before one already noted)."""
    addr = address.strip().lower()[:320]
    res = conn.execute(
        sa.update(inbound_addresses)
        .where(
            inbound_addresses.c.address == addr,
            inbound_addresses.c.channel == channel,
            inbound_addresses.c.last_at < at,
        )
        .values(last_at=at)
    )
    if res.rowcount:
        return True
    have = conn.execute(
        sa.select(inbound_addresses.c.last_at).where(
            inbound_addresses.c.address == addr, inbound_addresses.c.channel == channel
        )
    ).first()
    if have is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(inbound_addresses).values(address=addr, channel=channel, last_at=at)
                )
        except sa.exc.IntegrityError:  # a concurrent message inserted it
            pass
        return True
    last = have[0] if have[0].tzinfo else have[0].replace(tzinfo=UTC)
    return bool(last <= at)


def last_inbound(conn: Connection, address: str, channel: str | None = None) -> datetime | None:
    """When ``address`` (any case) last wrote in, on ``channel`` or (None) on any channel;
    None when never."""
    q = sa.select(sa.func.max(inbound_addresses.c.last_at)).where(
        inbound_addresses.c.address == address.strip().lower()
    )
    if channel is not None:
        q = q.where(inbound_addresses.c.channel == channel)
    got = conn.execute(q).scalar()
    if got is not None and got.tzinfo is None:  # never naive, whatever the driver gives
        got = got.replace(tzinfo=UTC)
    return got  # type: ignore[no-any-return]


def recipients_with_phone(conn: Connection, phone: str) -> list[Recipient]:
    """The recipients whose ``phone`` is ``phone`` (exactly, E.164 as stored), by id."""
    if not phone:
        return []
    q = sa.select(recipients).where(recipients.c.phone == phone).order_by(recipients.c.id)
    return [_recipient_from_row(r) for r in conn.execute(q).mappings()]


def recipients_with_number(conn: Connection, number: str, channel: str) -> list[Recipient]:
    """The recipients who have ``number`` (E.164 as stored) as their ``phone`` or as their
    address for ``channel`` (``addresses.<channel>``, with or without ``whatsapp:``), by
    id; empty for an empty number."""
    if not number:
        return []
    addr = recipients.c.addresses[channel].as_string()
    q = (
        sa.select(recipients)
        .where((recipients.c.phone == number) | (addr == number) | (addr == "whatsapp:" + number))
        .order_by(recipients.c.id)
    )
    return [_recipient_from_row(r) for r in conn.execute(q).mappings()]
