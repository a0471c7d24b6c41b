"""duly.store.driver.fetch, which the single upsert's statements go through, behaves as
SQLAlchemy's own execution: a driver error is raised as the same ``sqlalchemy.exc`` class
(``is_duplicate`` and the API's handlers see what they saw), the engine's listeners see each
statement, and outside a transaction it begins one as any statement would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from duly.store.db import make_engine, migrate, write_transaction
from duly.store.driver import fetch, placeholders
from duly.store.plan import is_duplicate


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


def test_errors_listeners_and_transactions_as_sqlalchemy(engine: sa.Engine) -> None:
    pg = engine.dialect.name == "postgresql"
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", on)
    ins = (
        "INSERT INTO recipients (id, addresses, consent, created_at, updated_at) "
        f"VALUES ({placeholders(pg, 5)})"
    )
    now = "2030-01-01 00:00:00"
    with write_transaction(engine) as conn:
        assert fetch(conn, ins, ["r1", "{}", "{}", now, now]) == []
        assert ins in seen
        got = fetch(conn, f"SELECT id FROM recipients WHERE id IN ({placeholders(pg, 2)})",
                    ["r1", "nobody"])  # fmt: skip
        assert got == [("r1",)]
    with pytest.raises(sa.exc.IntegrityError) as caught, write_transaction(engine) as conn:
        fetch(conn, ins, ["r1", "{}", "{}", now, now])
    assert is_duplicate(caught.value)
    with pytest.raises(sa.exc.DBAPIError), write_transaction(engine) as conn:
        fetch(conn, "SELECT no_such_column FROM recipients", [])
    with engine.connect() as conn:  # no transaction yet: SQLAlchemy begins one
        assert fetch(conn, "SELECT id FROM recipients", []) == [("r1",)]
        assert conn.in_transaction()
