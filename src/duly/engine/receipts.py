"""What happens when a provider reports on a message it accepted (delivery receipts) and
when someone writes in (inbound SMS / WhatsApp).

A receipt is recorded once (duly.store.receipts: duplicates are no-ops) and, the first time,
has its effects, in the transaction that records it:

- ``bounced`` with ``hard``, ``undelivered`` with ``hard`` (an invalid number, a landline,
  an unknown destination) and ``complained`` suppress the delivery's address, exactly as a
  synchronous permanent address failure does (the dispatcher's ``suppress``);
- ``complained`` also withdraws consent for the delivery's category (reminder or
  promotional; transactional cannot be opted out of), through ``set_consent``;
- ``delivered``, ``read``, ``undelivered``, ``bounced`` and ``complained`` queue the
  outgoing webhook ``delivery.<status>`` (``accepted`` queues nothing: ``delivery.sent``
  already said so).

An unknown provider message id is recorded unmatched and counted, never an error. A
callback can also arrive a few milliseconds before the dispatcher records the send it is
about (delivered before sent): when the send is recorded, :func:`apply_pending` attaches
such unmatched receipts to it and applies their effects then, once.

Inbound messages: ``STOP`` and its synonyms opt the sender's number out of the channel
(``consent.channels.<channel> = false``), ``START`` / ``YES`` / ``UNSTOP`` opt it back in;
every inbound message is remembered as the address's last inbound time (WhatsApp's
24-hour customer-service window).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from duly.core.model import Recipient
from duly.delivery import webhooks
from duly.delivery.preferences import set_consent
from duly.store import receipts as store
from duly.store.db import write_transaction

__all__ = [
    "OPT_IN_WORDS",
    "OPT_OUT_WORDS",
    "apply_pending",
    "withdraw_consent",
    "ReceiptEvent",
    "ReceiptResult",
    "inbound_message",
    "last_inbound_lookup",
    "record_receipts",
]

log = logging.getLogger("duly.receipts")

# Twilio's default opt-out and opt-in keywords (Advanced Opt-Out, "default keywords").
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
# The statuses an outgoing webhook reports (delivery.<status>).
WEBHOOK_STATUSES = frozenset({"delivered", "read", "undelivered", "bounced", "complained"})


@dataclass(frozen=True, slots=True)
class ReceiptEvent:
    """One provider report: the provider, its message id, a status of
    :data:`duly.store.receipts.RECEIPT_STATUSES`, ``hard`` (a permanent failure of the
    address), when it happened (None: when it arrived) and a short detail."""

    provider: str
    provider_message_id: str
    status: str
    hard: bool = False
    occurred_at: datetime | None = None
    detail: str | None = None


@dataclass(slots=True)
class ReceiptResult:
    recorded: int = 0
    duplicates: int = 0
    unmatched: int = 0


def record_receipts(engine: Any, events: list[ReceiptEvent], metrics: Any = None) -> ReceiptResult:
    """Record ``events`` in one transaction of the Engine ``engine`` and apply the effects of
    the new ones (module docstring). Returns the counts; ``metrics`` (duly.engine.metrics)
    counts each new receipt by status."""
    out = ReceiptResult()
    complaints: list[dict[str, Any]] = []
    counted: list[str] = []
    now = engine.clock.now()
    with write_transaction(engine.db) as conn:
        for ev in events:
            got = store.record_receipt(
                conn,
                provider=ev.provider,
                provider_message_id=ev.provider_message_id,
                status=ev.status,
                hard=ev.hard,
                occurred_at=ev.occurred_at,
                received_at=now,
                detail=ev.detail,
            )
            if not got.new:
                out.duplicates += 1
                continue
            out.recorded += 1
            counted.append(ev.status)
            if not got.deliveries:
                out.unmatched += 1
                counted.append("unmatched")
                log.info(
                    "%s receipt %s for unknown message %r",
                    ev.provider,
                    ev.status,
                    ev.provider_message_id,
                )
            for d in got.deliveries:
                _effects(engine, conn, d, ev, now)
                if ev.status == "complained":
                    complaints.append(d)
    if metrics is not None:
        for status in counted:
            metrics.receipt(status)
    withdraw_consent(engine, complaints)
    return out


def apply_pending(
    engine: Any, conn: Any, provider_message_ids: list[str], now: datetime
) -> list[dict[str, Any]]:
    """In the transaction recording sends accepted under ``provider_message_ids``: attach the
    receipts that arrived before (recorded unmatched) and apply their effects (suppression,
    webhooks), each once. Returns the deliveries complained about, for
    :func:`withdraw_consent` after the transaction."""
    complaints: list[dict[str, Any]] = []
    for rec, matched in store.match_unmatched(conn, provider_message_ids, now):
        ev = ReceiptEvent(
            provider=rec["provider"],
            provider_message_id=rec["provider_message_id"],
            status=rec["status"],
            hard=bool(rec["hard"]),
            occurred_at=rec["occurred_at"],
            detail=rec["detail"],
        )
        log.info("%s receipt %s applied once its send was recorded", ev.provider, ev.status)
        for d in matched:
            _effects(engine, conn, d, ev, now)
            if ev.status == "complained":
                complaints.append(d)
    return complaints


def _effects(engine: Any, conn: Any, d: dict[str, Any], ev: ReceiptEvent, now: datetime) -> None:
    """Suppression and webhook of one new receipt for delivery ``d``."""
    if ev.status == "complained" or (ev.status in ("bounced", "undelivered") and ev.hard):
        if d.get("to_address"):
            why = f"{ev.provider} reported {ev.status}" + (f": {ev.detail}" if ev.detail else "")
            engine.store.suppress(conn, d["to_address"], d["channel"], why, d["id"], now)
    if ev.status in WEBHOOK_STATUSES and engine.rules.webhooks:
        data = {
            "delivery": d["id"],
            "rule": d["rule"],
            "step": d["step"] or None,
            "subject": d["subject"] or None,
            "recipient": d["recipient"] or None,
            "channel": d["channel"] or None,
            "provider": ev.provider,
            "provider_message_id": ev.provider_message_id,
            "status": ev.status,
            "hard": ev.hard,
            "occurred_at": (ev.occurred_at or now).isoformat().replace("+00:00", "Z"),
            "detail": ev.detail,
        }
        webhooks.emit(conn, engine.rules, f"delivery.{ev.status}", data, now)


def withdraw_consent(engine: Any, complaints: list[dict[str, Any]]) -> None:
    """A complaint opts the recipient out of the delivery's category (after the receipt's
    transaction: ``set_consent`` writes through Engine.put_recipient, which re-plans)."""
    for d in complaints:
        category = d.get("category")
        if not d.get("recipient") or category not in ("reminder", "promotional"):
            continue
        with engine.db.connect() as conn:
            r = engine.store.get_recipients(conn, [d["recipient"]]).get(d["recipient"])
        if r is None:
            continue
        set_consent(engine, r, {**r.consent, category: False})


# --------------------------------------------------------------------------- inbound


def keyword_of(body: str) -> str | None:
    """``"out"`` for an opt-out keyword, ``"in"`` for an opt-in one (the whole message,
    any case, surrounding whitespace and punctuation ignored), else None."""
    word = (body or "").strip().strip(".!").strip().upper()
    if word in OPT_OUT_WORDS:
        return "out"
    if word in OPT_IN_WORDS:
        return "in"
    return None


def inbound_message(
    engine: Any, channel: str, phone: str, body: str, at: datetime | None = None
) -> tuple[str | None, list[str]]:
    """An inbound message from ``phone`` (E.164, no ``whatsapp:``) on channel ``channel``:
    remember it as the number's last inbound time and apply a STOP / START keyword to the
    recipients with that number as their ``phone`` or as their ``addresses.<channel>``. A
    keyword in a message older than one already noted from that number (a late or replayed
    STOP after a START) changes nothing. Returns (``"out"`` / ``"in"`` / None, the recipient
    ids whose consent changed)."""
    at = at or engine.clock.now()
    with write_transaction(engine.db) as conn:
        latest = store.note_inbound(conn, phone, channel, at)
        found = store.recipients_with_number(conn, phone, channel) if phone else []
    kind = keyword_of(body)
    changed: list[str] = []
    if kind is None or not latest:
        return None, changed
    for r in found:
        if _set_channel(engine, r, channel, kind == "in"):
            changed.append(r.id)
    log.info("inbound %s on %s: %d recipient(s) changed", kind, channel, len(changed))
    return kind, changed


def _set_channel(engine: Any, r: Recipient, channel: str, allowed: bool) -> bool:
    channels = dict((r.consent or {}).get("channels") or {})
    if channels.get(channel, True) is allowed:
        return False
    if allowed:
        channels.pop(channel, None)  # back to the default: allowed
    else:
        channels[channel] = False
    set_consent(engine, r, {**r.consent, "channels": channels})
    return True


def last_inbound_lookup(db: Any, channel: str | None = None) -> Any:
    """A ``last_inbound(address) -> datetime | None`` for the WhatsApp channels, read from
    the store (the address as the channel sends to it; ``whatsapp:`` is dropped)."""

    def last_inbound(address: str) -> datetime | None:
        addr = address[len("whatsapp:") :] if address.startswith("whatsapp:") else address
        try:
            with db.connect() as conn:
                return store.last_inbound(conn, addr, channel)
        except Exception:  # a missing answer means "send the template", never a failure
            log.warning("could not read the last inbound time of an address", exc_info=True)
            return None

    return last_inbound
