"""Dispatch: claiming due deliveries, leases, recording results, holds and gaps.

The queries of :class:`DeliveryQueries` are part of :class:`duly.store.store.Store`. Where
SQLite and PostgreSQL differ (row locking for claims: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, the write lock on SQLite) the difference is in this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from duly.core.planner import Identity
from duly.store.rows import (
    DeliveryRow,
    StoreBase,
    _chunks,
    _group_by_keys,
    claimed_rows,
    instants,
)
from duly.store.tables import UTCDateTime, deliveries

__all__ = ["DeliveryQueries"]

# The columns a claim hands back (``_take``), in this order.
_CLAIMED = (
    "id",
    "rule",
    "step",
    "occurrence",
    "subject",
    "recipient",
    "channel",
    "category",
    "priority",
    "planned_at",
    "due_at",
    "deadline_at",
    "attempts",
    "changes",
    "message_id",
)
# Columns whose values reach the driver as they are (no type processing on either dialect)
# and instants (``UTCDateTime``): what ``finish`` writes straight through the driver.
_TIMES = frozenset(c.name for c in deliveries.c if isinstance(c.type, UTCDateTime))
_PLAIN = frozenset(c.name for c in deliveries.c if isinstance(c.type, (String, Integer)))


class DeliveryQueries(StoreBase):
    """Claims, leases, finishing, holds and gaps (what the dispatcher asks); operator
    actions on one delivery."""

    # ------------------------------------------------------------------ dispatch

    def next_due(self, conn: Connection) -> datetime | None:
        """The earliest time the dispatcher has work: a pending row's due time or an
        expiring lease of a claimed row."""
        a = conn.execute(
            select(func.min(deliveries.c.due_at)).where(deliveries.c.state == "pending")
        ).scalar()
        b = conn.execute(
            select(func.min(deliveries.c.lease_until)).where(deliveries.c.state == "sending")
        ).scalar()
        vals = [v for v in (a, b) if v is not None]
        return min(vals) if vals else None

    def claim_due(
        self,
        conn: Connection,
        now: datetime,
        owner: str,
        lease: timedelta,
        limit: int,
        levels: Sequence[int] = (),
    ) -> list[DeliveryRow]:
        """Atomically take up to ``limit`` due rows: pending ones due by ``now``, and claimed
        ones whose lease expired (their worker died). Higher priority first, then by due
        time (spec: Priority). On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets any number of
        workers claim side by side; on SQLite the write transaction is exclusive.

        ``levels`` are the priorities the rules give rows. Each is read with its own range
        scan of ``ix_deliveries_state_priority_due`` — one ORDER BY priority, due_at over
        all due rows would sort the whole backlog on every claim. Expired leases are read
        first, so a backlog never holds back a dead worker's rows; rows of any other level
        (rules changed since they were planned) last.
        """
        if self.postgres:
            # Fresh after a large import, the statistics still say "a few rows", and the
            # planner then reads every due row of a level and sorts them (60 ms per claim
            # at 90,000 due rows, spilling to disk) instead of walking the index in order.
            # A full sort is never the right plan for these LIMIT queries: forbid it, for
            # this transaction only.
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
        # Expired leases first, whatever the backlog: a dead worker's rows are the most
        # overdue, and few rows are ever 'sending' (the state prefix of
        # ix_deliveries_state_due finds them).
        q = (
            select(deliveries.c.id, deliveries.c.lease_owner)
            .where(deliveries.c.state == "sending", deliveries.c.lease_until <= now)
            .order_by(deliveries.c.priority.desc(), deliveries.c.due_at, deliveries.c.id)
            .limit(limit)
        )
        if self.postgres:
            q = q.with_for_update(skip_locked=True)
        expired = {r.id: r.lease_owner for r in conn.execute(q)}
        ids: list[int] = list(expired)
        for p in sorted(set(levels), reverse=True):
            need = limit - len(ids)
            if need <= 0:
                break
            q = (
                select(deliveries.c.id)
                .where(
                    deliveries.c.state == "pending",
                    deliveries.c.priority == p,
                    deliveries.c.due_at <= now,
                )
                .order_by(deliveries.c.due_at, deliveries.c.id)
                .limit(need)
            )
            if self.postgres:
                q = q.with_for_update(skip_locked=True)
            ids += conn.execute(q).scalars()
        if len(ids) < limit:
            other = and_(deliveries.c.state == "pending", deliveries.c.due_at <= now)
            if levels:
                other = and_(other, deliveries.c.priority.not_in(sorted(set(levels))))
            q = (
                select(deliveries.c.id)
                .where(other)
                .order_by(deliveries.c.priority.desc(), deliveries.c.due_at, deliveries.c.id)
                .limit(limit - len(ids))
            )
            if self.postgres:
                q = q.with_for_update(skip_locked=True)
            ids += conn.execute(q).scalars()
        rows = self._take(conn, ids, now, owner, lease)
        if expired:
            self._record_unknown(conn, [r for r in rows if r.id in expired], expired, now)
        return rows

    def _record_unknown(
        self,
        conn: Connection,
        rows: list[DeliveryRow],
        owners: dict[int, str | None],
        now: datetime,
    ) -> None:
        """Rows retaken after their lease expired in state ``sending``: see
        ``_log_unknown``. Each row is marked ``retaken`` with its ``attempts`` counted."""
        for r in rows:
            r.retaken = True
            r.attempts += 1
        self._log_unknown(
            conn, [(r.id, r.attempts, r.message_id, owners.get(r.id)) for r in rows], now
        )

    def _log_unknown(
        self,
        conn: Connection,
        items: Sequence[tuple[int, int, str | None, str | None]],
        now: datetime,
    ) -> None:
        """For each (id, attempt, Message-ID, previous owner): the process that held the row
        stopped (or lost the database) before recording what its send did, so the message
        may have gone out. Its history gets an attempt with outcome ``unknown``, counted in
        ``attempts``; a resend keeps the delivery's Message-ID."""
        logs = []
        for did, attempt, message_id, owner in items:
            error = (
                f"outcome unknown: {owner or 'another process'} stopped (or lost the "
                "database) while sending; the message may have gone out, and a resend keeps "
                "its Message-ID"
            )
            logs.append(
                {
                    "delivery_id": did,
                    "at": now,
                    "kind": "attempt",
                    "outcome": "unknown",
                    "attempt": attempt,
                    "error": error,
                    "message_id": message_id,
                }
            )
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == did)
                .values(attempts=attempt, last_error=error)
            )
        self.log(conn, logs)

    def record_unknown(self, conn: Connection, did: int, owner: str | None, now: datetime) -> None:
        """One row left ``sending`` past its lease, taken in hand by an operator: its last
        send is recorded as an attempt of unknown outcome (see ``_log_unknown``), and its
        claim is cleared."""
        r = conn.execute(
            select(deliveries.c.attempts, deliveries.c.message_id).where(deliveries.c.id == did)
        ).one()
        self._log_unknown(conn, [(did, r.attempts + 1, r.message_id, owner)], now)
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == did)
            .values(lease_owner=None, lease_until=None)
        )

    def renew_leases(
        self, conn: Connection, owner: str, ids: Sequence[int], now: datetime, lease: timedelta
    ) -> int:
        """Extend to ``now + lease`` the lease of each of ``ids`` that ``owner`` still holds
        in state ``sending``: a worker alive and sending keeps its rows, however slow the
        provider. A row another process retook is left alone. Returns the number renewed."""
        n = 0
        for chunk in _chunks(list(ids), 500):
            res = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id.in_(list(chunk)),
                    deliveries.c.lease_owner == owner,
                    deliveries.c.state == "sending",
                )
                .values(lease_until=now + lease)
            )
            n += max(res.rowcount or 0, 0)
        return n

    def release(self, conn: Connection, ids: Sequence[int], owner: str, now: datetime) -> int:
        """Give back rows ``owner`` claimed but did not send (a stop in the middle of a
        batch): pending again, due as they were, no attempt spent."""
        if not ids:
            return 0
        res = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id.in_(list(ids)),
                deliveries.c.lease_owner == owner,
                deliveries.c.state == "sending",
            )
            .values(state="pending", lease_owner=None, lease_until=None, updated_at=now)
        )
        return max(res.rowcount or 0, 0)

    def lease_owners(self, conn: Connection, now: datetime) -> set[str]:
        """The owners of rows in state ``sending`` whose lease still runs."""
        q = (
            select(deliveries.c.lease_owner)
            .where(deliveries.c.state == "sending", deliveries.c.lease_until > now)
            .distinct()
        )
        return {o for o in conn.execute(q).scalars() if o}

    def expire_leases(self, conn: Connection, owners: Sequence[str], now: datetime) -> int:
        """End now the leases of rows held by ``owners`` (processes known to be dead): they
        are retaken at once instead of when their lease would have run out."""
        if not owners:
            return 0
        res = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.state == "sending",
                deliveries.c.lease_owner.in_(list(owners)),
                deliveries.c.lease_until > now,
            )
            .values(lease_until=now)
        )
        return max(res.rowcount or 0, 0)

    def claim_batch(
        self,
        conn: Connection,
        identity: Identity,
        until: datetime,
        now: datetime,
        owner: str,
        lease: timedelta,
    ) -> list[DeliveryRow]:
        """Take the pending rows that go out in one batched message with a claimed row:
        same rule, step, recipient and channel, due before ``until`` (spec: Batch)."""
        rule, step, _, _, rcp, ch = identity.db_key()
        q = select(deliveries.c.id).where(
            deliveries.c.rule == rule,
            deliveries.c.step == step,
            deliveries.c.recipient == rcp,
            deliveries.c.channel == ch,
            deliveries.c.state == "pending",
            deliveries.c.due_at < until,
        )
        if self.postgres:
            q = q.with_for_update(skip_locked=True)
        return self._take(conn, list(conn.execute(q).scalars()), now, owner, lease)

    def _take(
        self, conn: Connection, ids: list[int], now: datetime, owner: str, lease: timedelta
    ) -> list[DeliveryRow]:
        """Mark rows claimed by ``owner`` until ``now + lease``. The ids come from a select
        in this same transaction that locked them (FOR UPDATE SKIP LOCKED on PostgreSQL; the
        write lock on SQLite), so no other process can have taken them in between. (A state
        condition here would also make SQLite leave the primary key for a slower index.)"""
        if not ids:
            return []
        # Straight through the driver: SQLAlchemy's expanding IN and per-value processing
        # cost more than the statement. The same UPDATE … RETURNING it would send; values
        # bound and read back as ``tables.UTCDateTime`` and ``JSON`` do (``_raw_results``).
        ph = "%s" if self.postgres else "?"
        instant = instants(not self.postgres)
        out = []
        for chunk in _chunks(ids, 500):
            ids_in, id_params = self._ids_in(chunk)
            sql = (
                f"UPDATE deliveries SET state = {ph}, lease_owner = {ph}, lease_until = {ph}, "
                f"updated_at = {ph} WHERE deliveries.id {ids_in} "
                f"RETURNING {', '.join(f'deliveries.{c}' for c in _CLAIMED)}"
            )
            params = ("sending", owner, instant(now + lease), instant(now), *id_params)
            out += conn.exec_driver_sql(sql, params).fetchall()
        return claimed_rows(_raw_results(conn, out), now, lease)

    def _ids_in(self, ids: Sequence[int]) -> tuple[str, tuple[Any, ...]]:
        """``IN (?, ?, …)`` with its parameters; on PostgreSQL ``= ANY(%s)`` with one array,
        which PostgreSQL makes of an IN list anyway (the same plan), and whose text stays
        the same for any number of ids, so psycopg converts it once, not on every claim."""
        if self.postgres:
            return "= ANY(%s)", (list(ids),)
        return f"IN ({', '.join(['?'] * len(ids))})", tuple(ids)

    def finish(self, conn: Connection, updates: Sequence[dict[str, Any]], owner: str) -> set[int]:
        """Record the results of claimed rows. Each update names ``_id`` and the columns to
        set; only rows still claimed by ``owner`` are written ("another process got there
        first" otherwise: its lease expired and another worker retook the row). Returns the
        ids written, so the caller can tell which outcomes were refused."""
        if not updates:
            return set()
        # The statements SQLAlchemy would send, straight through the driver (one SELECT of
        # the rows still held, then one executemany UPDATE per set of columns, each
        # guarded by owner and state): its per-value processing cost more than the writes.
        # Values are bound as ``tables.UTCDateTime`` binds them; a column of any other
        # type (JSON) goes through SQLAlchemy as before.
        ph = "%s" if self.postgres else "?"
        lock = " FOR UPDATE" if self.postgres else ""
        want = [u["_id"] for u in updates]
        held: set[int] = set()
        for chunk in _chunks(want, 500):
            ids_in, id_params = self._ids_in(chunk)
            sql = (
                f"SELECT deliveries.id FROM deliveries WHERE deliveries.id {ids_in} "
                f"AND deliveries.lease_owner = {ph} AND deliveries.state = {ph}{lock}"
            )
            params = (*id_params, owner, "sending")
            held.update(r[0] for r in conn.exec_driver_sql(sql, params))
        mine = [u for u in updates if u["_id"] in held]
        instant = instants(not self.postgres)
        for group in _group_by_keys(mine):
            cols = [k for k in group[0] if k != "_id"]
            if not all(c in _PLAIN or c in _TIMES for c in cols):
                stmt = (
                    update(deliveries)
                    .where(
                        deliveries.c.id == bindparam("_id"),
                        deliveries.c.lease_owner == bindparam("_owner"),
                        deliveries.c.state == "sending",
                    )
                    .values({k: bindparam(k) for k in cols})
                )
                conn.execute(stmt, [{**u, "_owner": owner} for u in group])
                continue
            sets = ", ".join(f'"{c}" = {ph}' for c in cols)
            sql = (
                f"UPDATE deliveries SET {sets} WHERE deliveries.id = {ph} "
                f"AND deliveries.lease_owner = {ph} AND deliveries.state = {ph}"
            )
            times = [c in _TIMES for c in cols]
            data = [
                (
                    *[instant(u[c]) if t else u[c] for c, t in zip(cols, times, strict=True)],
                    u["_id"],
                    owner,
                    "sending",
                )
                for u in group
            ]
            conn.exec_driver_sql(sql, data)
        return held

    def _same_stream(self, ident: Identity) -> Any:
        rule, _, _, subj, rcp, ch = ident.db_key()
        return and_(
            deliveries.c.rule == rule,
            deliveries.c.subject == subj,
            deliveries.c.recipient == rcp,
            deliveries.c.channel == ch,
        )

    def later_pending(self, conn: Connection, ident: Identity, planned: datetime, did: int) -> bool:
        """Is another pending row of the same rule, subject, recipient and channel planned
        later than this one? (A hold keeps only the latest.)"""
        q = (
            select(deliveries.c.id)
            .where(
                self._same_stream(ident),
                deliveries.c.state.in_(("pending", "sending")),
                deliveries.c.id != did,
                or_(
                    deliveries.c.planned_at > planned,
                    and_(deliveries.c.planned_at == planned, deliveries.c.id > did),
                ),
            )
            .limit(1)
        )
        return conn.execute(q).first() is not None

    def skip_held(
        self,
        conn: Connection,
        ident: Identity,
        planned: datetime,
        did: int,
        until: datetime,
        now: datetime,
    ) -> int:
        """Skip (``held``) the pending rows of the same stream planned before this one and
        due by the end of the hold: only the latest goes out when it ends."""
        cond = and_(
            self._same_stream(ident),
            deliveries.c.state == "pending",
            deliveries.c.id != did,
            deliveries.c.due_at <= until,
            or_(
                deliveries.c.planned_at < planned,
                and_(deliveries.c.planned_at == planned, deliveries.c.id < did),
            ),
        )
        rows = conn.execute(
            update(deliveries)
            .where(cond)
            .values(state="skipped", reason="held", updated_at=now)
            .returning(deliveries.c.id, deliveries.c.planned_at)
        ).all()
        if not rows:
            return 0
        self.log(
            conn,
            [
                {
                    "delivery_id": i,
                    "at": now,
                    "kind": "outcome",
                    "outcome": "skipped",
                    "reason": "held",
                    "planned_at": p,
                }
                for i, p in rows
            ],
        )
        return len(rows)

    def last_sent(
        self, conn: Connection, rule: str, subject: str, recipient: str, channel: str
    ) -> datetime | None:
        """When this rule last sent to this recipient on this channel about this subject
        (min_gap)."""
        return conn.execute(
            select(func.max(deliveries.c.sent_at)).where(
                deliveries.c.recipient == recipient,
                deliveries.c.rule == rule,
                deliveries.c.subject == subject,
                deliveries.c.channel == channel,
                deliveries.c.state == "sent",
            )
        ).scalar()

    # ------------------------------------------------------------------ operator actions

    def delivery_for_decision(self, conn: Connection, did: int) -> dict[str, Any] | None:
        """Delivery ``did``'s row (every column), or None when there is none. On PostgreSQL
        it is locked until the caller's transaction ends: an operator's action is decided on
        this state, and no claim may slip in between."""
        q = select(deliveries).where(deliveries.c.id == did)
        if self.postgres:
            q = q.with_for_update()
        row = conn.execute(q).mappings().first()
        return dict(row) if row is not None else None

    def make_due_now(self, conn: Connection, did: int, now: datetime) -> None:
        """Delivery ``did`` is due at ``now``; its planned time and state are kept (the
        caller checked it is pending)."""
        conn.execute(
            update(deliveries).where(deliveries.c.id == did).values(due_at=now, updated_at=now)
        )

    def reset_for_retry(self, conn: Connection, did: int, now: datetime) -> None:
        """Delivery ``did`` is pending again, due at ``now``, with no reason, its attempts
        counted from zero and no claim (whatever its state: the caller decided)."""
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == did)
            .values(
                state="pending",
                reason=None,
                due_at=now,
                attempts=0,
                updated_at=now,
                lease_owner=None,
                lease_until=None,
            )
        )


def _raw_results(conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of ``_CLAIMED`` read through the driver, as SQLAlchemy's result processing of
    those columns gives them (aware UTC instants, JSON parsed): its own processors, taken
    from the table's types for this dialect."""
    dialect = conn.dialect
    procs = [
        (i, p)
        for i, c in enumerate(_CLAIMED)
        if (p := deliveries.c[c].type._cached_result_processor(dialect, None)) is not None
    ]
    out = []
    for r in rows:
        vals = list(r)
        for i, p in procs:
            vals[i] = p(vals[i])
        out.append(dict(zip(_CLAIMED, vals, strict=True)))
    return out
