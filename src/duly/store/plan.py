"""The plan: the delivery rows the planner reconciles against, and applying its actions.

The queries of :class:`PlanQueries` are part of :class:`duly.store.store.Store`. On
PostgreSQL the rows the planner reads are locked until the caller's transaction ends, so a
dispatcher's claim cannot be undone by a plan's update.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from duly.core.model import Outcome
from duly.core.planner import Action, Existing, Identity, outcome_of
from duly.store.driver import fetch
from duly.store.rows import (
    StoreBase,
    _chunks,
    _group_by_keys,
    _identity,
    instants,
    read_instant,
)
from duly.store.tables import deliveries

__all__ = ["PlanQueries", "is_duplicate"]


# Statements the upsert path runs per request, built once (building one per call costs
# more in SQLAlchemy's construction and cache-key work than the query itself).
_EXISTING = select(
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
).where(deliveries.c.subject.in_(bindparam("refs", expanding=True)))
_EXISTING_FOR_UPDATE = _EXISTING.with_for_update()
_PLAN_OF_SUBJECT = (
    select(deliveries)
    .where(deliveries.c.subject == bindparam("ref"))
    .order_by(deliveries.c.due_at, deliveries.c.id)
    .where(deliveries.c.state.in_(("pending", "sending")))
)


# One subject's rows with the columns of the PUT's answer (``DeliveryOut``), by driver-level
# SQL (the single upsert runs it per request; SQLAlchemy's per-row processing of a Core
# select cost more than the query). The identity columns come first (see _IDENT).
ANSWER_COLS = (
    "id",
    "rule",
    "step",
    "occurrence",
    "subject",
    "recipient",
    "channel",
    "state",
    "reason",
    "category",
    "planned_at",
    "due_at",
    "sent_at",
    "attempts",
    "last_error",
    "title",
    "message_id",
)
_ONE_SUBJECT = f"SELECT {', '.join(ANSWER_COLS)} FROM deliveries WHERE subject = "
_ONE_SUBJECT_SQLITE = _ONE_SUBJECT + "?"
_ONE_SUBJECT_PG = _ONE_SUBJECT + "%s FOR UPDATE"
_RETURNING = " RETURNING id, rule, step, occurrence, subject, recipient, channel"


def _pg_array(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of a one-dimensional array: each element double-quoted
    (``\\`` and ``"`` escaped), NULL for None; instants (naive UTC here) in ISO form."""
    out = []
    for v in values:
        if v is None:
            out.append("NULL")
            continue
        t = v.isoformat(" ") if isinstance(v, datetime) else str(v)
        out.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(out) + "}"


