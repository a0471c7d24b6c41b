"""The audit trail's store (duly.store.audit), on SQLite and PostgreSQL: an entry commits
with the action it describes or not at all, sizes are bounded, and the queries behind the
history sections and the audit page find what they should."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from duly.core.rules.loader import load_rules
from duly.engine.runtime import BUNDLED_RULES, build_runtime
from duly.engine.service import Conflict, SubjectInput
from duly.store import audit
from duly.store.tables import audit_log, deliveries

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def rt(db_url: str, tmp_path: Path) -> Iterator[object]:
    runtime = build_runtime(load_rules(str(BUNDLED_RULES)), db_url)
    try:
        yield runtime
    finally:
        runtime.db.dispose()


def _count(rt: object) -> int:
    with rt.db.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() or 0)


def _pending_delivery(rt: object) -> int:
    eng = rt.engine  # type: ignore[attr-defined]
    due = eng.clock.now() + timedelta(days=10)
    eng.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-9",
            {"status": "sent", "due_at": due.isoformat()},
            {"customer": ["alice"]},
        )
    )
    with rt.db.connect() as conn:  # type: ignore[attr-defined]
        did = conn.execute(
            sa.select(deliveries.c.id).where(
                deliveries.c.subject == "invoice/INV-9", deliveries.c.state == "pending"
            )
        ).scalar()
    assert did is not None, "the bundled rules plan a reminder for an invoice due in 10 days"
    return int(did)


def test_an_entry_commits_with_its_action_and_names_the_subject(rt: object) -> None:
    eng = rt.engine  # type: ignore[attr-defined]
    from duly.core.model import Recipient

    eng.put_recipient(Recipient(id="alice", email="alice@example.test"))
    did = _pending_delivery(rt)
    entry = audit.Entry("ops", "send_now", "delivery", str(did), "Sent now", request_id="r1")
    with audit.recorded(rt.db, entry, lambda: T0):  # type: ignore[attr-defined]
        eng.send_now(did)
    with rt.db.connect() as conn:  # type: ignore[attr-defined]
        rows = audit.entries_of_subject(conn, "invoice/INV-9", 10)
        by_obj = audit.entries_of_object(conn, "delivery", str(did), 10)
    assert [r["action"] for r in rows] == ["send_now"]
    assert rows == by_obj
    assert rows[0]["actor"] == "ops" and rows[0]["at"] == T0 and rows[0]["request_id"] == "r1"

    # a refused action (cancel a cancelled delivery, twice) leaves no entry
    eng.cancel_delivery(did)
    before = _count(rt)
    with pytest.raises(Conflict):
        with audit.recorded(
            rt.db, audit.Entry("ops", "cancel", "delivery", str(did), "x"), lambda: T0
        ):  # type: ignore[attr-defined]
            eng.cancel_delivery(did)
    assert _count(rt) == before


def test_an_entry_rolls_back_with_a_failed_transaction(rt: object) -> None:
    from duly.store.db import write_transaction

    entry = audit.Entry("ops", "hold", "subject", "invoice/X", "held")
    with pytest.raises(RuntimeError):
        with audit.recorded(rt.db, entry, lambda: T0):  # type: ignore[attr-defined]
            with write_transaction(rt.db):  # type: ignore[attr-defined]
                raise RuntimeError("the action failed")
    assert _count(rt) == 0


def test_an_action_without_a_transaction_still_gets_its_entry(rt: object) -> None:
    with audit.recorded(rt.db, audit.Entry("cli", "x", "user", "bob", "nothing"), lambda: T0):  # type: ignore[attr-defined]
        pass
    assert _count(rt) == 1


def test_sizes_are_bounded(rt: object) -> None:
    big = {"text": "x" * 100_000}
    entry = audit.Entry("a" * 1000, "b" * 100, "template", "t" * 1000, "s" * 10_000, before=big)
    with rt.db.begin() as conn:  # type: ignore[attr-defined]
        audit.add_entry(conn, entry, T0)
        (row,) = audit.entries_page(conn, limit=5)
    assert len(row["summary"]) == audit.MAX_SUMMARY and row["summary"].endswith("…")
    assert len(row["actor"]) <= 220 and len(row["object_id"]) <= 400
    assert row["before"]["truncated"] is True and row["before"]["chars"] > 100_000
    assert len(json.dumps(row["before"])) < 200
    assert row["after"] is None


def test_the_audit_page_filters(rt: object) -> None:
    with rt.db.begin() as conn:  # type: ignore[attr-defined]
        for i in range(30):
            who = "ops" if i % 2 else "api key billing"
            audit.add_entry(
                conn,
                audit.Entry(
                    who,
                    "hold",
                    "subject",
                    f"invoice/INV-{i % 3}",
                    f"held {i}",
                    subject=f"invoice/INV-{i % 3}",
                ),  # fmt: skip
                T0 + timedelta(hours=i),
            )
    with rt.db.connect() as conn:  # type: ignore[attr-defined]
        ops = audit.entries_page(conn, actor="ops", limit=100)
        assert len(ops) == 15 and all(r["actor"] == "ops" for r in ops)
        inv0 = audit.entries_page(conn, object_id="invoice/INV-0", limit=100)
        assert len(inv0) == 10
        day = audit.entries_page(
            conn, start=T0 + timedelta(hours=5), end=T0 + timedelta(hours=10), limit=100
        )
        assert [r["summary"] for r in day] == [f"held {i}" for i in range(9, 4, -1)]
        first = audit.entries_page(conn, limit=10)
        more = audit.entries_page(conn, before_id=first[-1]["id"], limit=100)
        assert len(first) + len(more) == 30
        assert first[0]["id"] > first[-1]["id"] > more[0]["id"]
