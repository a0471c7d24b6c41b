"""The single upsert's answer is built from what its transaction read and wrote
(``Engine.upsert_subject_for_answer``), not read again: through creates, unchanged repeats,
moves, cancels, re-plans of cancelled rows, holds, skipped and problem rows, rows being
sent, a one-off reminder about the subject and recipients in other timezones, its plan is
the one the store then holds (``plan_of_subject``), and the answer's bytes are the same."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from duly.api.v1.subjects import subject_answer
from duly.core.model import Recipient
from duly.engine.runtime import Runtime
from duly.engine.service import ReminderInput, SubjectInput
from duly.store.db import write_transaction
from duly.store.plan import ANSWER_COLS
from runtimes import runtime_from  # tests/runtimes.py

RULES = """
timezone: UTC
rules:
  - name: chase
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    template: plain
    steps:
      - {name: soon, at: "due_at - 3d", time: "09:00"}
      - {name: late, at: "due_at + 1d"}
      - {name: again, at: "due_at + 2d", repeat: {every: 1d, count: 3}}
      - {name: close, at: "due_at + 30d", set: {status: closed, note: "é"}}
  - name: windowed
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    template: plain
    window: {hours: "09:00-17:00"}
    steps:
      - {name: w, at: "due_at"}
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: plain
"""


@pytest.fixture
def rt(db_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = runtime_from(RULES, db_url, tmp_path)
    eng = runtime.engine
    eng.put_recipient(Recipient("c1", email="c1@example.test", timezone="Europe/Paris"))
    eng.put_recipient(Recipient("c2", email="c2@example.test", timezone="America/New_York"))
    eng.put_recipient(Recipient("c3", email="c3@example.test"))
    yield runtime
    runtime.db.dispose()


def put(rt: Runtime, key: str, **kw: Any) -> list[dict[str, Any]]:
    """Upsert; require the answer built to be the plan then stored, byte for byte."""
    eng = rt.engine
    s = SubjectInput("invoice", key, **kw)
    res, rows = eng.upsert_subject_for_answer(s)
    with eng.db.connect() as conn:
        stored = eng.store.plan_of_subject(conn, f"invoice/{key}")
    assert rows == [{c: r[c] for c in ANSWER_COLS} for r in stored]
    built = subject_answer("invoice", key, res, rows).model_dump_json(by_alias=True)
    again = subject_answer("invoice", key, res, stored).model_dump_json(by_alias=True)
    assert built == again
    return rows


def sent(due: datetime | str, **more: Any) -> dict[str, Any]:
    return {"status": "sent", "due_at": due if isinstance(due, str) else due.isoformat(), **more}


def test_the_answer_built_is_the_plan_stored(rt: Runtime) -> None:
    now = datetime.now(UTC)
    due = (now + timedelta(days=30)).replace(microsecond=123456)
    one = {"customer": "c1"}
    rows = put(rt, "A", attributes=sent(due), recipients=one)  # created
    assert len(rows) == 8 and any(r["step"] == "close" for r in rows)  # a `set` row
    assert put(rt, "A", attributes=sent(due), recipients=one) == rows  # unchanged
    put(rt, "A", attributes=sent(due + timedelta(hours=5)), recipients=one)  # moved
    put(rt, "A", attributes=sent(due), recipients={"customer": ["c1", "c2"]})  # added
    put(rt, "A", attributes=sent(due), recipients={"customer": "c2"})  # c1 removed
    assert put(rt, "A", attributes={"status": "paid", "due_at": due.isoformat()},
               recipients={"customer": "c2"})  # fmt: skip  # cancelled; the receipt
    rows = put(rt, "A", attributes=sent(due), recipients={"customer": "c2"})  # re-planned
    assert len(rows) >= 8
    put(rt, "A", attributes=sent(due), recipients=one, hold_until="indefinite")
    put(rt, "A", attributes=sent(due), recipients=one)  # the hold released (read again)
    put(rt, "A", attributes=sent(due), recipients=one, hold_until=due + timedelta(days=1))
    put(rt, "A", attributes=sent(due), recipients=one)
    put(rt, "A", attributes=sent(now - timedelta(days=1)), recipients=one)  # some passed
    put(rt, "A", attributes=sent("not a date"), recipients=one)  # problems
    put(rt, "A", attributes=sent(due), recipients={"customer": ["c1", "nobody"]})
    put(rt, "A", attributes={}, recipients={})  # nothing wanted
    put(rt, "D", attributes=sent("not a date"), recipients=one)  # created skipped
    put(rt, "E", attributes=sent(now - timedelta(days=3)), recipients=one)  # passed at once
    put(rt, "E", attributes=sent("2020-01-01"), recipients=one)


def test_rows_being_sent_and_a_reminder_about_the_subject(rt: Runtime) -> None:
    eng = rt.engine
    now = datetime.now(UTC)
    due = now + timedelta(days=3)
    put(rt, "B", attributes=sent(due), recipients={"customer": "c3"})
    eng.create_reminder(
        ReminderInput("Call", "Call them", now + timedelta(days=1), ["c3"], subject="invoice/B")
    )
    put(rt, "B", attributes=sent(due), recipients={"customer": "c3"})
    with write_transaction(eng.db) as conn:  # a dispatcher takes the first ones
        taken = eng.store.claim_due(conn, due, "w1", timedelta(minutes=5), 3)
    assert taken
    rows = put(rt, "B", attributes=sent(due + timedelta(days=1)), recipients={"customer": "c3"})
    assert any(r["state"] == "sending" for r in rows)
    put(rt, "B", attributes={"status": "paid"}, recipients={"customer": "c3"})


def test_a_subject_deleted_then_put_again(rt: Runtime) -> None:
    due = datetime.now(UTC) + timedelta(days=3)
    put(rt, "C", attributes=sent(due), recipients={"customer": "c1"})
    rt.engine.delete_subject("invoice", "C")
    rows = put(rt, "C", attributes=sent(due), recipients={"customer": "c1"})
    assert rows and all(r["state"] == "pending" for r in rows)


def test_text_that_array_and_json_syntax_would_misread(rt: Runtime) -> None:
    """Quotes, backslashes, braces, commas and the word NULL in a key and a recipient id
    are stored (and answered) as they are: on PostgreSQL the rows go in as array text."""
    odd = 'r"1\\,{x} NULL'
    rt.engine.put_recipient(Recipient(odd, email="odd@example.test"))
    due = datetime.now(UTC) + timedelta(days=3)
    key = 'K "q" \\ {a,b} NULL'
    rows = put(rt, key, attributes=sent(due), recipients={"customer": odd})
    assert {(r["subject"], r["recipient"]) for r in rows} == {
        (f"invoice/{key}", odd),
        (f"invoice/{key}", ""),  # the `set` row
    }
    put(rt, key, attributes=sent(due + timedelta(hours=1)), recipients={"customer": odd})
    with rt.engine.db.connect() as conn:
        stored = rt.engine.store.plan_of_subject(conn, f"invoice/{key}")
    assert [r["changes"] for r in stored if r["step"] == "close" and not r["recipient"]] == [
        {"status": "closed", "note": "é"}
    ]
