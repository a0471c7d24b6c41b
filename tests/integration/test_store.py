"""The store contract (duly.store.store.Store), the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from duly.core.model import Recipient
from duly.core.planner import Action, Desired, Identity
from duly.store.db import is_postgres, make_engine, write_transaction
from duly.store.store import Store
from duly.store.tables import deliveries, delivery_log

T = datetime(2026, 5, 1, 12, tzinfo=UTC)


def desired(
    i: int, *, category: str = "reminder", priority: int = 200, due: datetime = T
) -> Desired:
    ident = Identity("r", "s", i, f"k/{i}", "p", "email")
    return Desired(ident, due, due, None, category, priority)


@pytest.fixture
def store(db_url: str):  # noqa: ANN201
    db = make_engine(db_url)
    yield db, Store(postgres=is_postgres(db))
    db.dispose()


def test_identity_is_unique_in_the_database(store) -> None:  # noqa: ANN001
    db, st = store
    with write_transaction(db) as c:
        st.apply(c, [Action("create", desired(1), state="pending")], T)
    with pytest.raises(IntegrityError), write_transaction(db) as c:
        st.apply(c, [Action("create", desired(1), state="pending")], T)


def test_claim_takes_due_rows_transactional_first_and_leases_them(store) -> None:  # noqa: ANN001
    db, st = store
    with write_transaction(db) as c:
        st.apply(
            c,
            [
                Action("create", desired(1, due=T - timedelta(minutes=5)), state="pending"),
                Action(
                    "create", desired(2, category="transactional", priority=300), state="pending"
                ),
                Action("create", desired(3, due=T + timedelta(minutes=1)), state="pending"),
            ],
            T,
        )
    with write_transaction(db) as c:
        got = st.claim_due(c, T, "w1", timedelta(seconds=30), 10)
    assert [r.identity.occurrence for r in got] == [2, 1]  # not yet due: 3
    with write_transaction(db) as c:
        assert st.claim_due(c, T, "w2", timedelta(seconds=30), 10) == []  # leased
        assert st.next_due(c) == T + timedelta(seconds=30)  # the earliest lease expiry
    with write_transaction(db) as c:  # w1 died: its lease expires
        again = st.claim_due(c, T + timedelta(seconds=31), "w2", timedelta(seconds=30), 10)
    assert sorted(r.identity.occurrence for r in again) == [1, 2]


def test_finish_only_writes_rows_the_worker_still_holds(store) -> None:  # noqa: ANN001
    db, st = store
    with write_transaction(db) as c:
        st.apply(c, [Action("create", desired(1), state="pending")], T)
        (row,) = st.claim_due(c, T, "w1", timedelta(seconds=30), 10)
    with write_transaction(db) as c:  # w2 takes it over after the lease
        st.claim_due(c, T + timedelta(minutes=1), "w2", timedelta(seconds=30), 10)
    with write_transaction(db) as c:  # w1 comes back: another process got there first
        held = st.finish(c, [{"_id": row.id, "state": "sent", "updated_at": T}], "w1")
    assert held == set()
    with write_transaction(db) as c:
        held = st.finish(c, [{"_id": row.id, "state": "sent", "updated_at": T}], "w2")
    assert held == {row.id}


def test_concurrent_claims_never_hand_out_a_row_twice(store) -> None:  # noqa: ANN001
    db, st = store
    n = 400
    with write_transaction(db) as c:
        st.apply(c, [Action("create", desired(i), state="pending") for i in range(n)], T)
    taken: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with write_transaction(db) as c:
                rows = st.claim_due(c, T, name, timedelta(minutes=1), 17)
            if not rows:
                return
            with lock:
                taken.extend(r.id for r in rows)

    ts = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert len(taken) == n and len(set(taken)) == n


def test_apply_logs_outcomes_and_moves_without_logging(store) -> None:  # noqa: ANN001
    db, st = store
    from duly.core.model import Reason

    with write_transaction(db) as c:
        st.apply(
            c,
            [
                Action("create", desired(1), state="pending"),
                Action("create", desired(2), state="skipped", reason=Reason.past),
            ],
            T,
        )
        ex = st.existing_for(c, ["k/1"])["k/1"]
        later = desired(1, due=T + timedelta(days=1))
        st.apply(c, [Action("move", later, ex[0])], T)
        ex = st.existing_for(c, ["k/1"])["k/1"]
        st.apply(c, [Action("cancel", None, ex[0], reason=Reason.condition_false)], T)
    with db.connect() as c:
        log = c.execute(
            sa.select(delivery_log.c.outcome, delivery_log.c.reason).order_by(delivery_log.c.id)
        ).all()
        row = c.execute(sa.select(deliveries).where(deliveries.c.subject == "k/1")).mappings().one()
    assert [tuple(x) for x in log] == [("skipped", "past"), ("cancelled", "condition_false")]
    assert row["state"] == "cancelled" and row["planned_at"] == T + timedelta(days=1)


def test_recipients_round_trip_and_unknown_ids_are_absent(store) -> None:  # noqa: ANN001
    db, st = store
    r = Recipient(
        "r1",
        name="Zoë",
        email="z@example.test",
        timezone="Asia/Tokyo",
        locale="ja_JP",
        addresses={"slack": "U1"},
        consent={"promotional": True},
    )
    with write_transaction(db) as c:
        assert st.put_recipient(c, r, T) is True
        assert st.put_recipient(c, r, T) is False
        got = st.get_recipients(c, ["r1", "nobody"])
    assert got == {"r1": r}


def test_claim_by_priority_levels_reads_higher_levels_first_and_the_rest_last(store) -> None:  # noqa: ANN001
    db, st = store
    with write_transaction(db) as c:
        st.apply(
            c,
            [
                Action(
                    "create", desired(1, priority=200, due=T - timedelta(hours=2)), state="pending"
                ),
                Action(
                    "create",
                    desired(2, priority=300, due=T - timedelta(minutes=1)),
                    state="pending",
                ),
                Action(
                    "create",
                    desired(3, priority=999, due=T - timedelta(minutes=5)),
                    state="pending",
                ),
                Action(
                    "create", desired(4, priority=200, due=T - timedelta(hours=3)), state="pending"
                ),
                Action(
                    "create",
                    desired(5, priority=300, due=T + timedelta(minutes=1)),
                    state="pending",
                ),
            ],
            T,
        )
    with write_transaction(db) as c:
        got = st.claim_due(c, T, "w", timedelta(minutes=1), 3, levels=[300, 200, 100])
    assert [r.identity.occurrence for r in got] == [2, 4, 1]
    with write_transaction(db) as c:  # a level the rules no longer give is still claimed
        rest = st.claim_due(c, T, "w", timedelta(minutes=1), 3, levels=[300, 200, 100])
    assert [r.identity.occurrence for r in rest] == [3]
