"""Row types the store hands out, and what every store module shares.

``SubjectRecord`` and ``DeliveryRow`` (a claimed delivery, as the dispatcher sees it), the
converters from table rows to model objects, chunking for ``IN`` lists, and
:class:`StoreBase`: the dialect flag, the bulk insert the planner's writes go through, and
the append-only delivery log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError

from duly.core.model import Recipient, Subject
from duly.core.planner import Identity
from duly.store.driver import placeholders
from duly.store.tables import delivery_log

__all__ = ["DeliveryRow", "StoreBase", "SubjectRecord"]

# From this many rows a bulk insert on PostgreSQL goes through COPY (fewer: executemany, one
# round trip less, for the single upsert's few rows).
COPY_FROM_ROWS = 50


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


_UNSET: Any = object()


def claimed_rows(res: Any, now: datetime, lease: timedelta) -> list[DeliveryRow]:
    """Rows just moved to ``sending`` under a lease of ``lease`` from ``now``, as the
    dispatcher takes them: highest priority first, then earliest due, then oldest."""
    # Identity.from_db, with each occurrence's JSON text parsed once per claim (a batch's
    # rows mostly share "0"); only immutable values (numbers, strings) are shared
    parsed: dict[str, Any] = {}

    def identity(r: Any) -> Identity:
        text = r["occurrence"]
        occ = parsed.get(text, _UNSET)
        if occ is _UNSET:
            occ = json.loads(text)
            if type(occ) in (int, str, float):
                parsed[text] = occ
        return Identity(
            r["rule"],
            r["step"] or None,
            occ,
            r["subject"] or None,
            r["recipient"] or None,
            r["channel"] or None,
        )

    rows = [
        DeliveryRow(
            id=r["id"],
            identity=identity(r),
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


class StoreBase:
    """The state every group of queries shares: which dialect the connection speaks."""

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres

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
        sql = self._insert_sql(table, cols)
        instant = instants(not self.postgres)
        # per column, once: how its values are stored (most are as they are)
        conv = [(i, instant) for i, c in enumerate(cols) if c in times]
        conv += [(i, json.dumps) for i, c in enumerate(cols) if c in json_cols and c not in times]
        get = itemgetter(*cols)
        if len(cols) == 1:
            rows_vals: Iterable[Sequence[Any]] = ((get(r),) for r in rows)
        else:
            rows_vals = map(get, rows)
        if not conv:
            data = list(rows_vals)
        else:
            data = []
            for vals in rows_vals:
                out = list(vals)
                for i, f in conv:
                    v = out[i]
                    if v is not None:
                        out[i] = f(v)
                data.append(tuple(out))
        self._insert_rows(conn, table, cols, data, sql)

    def _insert_rows(
        self,
        conn: Connection,
        table: str,
        cols: Sequence[str],
        data: Sequence[Sequence[Any]],
        sql: str | None = None,
    ) -> None:
        """Rows of values already in their stored form (see :meth:`_insert_raw`), in the
        order of ``cols``. On PostgreSQL many rows go through ``COPY``, several times
        cheaper than executemany's statement per row; an error comes back as the
        SQLAlchemy exception executemany would raise (``IntegrityError`` for a duplicate)."""
        if not (self.postgres and len(data) >= COPY_FROM_ROWS):
            conn.exec_driver_sql(sql or self._insert_sql(table, cols), data)
            return
        copy = f"COPY {table} ({', '.join(cols)}) FROM STDIN"
        driver = conn.connection.driver_connection
        assert driver is not None
        dbapi = conn.dialect.loaded_dbapi
        try:
            with driver.cursor() as cur, cur.copy(copy) as out:
                for row in data:
                    out.write_row(row)
        except dbapi.Error as exc:
            raise DBAPIError.instance(copy, None, exc, dbapi.Error, dialect=conn.dialect) from exc

    def _insert_sql(self, table: str, cols: Sequence[str]) -> str:
        values = placeholders(self.postgres, len(cols))
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({values})"

    def log(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Append attempt/outcome rows to the delivery log."""
        if not rows:
            return
        if not all(_LOG_NEEDS <= r.keys() <= _LOG_KEYS for r in rows):
            full = [{**_LOG_DEFAULTS, **r} for r in rows]
            conn.execute(insert(delivery_log), full)
            return
        # Through the driver's executemany, values bound as ``tables.UTCDateTime`` binds
        # them (the columns are text, integers and instants): SQLAlchemy's per-value
        # processing cost more than the insert. Rows with any other key go through it.
        sql = self._insert_sql("delivery_log", [_q(c) for c in _LOG_COLS])
        instant = instants(not self.postgres)
        data = [
            (
                r["delivery_id"],
                instant(r["at"]),
                r["kind"],
                r.get("outcome"),
                r.get("reason"),
                r.get("attempt"),
                r.get("error"),
                r.get("receipt"),
                r.get("title"),
                r.get("message_id"),
                instant(r.get("planned_at")),
            )
            for r in rows
        ]
        conn.exec_driver_sql(sql, data)


_LOG_COLS = (
    "delivery_id",
    "at",
    "kind",
    "outcome",
    "reason",
    "attempt",
    "error",
    "receipt",
    "title",
    "message_id",
    "planned_at",
)
_LOG_KEYS = frozenset(_LOG_COLS)
_LOG_NEEDS = frozenset({"delivery_id", "at", "kind"})
_LOG_DEFAULTS: dict[str, Any] = {
    "outcome": None,
    "reason": None,
    "attempt": None,
    "error": None,
    "receipt": None,
    "title": None,
    "message_id": None,
    "planned_at": None,
}


def instants(sqlite: bool) -> Callable[[datetime | None], Any]:
    """An aware instant as ``tables.UTCDateTime`` binds it: naive UTC, in the SQLite
    dialect's text format on SQLite; None as None; a naive one is refused with the same
    error. Memoised (a batch's rows share instants: now, planned = due)."""
    memo: dict[datetime, Any] = {}

    def instant(v: datetime | None) -> Any:
        if v is None:
            return None
        out = memo.get(v)
        if out is None:
            if v.tzinfo is None:
                raise ValueError("naive datetime given to the store: instants must be aware")
            u = v if v.tzinfo is UTC else v.astimezone(UTC)
            if sqlite:  # the naive time's text: the aware one's less its "+00:00"
                out = memo[v] = u.isoformat(" ", "microseconds")[:-6]
            else:
                out = memo[v] = u.replace(tzinfo=None)
        return out

    return instant


def read_instant(v: Any) -> datetime | None:
    """A stored instant read through the driver as ``tables.UTCDateTime`` reads it back
    (aware UTC): SQLite hands out its text, PostgreSQL a naive datetime."""
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    return v.replace(tzinfo=UTC)  # type: ignore[no-any-return]


def read_json(v: Any) -> Any:
    """A JSON column's value read through the driver as SQLAlchemy's ``JSON`` reads it:
    SQLite hands out the text, psycopg the decoded value."""
    return json.loads(v) if isinstance(v, str) else v


def _q(name: str) -> str:
    return f'"{name}"'


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _group_by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """executemany needs the same columns in every row of one statement."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(sorted(r)), []).append(r)
    return list(groups.values())
