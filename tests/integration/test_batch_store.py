"""The batch upsert's write path stores what SQLAlchemy would: ``Store.apply`` builds new rows
as the driver's tuples (values converted once) and, on PostgreSQL from COPY_FROM_ROWS rows,
sends them with COPY; ``_insert_raw`` (new subjects) likewise. Each row read back must equal
the same row inserted through SQLAlchemy Core (its types' own conversions), on SQLite and
PostgreSQL, for few rows and for many, and a duplicate must still be an IntegrityError that
``is_duplicate`` recognises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from duly.core.model import Reason, Subject
from duly.core.planner import Action, Desired, Identity
from duly.store.db import write_transaction
from duly.store.plan import is_duplicate
from duly.store.rows import COPY_FROM_ROWS
from duly.store.store import Store
from duly.store.tables import deliveries, subjects

NOW = datetime(2026, 3, 29, 0, 59, 59, 999999, tzinfo=UTC)
ODD = ["plain", "tab\there", "new\nline", "back\\slash", "quote'\"", "ünï😀", "\\N", ""]


def _store(db: Engine) -> Store:
    return Store(postgres=db.dialect.name == "postgresql")


def _desired(i: int) -> Desired:
    odd = ODD[i % len(ODD)]
    planned = NOW + timedelta(minutes=i, microseconds=i)
    if i % 3 == 0:  # another zone, same instant: stored as naive UTC all the same
        planned = planned.astimezone(ZoneInfo("Australia/Lord_Howe"))
    ident = Identity(
        "rule " + odd,
        None if i % 4 == 0 else "step" + odd,
        i if i % 5 else f"evt-{odd}-{i}",
        f"job/k{odd}{i}",
        None if i % 6 == 0 else f"r{i}",
        None if i % 6 == 0 else "email",
    )
    return Desired(
        ident,
        planned,
        planned + timedelta(hours=i % 2),
        None if i % 2 else planned + timedelta(days=1),
        "reminder" if i % 3 else "transactional",
        200 - i % 3,
        None,
        {"status": odd, "n": i, "nested": {"a": [1, "x"]}} if i % 6 == 0 else None,
    )


def _rows(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as c:
        q = sa.select(deliveries).order_by(deliveries.c.rule, deliveries.c.occurrence)
        out = [dict(r) for r in c.execute(q).mappings()]
    for r in out:
        r.pop("id")
    return sorted(out, key=repr)


def _core_rows(db: Engine, actions: list[Action]) -> list[dict[str, Any]]:
    """The same rows inserted through SQLAlchemy Core, read back, then removed."""
    values = []
    for a in actions:
        d = a.desired
        assert d is not None
        rule, step, occ, subj, rcp, ch = d.identity.db_key()
        values.append(
            dict(
                rule=rule,
                step=step,
                occurrence=occ,
                subject=subj,
                recipient=rcp,
                channel=ch,
                state=a.state,
                reason=a.reason.value if a.reason else None,
                category=d.category,
                priority=d.priority,
                planned_at=d.planned_at,
                due_at=d.due_at,
                deadline_at=d.deadline_at,
                changes=d.changes,
                attempts=0,
                error_count=0,
                created_at=NOW,
                updated_at=NOW,
            )  # fmt: skip
        )
    with write_transaction(db) as c:
        c.execute(sa.insert(deliveries), values)
    rows = _rows(db)
    with write_transaction(db) as c:
        c.execute(sa.delete(deliveries))
    return rows


@pytest.mark.parametrize("n", [3, COPY_FROM_ROWS + 7])
def test_batch_apply_stores_new_rows_as_sqlalchemy_would(db_engine: Engine, n: int) -> None:
    from duly.store.db import migrate

    migrate(db_engine)
    store = _store(db_engine)
    actions = [Action("create", _desired(i), None, "pending") for i in range(n)]
    # one skipped at creation: it goes through RETURNING and logs its outcome
    actions.append(Action("create", _desired(n), None, "skipped", Reason.past))
    want = _core_rows(db_engine, actions)
    with write_transaction(db_engine) as c:
        woke = store.apply(c, actions, NOW)
    assert woke == n
    got = _rows(db_engine)
    assert got == want
    assert [r["planned_at"].tzinfo for r in got] == [UTC] * len(got)
    with db_engine.connect() as c:
        log = c.execute(sa.text("SELECT outcome, reason FROM delivery_log")).all()
    assert [tuple(r) for r in log] == [("skipped", "past")]


def test_batch_apply_duplicate_is_still_an_integrity_error(db_engine: Engine) -> None:
    from duly.store.db import migrate

    migrate(db_engine)
    store = _store(db_engine)
    actions = [Action("create", _desired(i), None, "pending") for i in range(COPY_FROM_ROWS)]
    with write_transaction(db_engine) as c:
        store.apply(c, actions, NOW)
    with pytest.raises(sa.exc.IntegrityError) as info:  # noqa: PT012
        with write_transaction(db_engine) as c:
            store.apply(c, actions[-1:] + actions[:-1], NOW)
    assert is_duplicate(info.value)
    assert len(_rows(db_engine)) == COPY_FROM_ROWS  # the failed transaction left nothing


@pytest.mark.parametrize("n", [2, COPY_FROM_ROWS + 3])
def test_batch_new_subjects_are_stored_as_sqlalchemy_would(db_engine: Engine, n: int) -> None:
    from duly.store.db import migrate

    migrate(db_engine)
    store = _store(db_engine)
    items = [
        Subject(
            "job",
            f"k{ODD[i % len(ODD)]}{i}",
            {"status": ODD[i % len(ODD)], "due_at": "2026-03-29T01:30:00Z", "n": [i, None]},
            {"owner": (f"r{i}",), "cc": ("a", "b")},
            hold_until=None if i % 2 else NOW + timedelta(days=i),
            acknowledged=frozenset({"b", "a"}) if i % 3 == 0 else frozenset(),
        )
        for i in range(n)
    ]
    with write_transaction(db_engine) as c:
        store.save_subjects(c, [(None, s) for s in items], NOW)
        got = store.get_subjects(c, [(s.kind, s.key) for s in items])
    assert {k: rec.subject for k, rec in got.items()} == {(s.kind, s.key): s for s in items}
    with db_engine.connect() as c:
        rows = c.execute(sa.select(subjects.c.created_at, subjects.c.updated_at)).all()
    assert {tuple(r) for r in rows} == {(NOW, NOW)}