class PlanQueries(StoreBase):
    """Existing rows for the planner; carrying out its actions; schedule occurrences."""

    # ------------------------------------------------------------------ the plan

    def existing_for(self, conn: Connection, refs: Sequence[str]) -> dict[str, list[Existing]]:
        """Every delivery row of these subjects ("KIND/KEY"), as the planner sees them.

        On PostgreSQL the rows are locked until the caller's transaction ends: a dispatcher
        claiming one meanwhile (its claim skips locked rows) must not have its claim undone
        by the plan's update — that would send a delivery twice. SQLite's write lock
        already keeps the two apart."""
        out: dict[str, list[Existing]] = {r: [] for r in refs}
        q = _EXISTING_FOR_UPDATE if self.postgres else _EXISTING
        for chunk in _chunks(sorted(set(refs)), 500):
            for r in conn.execute(q, {"refs": list(chunk)}).mappings():
                out[r["subject"]].append(
                    Existing(
                        r["id"], _identity(r), r["state"], r["reason"], r["planned_at"], r["due_at"]
                    )
                )
        return out

    def plan_of_subject(self, conn: Connection, ref: str) -> list[dict[str, Any]]:
        """The subject's ("KIND/KEY") rows pending or being sent, every column, by due time
        then id: what ``deliveries_of_subject(conn, ref, ("pending", "sending"))`` answers,
        from a statement built once (the answer to every single upsert). Reads only."""
        return [dict(r) for r in conn.execute(_PLAN_OF_SUBJECT, {"ref": ref}).mappings()]

    def existing_of_subject(
        self, conn: Connection, ref: str
    ) -> tuple[list[Existing], dict[int, dict[str, Any]]]:
        """One subject's rows as :meth:`existing_for` hands them to the planner (locked on
        PostgreSQL likewise), and each row's ``ANSWER_COLS`` by id, as ``plan_of_subject``
        would read them: what the single upsert builds its answer from without reading
        the plan again."""
        sql = _ONE_SUBJECT_PG if self.postgres else _ONE_SUBJECT_SQLITE
        existing: list[Existing] = []
        rows: dict[int, dict[str, Any]] = {}
        for t in fetch(conn, sql, (ref,)):
            r = dict(zip(ANSWER_COLS, t, strict=True))
            r["planned_at"] = planned = read_instant(r["planned_at"])
            r["due_at"] = due = read_instant(r["due_at"])
            r["sent_at"] = read_instant(r["sent_at"])
            rows[r["id"]] = r
            ident = Identity.from_db(*t[1:7])
            existing.append(Existing(r["id"], ident, r["state"], r["reason"], planned, due))  # type: ignore[arg-type]
        return existing, rows

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

    def apply(
        self,
        conn: Connection,
        actions: Sequence[Action],
        now: datetime,
        *,
        created: dict[tuple[str, ...], int] | None = None,
    ) -> int:
        """Carry out reconciliation actions; log each outcome they record.

        Returns how many rows became pending (so the caller knows whether to wake the
        dispatcher). Creation relies on the identity's unique constraint: two processes
        planning the same identity cannot both insert it. ``created``: filled with the id
        of each row created, by its identity's stored form (``Identity.db_key``).
        """
        # a new row that records no outcome (the common case: pending) goes in as the
        # driver's tuple, values converted once (see StoreBase._insert_raw); one that does
        # (skipped at creation) needs its id for the log: RETURNING, through SQLAlchemy
        plain: list[tuple[Any, ...]] = []
        logged: list[tuple[dict[str, Any], tuple[str, str | None, datetime]]] = []
        updates: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        woke = 0
        instant = instants(not self.postgres)
        now_s = instant(now)
        for a in actions:
            if a.kind == "create":
                d = a.desired
                assert d is not None and a.state is not None
                ident = d.identity
                occ = ident.occurrence
                # Identity.db_key: "" for null, occurrence as JSON text
                occ_s = str(occ) if type(occ) is int else json.dumps(occ)
                reason = a.reason.value if a.reason else None
                if a.state != "skipped":  # outcome_of: no outcome to log
                    plain.append(
                        (
                            ident.rule,
                            ident.step or "",
                            occ_s,
                            ident.subject or "",
                            ident.recipient or "",
                            ident.channel or "",
                            a.state,
                            reason,
                            d.category,
                            d.priority,
                            instant(d.planned_at),
                            instant(d.due_at),
                            instant(d.deadline_at),
                            None if d.changes is None else json.dumps(d.changes),
                            0,
                            0,
                            now_s,
                            now_s,
                        )
                    )
                    woke += a.state == "pending"
                    continue
                rule, step, occ_s, subj, rcp, ch = ident.db_key()
                logged.append(
                    (
                        {
                            "rule": rule,
                            "step": step,
                            "occurrence": occ_s,
                            "subject": subj,
                            "recipient": rcp,
                            "channel": ch,
                            "state": a.state,
                            "reason": reason,
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
                        },
                        (Outcome.skipped.value, reason, d.planned_at),
                    )
                )
                continue
            oc = outcome_of(a)
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
        if plain and created is not None:
            created.update(self._insert_returning(conn, plain))
        elif plain:
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
            for did, (c, (outcome, reason, planned)) in zip(ids, logged, strict=True):
                if created is not None:
                    created[tuple(c[k] for k in self._PLAIN_COLS[:6])] = did
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

    def _insert_plain(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """New delivery rows as ``apply`` builds them: values in ``_PLAIN_COLS`` order,
        already in their stored form."""
        self._insert_rows(conn, "deliveries", self._PLAIN_COLS, rows)

    def _insert_returning(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]]
    ) -> dict[tuple[str, ...], int]:
        """Insert a few rows (one subject's) as :meth:`_insert_plain` does (the same
        tuples, values already in their stored form), in one statement; their ids by
        identity (unique: RETURNING's order is not promised on SQLite). On PostgreSQL one
        array per column (``unnest``), written as array text: the same SQL for any number
        of rows, which psycopg caches and prepares, and half the CPU of psycopg adapting
        lists."""
        out: dict[tuple[str, ...], int] = {}
        if self.postgres:
            arrays = [_pg_array(col) for col in zip(*rows, strict=True)]
            for t in fetch(conn, _INSERT_UNNEST_PG, arrays):
                out[tuple(t[1:])] = t[0]
            return out
        one = f"({', '.join(['?'] * len(self._PLAIN_COLS))})"
        for chunk in _chunks(rows, 50):
            sql = f"{_INSERT_SQLITE}{', '.join([one] * len(chunk))}{_RETURNING}"
            for t in fetch(conn, sql, [v for row in chunk for v in row]):
                out[tuple(t[1:])] = t[0]
        return out

    # ------------------------------------------------------------------ by recipient, by occurrence

    def pending_of_recipient(
        self, conn: Connection, rid: str
    ) -> list[tuple[int, datetime, datetime]]:
        """``(id, planned_at, due_at)`` of every pending row addressed to recipient ``rid``,
        in no set order. On PostgreSQL the rows are locked until the caller's transaction
        ends (see :meth:`existing_for`): the caller cancels them."""
        q = select(deliveries.c.id, deliveries.c.planned_at, deliveries.c.due_at).where(
            deliveries.c.recipient == rid, deliveries.c.state == "pending"
        )
        if self.postgres:
            q = q.with_for_update()
        return [(i, p, d) for i, p, d in conn.execute(q)]

    def subjects_pending_for(self, conn: Connection, rid: str) -> list[str]:
        """The subjects ("KIND/KEY") with a pending row addressed to recipient ``rid``,
        each once, in no set order (rows about no subject are left out)."""
        q = (
            select(deliveries.c.subject)
            .where(deliveries.c.recipient == rid, deliveries.c.state == "pending")
            .distinct()
        )
        return [s for (s,) in conn.execute(q) if s]

    def existing_for_occurrence(
        self, conn: Connection, rule: str, occurrence: str
    ) -> list[Existing]:
        """Every row of one occurrence of a rule (a one-off reminder: rule ``@reminder``,
        occurrence its id), in any state, as the planner sees them. Locked on PostgreSQL
        until the caller's transaction ends (see :meth:`existing_for`)."""
        q = select(deliveries).where(
            deliveries.c.rule == rule, deliveries.c.occurrence == occurrence
        )
        if self.postgres:
            q = q.with_for_update()
        return [
            Existing(r["id"], _identity(r), r["state"], r["reason"], r["planned_at"], r["due_at"])
            for r in conn.execute(q).mappings().all()
        ]

    # ------------------------------------------------------------------ schedule occurrences

    def lock_schedule(self, conn: Connection, rule: str) -> None:
        """Serialise "nothing pending → plan the next occurrence" of schedule rule ``rule``
        between processes (two would plan consecutive occurrences) until the caller's
        transaction ends: a transaction-scoped advisory lock on PostgreSQL; on SQLite the
        write transaction already does it, and this does nothing."""
        if self.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(rule)})

    def earliest_pending_of_rule(self, conn: Connection, rule: str) -> datetime | None:
        """The earliest due time among the rule's rows pending or being sent; None when it
        has none."""
        return conn.execute(
            select(func.min(deliveries.c.due_at)).where(
                deliveries.c.rule == rule,
                deliveries.c.state.in_(("pending", "sending")),
            )
        ).scalar()

    def last_occurrence_of_rule(self, conn: Connection, rule: str) -> str | None:
        """The greatest occurrence key among the rule's rows, in any state (a schedule's
        occurrence is its instant as JSON text, so the greatest is the latest); None when
        the rule has no rows."""
        return conn.execute(
            select(func.max(deliveries.c.occurrence)).where(deliveries.c.rule == rule)
        ).scalar()


_TIMES = frozenset({"planned_at", "due_at", "deadline_at", "created_at", "updated_at"})
_PG_TYPES = {"priority": "int", "attempts": "int", "error_count": "int", "changes": "json"}
_INSERT_SQLITE = f"INSERT INTO deliveries ({', '.join(PlanQueries._PLAIN_COLS)}) VALUES "
_INSERT_UNNEST_PG = (
    f"INSERT INTO deliveries ({', '.join(PlanQueries._PLAIN_COLS)}) SELECT * FROM unnest("
    + ", ".join(
        f"%s::{'timestamp' if c in _TIMES else _PG_TYPES.get(c, 'text')}[]"
        for c in PlanQueries._PLAIN_COLS
    )
    + f"){_RETURNING}"
)


def is_duplicate(exc: BaseException) -> bool:
    """True when ``exc`` is the database refusing a row whose unique key another
    transaction wrote first (two processes planned the same identity: it kept one)."""
    return isinstance(exc, IntegrityError)


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a schedule rule."""
    return int.from_bytes(
        hashlib.sha256(f"duly-schedule:{name}".encode()).digest()[:8], "big", signed=True
    )
