"""The store contract: every query duly runs, named, in one place.

Each method takes an open ``Connection`` inside the caller's transaction (the service and
the dispatcher decide transaction boundaries), and states its guarantee in its docstring.
The same code runs on SQLite and PostgreSQL; where they differ (row locking for claims) the
difference is in this module only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from duly.model import Recipient, Subject
from duly.planner import Action, Existing, Identity, outcome_of
from duly.store.tables import (
    deliveries,
    delivery_log,
    events,
    recipients,
    reminders,
    subject_errors,
    subjects,
    suppressions,
)
from duly.validation import text_problem

__all__ = ["DeliveryRow", "Store", "SubjectRecord"]


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    id: int
    subject: Subject
    deleted: bool


@dataclass(slots=True)
class DeliveryRow:
    """A claimed delivery, as the dispatcher sees it."""

    id: int
    identity: Identity
    state: str
    category: str
    priority: int
    planned_at: datetime
    due_at: datetime
    deadline_at: datetime | None
    attempts: int
    lease_until: datetime | None
    changes: dict[str, Any] | None
    message_id: str | None
    # taken over after its lease expired while another process was sending it: that send's
    # outcome is unknown (recorded as an attempt with outcome "unknown" by claim_due)
    retaken: bool = False


def _subject_from_row(r: RowMapping) -> SubjectRecord:
    rec = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in (r["recipients"] or {}).items()}
    s = Subject(
        kind=r["kind"],
        key=r["key"],
        attributes=dict(r["attributes"] or {}),
        recipients=rec,
        revision=r["revision"],
        hold_until=r["hold_until"],
        acknowledged=frozenset(r["acknowledged"] or ()),
    )
    return SubjectRecord(r["id"], s, r["deleted_at"] is not None)


def _recipient_from_row(r: RowMapping) -> Recipient:
    return Recipient(
        id=r["id"],
        name=r["name"],
        email=r["email"],
        phone=r["phone"],
        timezone=r["timezone"],
        locale=r["locale"],
        addresses=dict(r["addresses"] or {}),
        consent=dict(r["consent"] or {}),
    )


def _identity(r: RowMapping) -> Identity:
    return Identity.from_db(
        r["rule"], r["step"], r["occurrence"], r["subject"], r["recipient"], r["channel"]
    )


def _split_ref(ref: str) -> tuple[str, str]:
    kind, _, key = ref.partition("/")
    return kind, key


class Store:
    """Queries over the tables in ``duly.store.tables``."""

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres

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
        for chunk in _chunks(wanted, 500):
            for r in conn.execute(select(recipients).where(recipients.c.id.in_(chunk))).mappings():
                out[r["id"]] = _recipient_from_row(r)
        return out

    def delete_recipient(self, conn: Connection, rid: str) -> bool:
        return bool(conn.execute(delete(recipients).where(recipients.c.id == rid)).rowcount)

    # ------------------------------------------------------------------ subjects

    def get_subjects(
        self, conn: Connection, refs: Sequence[tuple[str, str]], *, for_update: bool = False
    ) -> dict[tuple[str, str], SubjectRecord]:
        """Stored subjects (deleted ones included, flagged) by (kind, key)."""
        out: dict[tuple[str, str], SubjectRecord] = {}
        by_kind: dict[str, list[str]] = {}
        for kind, key in refs:
            by_kind.setdefault(kind, []).append(key)
        for kind, keys in by_kind.items():
            for chunk in _chunks(sorted(set(keys)), 500):
                q = select(subjects).where(subjects.c.kind == kind, subjects.c.key.in_(chunk))
                if for_update and self.postgres:
                    q = q.with_for_update()
                for r in conn.execute(q).mappings():
                    out[(r["kind"], r["key"])] = _subject_from_row(r)
        return out

    def save_subjects(
        self, conn: Connection, items: Sequence[tuple[SubjectRecord | None, Subject]], now: datetime
    ) -> None:
        """Write the new state of each subject (insert when it has no stored row)."""
        new_rows = []
        upd_rows = []
        for old, s in items:
            values = {
                "attributes": s.attributes,
                "recipients": {k: list(v) for k, v in s.recipients.items()},
                "revision": s.revision,
                "hold_until": s.hold_until,
                "acknowledged": sorted(s.acknowledged),
                "deleted_at": None,
                "updated_at": now,
            }
            if old is None:
                new_rows.append({"kind": s.kind, "key": s.key, "created_at": now, **values})
            else:
                upd_rows.append({"_id": old.id, **values})
        if new_rows:
            self._insert_raw(
                conn,
                "subjects",
                tuple(new_rows[0]),
                new_rows,
                times=frozenset({"hold_until", "deleted_at", "created_at", "updated_at"}),
                json_cols=frozenset({"attributes", "recipients", "acknowledged"}),
            )
        if upd_rows:
            conn.execute(
                update(subjects)
                .where(subjects.c.id == bindparam("_id"))
                .values({k: bindparam(k) for k in upd_rows[0] if k != "_id"}),
                upd_rows,
            )

    def mark_subject_deleted(self, conn: Connection, record: SubjectRecord, now: datetime) -> None:
        """Keep the row as a tombstone: its revision count continues if the subject returns."""
        conn.execute(
            update(subjects)
            .where(subjects.c.id == record.id)
            .values(deleted_at=now, updated_at=now, hold_until=None)
        )

    def record_problems(self, conn: Connection, problems: Sequence[Any], now: datetime) -> None:
        if problems:
            conn.execute(
                insert(subject_errors),
                [
                    {
                        "subject": p.subject,
                        "rule": p.rule,
                        "field": p.field,
                        "message": p.message,
                        "at": now,
                    }
                    for p in problems
                ],
            )

    # ------------------------------------------------------------------ events

    def add_event(
        self,
        conn: Connection,
        eid: str,
        name: str,
        subject: str,
        data: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Store an event once. Returns False when its id was seen before (idempotency)."""
        if conn.execute(select(events.c.id).where(events.c.id == eid)).first() is not None:
            return False
        conn.execute(
            insert(events).values(id=eid, name=name, subject=subject, data=data, received_at=now)
        )
        return True

    def get_events(self, conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            for r in conn.execute(select(events).where(events.c.id.in_(chunk))).mappings():
                out[r["id"]] = {
                    "id": r["id"],
                    "name": r["name"],
                    "subject": r["subject"],
                    "data": r["data"] or {},
                    "at": r["received_at"],
                }
        return out

    def get_reminders(self, conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """One-off reminders by id (deleted ones are absent)."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(ids)), 500):
            q = select(reminders).where(reminders.c.id.in_(chunk), reminders.c.deleted_at.is_(None))
            for r in conn.execute(q).mappings():
                out[int(r["id"])] = dict(r)
        return out

    # ------------------------------------------------------------------ the plan

    def existing_for(self, conn: Connection, refs: Sequence[str]) -> dict[str, list[Existing]]:
        """Every delivery row of these subjects ("KIND/KEY"), as the planner sees them.

        On PostgreSQL the rows are locked until the caller's transaction ends: a dispatcher
        claiming one meanwhile (its claim skips locked rows) must not have its claim undone
        by the plan's update — that would send a delivery twice. SQLite's write lock
        already keeps the two apart."""
        out: dict[str, list[Existing]] = {r: [] for r in refs}
        cols = [
            deliveries.c.id,
            deliveries.c.rule,
            deliveries.c.step,
            deliveries.c.occurrence,
            deliveries.c.subject,
            deliveries.c.recipient,
            deliveries.c.channel,
            deliveries.c.state,
            deliveries.c.reason,
            deliveries.c.planned_at,
            deliveries.c.due_at,
        ]
        for chunk in _chunks(sorted(set(refs)), 500):
            q = select(*cols).where(deliveries.c.subject.in_(chunk))
            if self.postgres:
                q = q.with_for_update()
            for r in conn.execute(q).mappings():
                out[r["subject"]].append(
                    Existing(
                        r["id"], _identity(r), r["state"], r["reason"], r["planned_at"], r["due_at"]
                    )
                )
        return out

    def existing_identities(self, conn: Connection, idents: Sequence[Identity]) -> list[Existing]:
        """Rows for these exact identities (event rules, where the subject's rows are many)."""
        out = []
        for ident in idents:
            rule, step, occ, subj, rcp, ch = ident.db_key()
            q = select(deliveries).where(
                deliveries.c.rule == rule,
                deliveries.c.step == step,
                deliveries.c.occurrence == occ,
                deliveries.c.subject == subj,
                deliveries.c.recipient == rcp,
                deliveries.c.channel == ch,
            )
            if self.postgres:
                q = q.with_for_update()  # see existing_for
            r = conn.execute(q).mappings().first()
            if r is not None:
                out.append(
                    Existing(r["id"], ident, r["state"], r["reason"], r["planned_at"], r["due_at"])
                )
        return out

    def apply(self, conn: Connection, actions: Sequence[Action], now: datetime) -> int:
        """Carry out reconciliation actions; log each outcome they record.

        Returns how many rows became pending (so the caller knows whether to wake the
        dispatcher). Creation relies on the identity's unique constraint: two processes
        planning the same identity cannot both insert it.
        """
        creates: list[dict[str, Any]] = []
        create_logs: list[tuple[str, str | None, datetime]] = []
        updates: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        woke = 0
        for a in actions:
            oc = outcome_of(a)
            if a.kind == "create":
                d = a.desired
                assert d is not None and a.state is not None
                rule, step, occ, subj, rcp, ch = d.identity.db_key()
                creates.append(
                    {
                        "rule": rule,
                        "step": step,
                        "occurrence": occ,
                        "subject": subj,
                        "recipient": rcp,
                        "channel": ch,
                        "state": a.state,
                        "reason": a.reason.value if a.reason else None,
                        "category": d.category,
                        "priority": d.priority,
                        "planned_at": d.planned_at,
                        "due_at": d.due_at,
                        "deadline_at": d.deadline_at,
                        "changes": d.changes,
                        "attempts": 0,
                        "error_count": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                create_logs.append(
                    (oc[0].value, oc[1].value if oc[1] else None, d.planned_at)
                    if oc
                    else ("", None, d.planned_at)
                )
                woke += a.state == "pending"
                continue
            ex = a.existing
            assert ex is not None
            row: dict[str, Any] = {"_id": ex.id, "updated_at": now}
            if a.kind == "move":
                d = a.desired
                assert d is not None
                row.update(
                    state="pending",
                    reason=None,
                    planned_at=d.planned_at,
                    due_at=d.due_at,
                    deadline_at=d.deadline_at,
                )
                woke += 1
            elif a.kind == "replan":
                d = a.desired
                assert d is not None
                row.update(
                    state=a.state,
                    reason=a.reason.value if a.reason else None,
                    planned_at=d.planned_at,
                    due_at=d.due_at,
                    deadline_at=d.deadline_at,
                )
                woke += a.state == "pending"
            else:  # cancel, skip
                d = a.desired
                row.update(
                    state="cancelled" if a.kind == "cancel" else "skipped",
                    reason=a.reason.value if a.reason else None,
                    planned_at=d.planned_at if d else ex.planned_at,
                    due_at=d.due_at if d else ex.due_at,
                    deadline_at=d.deadline_at if d else None,
                )
            updates.append(row)
            if oc:
                logs.append(
                    {
                        "delivery_id": ex.id,
                        "at": now,
                        "kind": "outcome",
                        "outcome": oc[0].value,
                        "reason": oc[1].value if oc[1] else None,
                        "planned_at": row["planned_at"],
                    }
                )
        # Rows whose creation records an outcome need their ids for the log (RETURNING);
        # the common case, a new pending row, goes through the much faster plain executemany.
        logged = [(c, lg) for c, lg in zip(creates, create_logs, strict=True) if lg[0]]
        plain = [c for c, lg in zip(creates, create_logs, strict=True) if not lg[0]]
        if plain:
            self._insert_plain(conn, plain)
        if logged:
            ids = (
                conn.execute(
                    insert(deliveries).returning(deliveries.c.id, sort_by_parameter_order=True),
                    [c for c, _ in logged],
                )
                .scalars()
                .all()
            )
            for did, (_, (outcome, reason, planned)) in zip(ids, logged, strict=True):
                logs.append(
                    {
                        "delivery_id": did,
                        "at": now,
                        "kind": "outcome",
                        "outcome": outcome,
                        "reason": reason,
                        "planned_at": planned,
                    }
                )
        if updates:
            for group in _group_by_keys(updates):
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == bindparam("_id"))
                    .values({k: bindparam(k) for k in group[0] if k != "_id"}),
                    group,
                )
        self.log(conn, logs)
        return woke

    _PLAIN_COLS = (
        "rule",
        "step",
        "occurrence",
        "subject",
        "recipient",
        "channel",
        "state",
        "reason",
        "category",
        "priority",
        "planned_at",
        "due_at",
        "deadline_at",
        "changes",
        "attempts",
        "error_count",
        "created_at",
        "updated_at",
    )

    def _insert_plain(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        self._insert_raw(
            conn,
            "deliveries",
            self._PLAIN_COLS,
            rows,
            times=frozenset({"planned_at", "due_at", "deadline_at", "created_at", "updated_at"}),
            json_cols=frozenset({"changes"}),
        )

    def _insert_raw(
        self,
        conn: Connection,
        table: str,
        cols: Sequence[str],
        rows: Sequence[dict[str, Any]],
        *,
        times: frozenset[str],
        json_cols: frozenset[str],
    ) -> None:
        """Bulk insert straight through the driver's executemany.

        Planning inserts rows by the hundred thousand; SQLAlchemy's per-value type
        processing costs more than the insert itself there, so values are converted here
        exactly as ``tables.UTCDateTime`` and ``JSON`` store them: naive UTC (in the SQLite
        dialect's text format on SQLite), JSON text or NULL. Only for tables and columns
        named by the caller; everything else goes through SQLAlchemy.
        """
        ph = "%s" if self.postgres else "?"
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))})"
        sqlite = not self.postgres
        memo: dict[datetime, Any] = {}  # many rows share instants (now, planned = due)

        def instant(v: datetime) -> Any:
            out = memo.get(v)
            if out is None:
                naive = v.astimezone(UTC).replace(tzinfo=None)
                out = memo[v] = naive.isoformat(" ", "microseconds") if sqlite else naive
            return out

        data = []
        for r in rows:
            vals = []
            for c in cols:
                v = r[c]
                if v is not None:
                    if c in times:
                        v = instant(v)
                    elif c in json_cols:
                        v = json.dumps(v)
                vals.append(v)
            data.append(tuple(vals))
        conn.exec_driver_sql(sql, data)

    def log(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Append attempt/outcome rows to the delivery log."""
        if not rows:
            return
        full = [
            {
                "outcome": None,
                "reason": None,
                "attempt": None,
                "error": None,
                "receipt": None,
                "title": None,
                "message_id": None,
                "planned_at": None,
                **r,
            }
            for r in rows
        ]
        conn.execute(insert(delivery_log), full)

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
        res = conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(ids))
            .values(state="sending", lease_owner=owner, lease_until=now + lease, updated_at=now)
            .returning(
                deliveries.c.id,
                deliveries.c.rule,
                deliveries.c.step,
                deliveries.c.occurrence,
                deliveries.c.subject,
                deliveries.c.recipient,
                deliveries.c.channel,
                deliveries.c.category,
                deliveries.c.priority,
                deliveries.c.planned_at,
                deliveries.c.due_at,
                deliveries.c.deadline_at,
                deliveries.c.attempts,
                deliveries.c.changes,
                deliveries.c.message_id,
            )
        ).mappings()
        rows = [
            DeliveryRow(
                id=r["id"],
                identity=_identity(r),
                state="sending",
                category=r["category"],
                priority=r["priority"],
                planned_at=r["planned_at"],
                due_at=r["due_at"],
                deadline_at=r["deadline_at"],
                attempts=r["attempts"],
                lease_until=now + lease,
                changes=r["changes"],
                message_id=r["message_id"],
            )
            for r in res
        ]
        rows.sort(key=lambda d: (-d.priority, d.due_at, d.id))
        return rows

    def finish(self, conn: Connection, updates: Sequence[dict[str, Any]], owner: str) -> set[int]:
        """Record the results of claimed rows. Each update names ``_id`` and the columns to
        set; only rows still claimed by ``owner`` are written ("another process got there
        first" otherwise: its lease expired and another worker retook the row). Returns the
        ids written, so the caller can tell which outcomes were refused."""
        if not updates:
            return set()
        want = [u["_id"] for u in updates]
        held: set[int] = set()
        for chunk in _chunks(want, 500):
            q = select(deliveries.c.id).where(
                deliveries.c.id.in_(list(chunk)),
                deliveries.c.lease_owner == owner,
                deliveries.c.state == "sending",
            )
            if self.postgres:
                q = q.with_for_update()
            held.update(conn.execute(q).scalars())
        mine = [u for u in updates if u["_id"] in held]
        for group in _group_by_keys(mine):
            stmt = (
                update(deliveries)
                .where(
                    deliveries.c.id == bindparam("_id"),
                    deliveries.c.lease_owner == bindparam("_owner"),
                    deliveries.c.state == "sending",
                )
                .values({k: bindparam(k) for k in group[0] if k != "_id"})
            )
            conn.execute(stmt, [{**u, "_owner": owner} for u in group])
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
        return conn.execute(
            update(suppressions)
            .where(suppressions.c.address == address.lower(), suppressions.c.cleared_at.is_(None))
            .values(cleared_at=now)
        ).rowcount

    def list_suppressions(
        self, conn: Connection, *, active: bool = True, limit: int = 500
    ) -> list[dict[str, Any]]:
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

    def subject_problems(self, conn: Connection, ref: str, limit: int = 20) -> list[dict[str, Any]]:
        q = (
            select(subject_errors)
            .where(subject_errors.c.subject == ref)
            .order_by(subject_errors.c.id.desc())
            .limit(limit)
        )
        return [dict(r) for r in conn.execute(q).mappings()]

    def counts_by_state(self, conn: Connection) -> dict[str, int]:
        q = select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
        return {s: n for s, n in conn.execute(q)}


# --------------------------------------------------------------------------- helpers


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _group_by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """executemany needs the same columns in every row of one statement."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(sorted(r)), []).append(r)
    return list(groups.values())
