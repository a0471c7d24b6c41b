"""The drain's store writes go straight through the driver (claim, finish, the delivery
log): what they store and hand back must be exactly what SQLAlchemy's typed statements
stored and handed back before, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from duly.core.planner import Action, Desired, Identity
from duly.store.db import is_postgres, make_engine, write_transaction
from duly.store.store import Store
from duly.store.tables import deliveries, delivery_log

T = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
def store(db_url: str):  # noqa: ANN201
    db = make_engine(db_url)
    yield db, Store(postgres=is_postgres(db))
    db.dispose()


def _create(db, st, items) -> None:  # noqa: ANN001
    with write_transaction(db) as c:
        st.apply(c, [Action("create", d, state="pending") for d in items], T)


def _raw(db, table: str, ids: list[int], key: str = "id") -> list[tuple]:  # noqa: ANN001
    """Rows as the driver reads them (SQLite's stored text, not parsed)."""
    with db.connect() as c:
        cols = [x.name for x in (deliveries if table == "deliveries" else delivery_log).c]
        cols = [x for x in cols if x != "id"] if table == "delivery_log" else cols
        ph = ", ".join(["%s" if is_postgres(db) else "?"] * len(ids))
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE {key} IN ({ph}) ORDER BY id"
        return [tuple(r) for r in c.exec_driver_sql(sql, tuple(ids))]


def test_claimed_rows_are_what_sqlalchemy_reads(store) -> None:  # noqa: ANN001
    db, st = store
    other = timezone(timedelta(hours=-5))
    _create(
        db,
        st,
        [
            Desired(Identity("r", "s", 0, "k/1", "p", "email"), T, T, None, "reminder", 200),
            Desired(
                Identity("r", None, "evt-1", None, "p", "sms"),
                T - timedelta(days=1),
                T - timedelta(minutes=1),
                T + timedelta(hours=1),
                "transactional",
                300,
            ),
            Desired(
                Identity("r", "s", "2026-05-01T12:00:00Z", "k/2", None, None),
                T.astimezone(other),
                T,
                None,
                "reminder",
                200,
                changes={"status": "closed", "n": [1, 2.5, None]},
            ),
        ],
    )
    with write_transaction(db) as c:
        got = st.claim_due(c, T, "w1", LEASE, 10, levels=[300, 200])
    assert len(got) == 3
    with db.connect() as c:
        rows = {r.id: r for r in c.execute(sa.select(deliveries)).mappings()}
    for d in got:
        r = rows[d.id]
        assert d.identity == Identity.from_db(
            r["rule"], r["step"], r["occurrence"], r["subject"], r["recipient"], r["channel"]
        )
        assert (d.category, d.priority, d.attempts, d.changes, d.message_id) == (
            r["category"],
            r["priority"],
            r["attempts"],
            r["changes"],
            r["message_id"],
        )
        for col in ("planned_at", "due_at", "deadline_at"):
            assert getattr(d, col) == r[col]
            assert getattr(d, col) is None or getattr(d, col).tzinfo is UTC
        assert (r["state"], r["lease_owner"], r["lease_until"], r["updated_at"]) == (
            "sending",
            "w1",
            T + LEASE,
            T,
        )
    assert [d.identity.occurrence for d in got] == ["evt-1", 0, "2026-05-01T12:00:00Z"]
    assert next(d for d in got if d.identity.occurrence == 0).changes is None


def test_finish_stores_what_sqlalchemy_stored(store) -> None:  # noqa: ANN001
    db, st = store
    _create(
        db, st, [Desired(Identity("r", "s", i, f"k/{i}", "p", "email"), T, T, None, "reminder", 200)
                 for i in range(4)]
    )  # fmt: skip
    with write_transaction(db) as c:
        rows = st.claim_due(c, T, "w1", LEASE, 10)
    other = timezone(timedelta(hours=2))
    update = {
        "state": "sent",
        "reason": None,
        "lease_owner": None,
        "lease_until": None,
        "updated_at": T,
        "attempts": 1,
        "sent_at": (T + timedelta(seconds=1)).astimezone(other),
        "title": "Héllo",
        "body_text": "x\ny",
        "body_html": None,
        "to_address": "a@b.test",
        "message_id": "<m@x>",
        "receipt": "outbox:<m@x>",
        "last_error": None,
    }
    a, b = rows[0].id, rows[1].id
    with write_transaction(db) as c:
        held = st.finish(c, [{"_id": a, **update}], "w1")
        stmt = (
            sa.update(deliveries)
            .where(
                deliveries.c.id == sa.bindparam("_id"),
                deliveries.c.lease_owner == sa.bindparam("_owner"),
                deliveries.c.state == "sending",
            )
            .values({k: sa.bindparam(k) for k in update})
        )
        c.execute(stmt, [{"_id": b, "_owner": "w1", **update}])
    assert held == {a}
    ra, rb = _raw(db, "deliveries", [a, b])
    skip = {0, 3, 4}  # id, occurrence, subject: the two rows' own
    assert [v for i, v in enumerate(ra) if i not in skip] == [
        v for i, v in enumerate(rb) if i not in skip
    ]
    # deferred (due_at) and a JSON column (through SQLAlchemy) in one batch; a row another
    # process holds is not written and not returned
    c_id, d_id = rows[2].id, rows[3].id
    with write_transaction(db) as c:
        held = st.finish(
            c,
            [
                {"_id": c_id, "state": "pending", "due_at": T + timedelta(hours=1),
                 "lease_owner": None, "lease_until": None, "updated_at": T},
                {"_id": d_id, "state": "set", "changes": {"a": 1}, "updated_at": T},
                {"_id": a, "state": "failed", "updated_at": T},
            ],
            "w1",
        )  # fmt: skip
    assert held == {c_id, d_id}
    with db.connect() as c:
        got = {r.id: r for r in c.execute(sa.select(deliveries)).mappings()}
    assert got[c_id]["due_at"] == T + timedelta(hours=1) and got[c_id]["state"] == "pending"
    assert got[d_id]["changes"] == {"a": 1} and got[d_id]["state"] == "set"
    assert got[a]["state"] == "sent"


def test_finish_refuses_a_naive_instant_as_before(store) -> None:  # noqa: ANN001
    db, st = store
    _create(
        db, st, [Desired(Identity("r", "s", 0, "k/0", "p", "email"), T, T, None, "reminder", 0)]
    )
    with write_transaction(db) as c:
        (row,) = st.claim_due(c, T, "w1", LEASE, 10)
    with pytest.raises(ValueError, match="naive datetime"), write_transaction(db) as c:
        st.finish(c, [{"_id": row.id, "updated_at": T.replace(tzinfo=None)}], "w1")


def test_log_stores_what_sqlalchemy_stored(store) -> None:  # noqa: ANN001
    db, st = store
    _create(
        db, st, [Desired(Identity("r", "s", 0, "k/0", "p", "email"), T, T, None, "reminder", 0)]
    )
    with db.connect() as c:
        did = c.execute(sa.select(deliveries.c.id)).scalar_one()
    rows = [
        {"delivery_id": did, "at": T, "kind": "attempt", "attempt": 1, "error": None,
         "receipt": "outbox:<m>"},
        {"delivery_id": did, "at": T.astimezone(timezone(timedelta(hours=3))), "kind": "outcome",
         "outcome": "sent", "reason": None, "attempt": 1, "title": "T", "message_id": "<m>",
         "planned_at": T - timedelta(days=2)},
    ]  # fmt: skip
    with write_transaction(db) as c:
        st.log(c, rows)
        full = [
            {"outcome": None, "reason": None, "attempt": None, "error": None, "receipt": None,
             "title": None, "message_id": None, "planned_at": None, **r}
            for r in rows
        ]  # fmt: skip
        c.execute(sa.insert(delivery_log), full)
    got = _raw(db, "delivery_log", [did], key="delivery_id")
    assert got[:2] == got[2:]
    with db.connect() as c:
        ids = list(c.execute(sa.select(delivery_log.c.id).order_by(delivery_log.c.id)).scalars())
    assert ids == sorted(ids) and len(ids) == 4
    with pytest.raises(ValueError, match="naive datetime"), write_transaction(db) as c:
        st.log(c, [{"delivery_id": did, "at": T.replace(tzinfo=None), "kind": "attempt"}])
