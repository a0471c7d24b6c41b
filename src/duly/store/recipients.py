"""Recipients, suppressed addresses and the counts rate limits read.

The queries of :class:`RecipientQueries` are part of :class:`duly.store.store.Store`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from duly.core.model import Recipient
from duly.core.validation import text_problem
from duly.store.driver import fetch, placeholders
from duly.store.rows import StoreBase, _chunks, _recipient_from_row, read_json
from duly.store.search import recipient_search_text
from duly.store.tables import deliveries, recipients, suppressions

__all__ = ["RecipientQueries"]

# built once: every upsert reads its recipients, and building the statement (with a literal
# IN list that SQLAlchemy renders per call) cost more than running it
_RECIPIENTS_BY_ID = select(recipients).where(recipients.c.id.in_(bindparam("ids", expanding=True)))
# ... and run at the driver (duly.store.driver) for the few ids of a single upsert
_FEW = 20
_RECIPIENT_COLS = ("id", "name", "email", "phone", "timezone", "locale", "addresses", "consent")
_BY_IDS = f"SELECT {', '.join(_RECIPIENT_COLS)} FROM recipients WHERE id IN "


class RecipientQueries(StoreBase):
    """Recipients, suppressions, sent counts."""

    # ------------------------------------------------------------------ recipients

    def put_recipient(self, conn: Connection, r: Recipient, now: datetime) -> bool:
        """Create or replace a recipient. Returns True when it was new."""
        values = {
            "name": r.name,
            "email": r.email,
            "phone": r.phone,
            "timezone": r.timezone,
            "locale": r.locale,
            "addresses": dict(r.addresses),
            "consent": dict(r.consent),
            "updated_at": now,
            "search": recipient_search_text(r.id, r.name, r.email, r.phone),
        }
        res = conn.execute(update(recipients).where(recipients.c.id == r.id).values(**values))
        if res.rowcount:
            return False
        conn.execute(insert(recipients).values(id=r.id, created_at=now, **values))
        return True

    def get_recipients(self, conn: Connection, ids: Iterable[str]) -> dict[str, Recipient]:
        """Recipients by id; unknown ids are absent from the result. An id no database can
        hold (a NUL, a lone surrogate: a subject stored by an older version may name one)
        is unknown, not an error."""
        wanted = sorted({i for i in ids if i and text_problem(i) is None})
        out: dict[str, Recipient] = {}
        if 0 < len(wanted) <= _FEW:
            sql = f"{_BY_IDS}({placeholders(self.postgres, len(wanted))})"
            for t in fetch(conn, sql, wanted):
                r = dict(zip(_RECIPIENT_COLS, t, strict=True))
                r["addresses"], r["consent"] = read_json(r["addresses"]), read_json(r["consent"])
                out[r["id"]] = _recipient_from_row(r)  # type: ignore[arg-type]
            return out
        for chunk in _chunks(wanted, 500):
            for r in conn.execute(_RECIPIENTS_BY_ID, {"ids": list(chunk)}).mappings():
                out[r["id"]] = _recipient_from_row(r)
        return out

    def delete_recipient(self, conn: Connection, rid: str) -> bool:
        """Delete recipient ``rid``. Returns False when there was none (idempotent)."""
        return bool(conn.execute(delete(recipients).where(recipients.c.id == rid)).rowcount)

    # ------------------------------------------------------------------ suppressions, limits

    def active_suppressions(self, conn: Connection, addresses: Iterable[str]) -> set[str]:
        """Which of these addresses (any case) are suppressed now."""
        wanted = sorted({a.lower() for a in addresses if a})
        out: set[str] = set()
        for chunk in _chunks(wanted, 500):
            q = select(suppressions.c.address).where(
                suppressions.c.address.in_(chunk), suppressions.c.cleared_at.is_(None)
            )
            out.update(conn.execute(q).scalars())
        return out

    def suppress(
        self,
        conn: Connection,
        address: str,
        channel: str,
        reason: str,
        delivery_id: int | None,
        now: datetime,
    ) -> None:
        """Suppress an address (once: an active suppression is not duplicated)."""
        addr = address.lower()
        if self.active_suppressions(conn, [addr]):
            return
        conn.execute(
            insert(suppressions).values(
                address=addr,
                channel=channel,
                reason=reason[:2000],
                delivery_id=delivery_id,
                created_at=now,
            )
        )

    def clear_suppression(self, conn: Connection, address: str, now: datetime) -> int:
        """Clear (at ``now``) the active suppressions of an address, any case; the rows are
        kept as history. Returns how many were cleared (0: none was active)."""
        return conn.execute(
            update(suppressions)
            .where(suppressions.c.address == address.lower(), suppressions.c.cleared_at.is_(None))
            .values(cleared_at=now)
        ).rowcount

    def list_suppressions(
        self, conn: Connection, *, active: bool = True, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Suppressions, newest first, at most ``limit``: only the active ones (not
        cleared) unless ``active`` is False."""
        q = select(suppressions).order_by(suppressions.c.id.desc()).limit(limit)
        if active:
            q = q.where(suppressions.c.cleared_at.is_(None))
        return [dict(r) for r in conn.execute(q).mappings()]

    def sent_count(self, conn: Connection, recipient: str, category: str, since: datetime) -> int:
        """Messages (a batched message counts once) of a category sent to a recipient
        since a time, on every channel: what rate limits count."""
        return int(
            conn.execute(
                select(func.count(func.distinct(deliveries.c.message_id))).where(
                    deliveries.c.recipient == recipient,
                    deliveries.c.category == category,
                    deliveries.c.state == "sent",
                    deliveries.c.sent_at > since,
                )
            ).scalar()
            or 0
        )
