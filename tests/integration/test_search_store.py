"""duly.store.search on SQLite and PostgreSQL: rows written through the store's own write
paths are found as people type (case, accents, key without kind), deleted subjects are not,
results are bounded, and migration 0012 fills the text of rows that existed before it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from duly.core.model import Recipient, Subject
from duly.store.db import downgrade, make_engine, migrate, write_transaction
from duly.store.search import (
    CANDIDATES,
    exact_matches,
    find_recipients,
    find_subjects_by_key,
    search_all,
    subjects_of_recipient,
)
from duly.store.store import Store
from duly.store.tables import deliveries

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def store_of(engine: Engine) -> Store:
    return Store(postgres=engine.dialect.name == "postgresql")


def put(engine: Engine, *subjects: Subject, people: tuple[Recipient, ...] = ()) -> None:
    st = store_of(engine)
    with write_transaction(engine) as conn:
        for p in people:
            st.put_recipient(conn, p, NOW)
        old = st.get_subjects(conn, [(s.kind, s.key) for s in subjects])
        st.save_subjects(conn, [(old.get((s.kind, s.key)), s) for s in subjects], NOW)


def invoice(key: str, who: str = "carol", **attrs: Any) -> Subject:
    return Subject("invoice", key, {"status": "sent", **attrs}, {"customer": (who,)})


CAROL = Recipient("carol", name="Carol Díaz", email="carol@example.com", phone="+44 7700 900123")
CARL = Recipient("carl", name="Carl King", email="carl@example.com")


def add_delivery(engine: Engine, subject: str, message_id: str | None = None) -> int:
    with write_transaction(engine) as conn:
        return int(
            conn.execute(
                sa.insert(deliveries).values(
                    rule="r", step="", occurrence="0", subject=subject, recipient="carol",
                    channel="email", state="sent", category="reminder", priority=0,
                    planned_at=NOW, due_at=NOW, attempts=1, error_count=0,
                    message_id=message_id, created_at=NOW, updated_at=NOW,
                )
            ).inserted_primary_key[0]
        )  # fmt: skip


def test_recipients_by_name_without_accent_or_case(db_engine: Engine) -> None:
    put(db_engine, people=(CAROL, CARL))
    with db_engine.connect() as conn:
        for typed in ("diaz", "DÍAZ", "carol diaz", "Díaz Carol", "7700 900123", "447700900123"):
            found, more = find_recipients(conn, typed)
            assert [r["id"] for r in found] == ["carol"], typed
            assert not more
        found, _ = find_recipients(conn, "car")
        assert {r["id"] for r in found} == {"carol", "carl"}
        assert not any(r["exact"] for r in found)
        found, _ = find_recipients(conn, "carol@example.com")
        assert found[0]["id"] == "carol" and found[0]["exact"]
        assert find_recipients(conn, "nobody")[0] == []


def test_renaming_a_recipient_changes_what_finds_it(db_engine: Engine) -> None:
    put(db_engine, people=(CAROL,))
    put(db_engine, people=(Recipient("carol", name="Carol Smith"),))
    with db_engine.connect() as conn:
        assert find_recipients(conn, "diaz")[0] == []
        assert [r["id"] for r in find_recipients(conn, "smith")[0]] == ["carol"]


def test_subjects_by_key_kind_and_attributes(db_engine: Engine) -> None:
    put(
        db_engine,
        invoice("INV-1004", customer_name="Carol Díaz", amount=310),
        invoice("INV-10040", who="carl"),
        Subject("quote", "INV-1004", {}, {}),
        Subject("appointment", "APT-7", {"service": "Dental check-up"}, {"client": ("carol",)}),
    )
    with db_engine.connect() as conn:
        by_key = find_subjects_by_key(conn, "INV-1004")
        assert [(s["kind"], s["key"]) for s in by_key] == [
            ("invoice", "INV-1004"),
            ("quote", "INV-1004"),
        ]
        assert [s["kind"] for s in find_subjects_by_key(conn, "invoice/INV-1004")] == ["invoice"]
        assert [s["key"] for s in find_subjects_by_key(conn, "inv-1004")] == ["INV-1004"] * 2
        assert find_subjects_by_key(conn, "INV-99") == []

        res = search_all(conn, "inv-1004")
        assert [(s["kind"], s["key"], s["exact"]) for s in res["subjects"]] == [
            ("invoice", "INV-1004", True),
            ("quote", "INV-1004", True),
            ("invoice", "INV-10040", False),
        ]
        assert [s["key"] for s in search_all(conn, "diaz")["subjects"]] == ["INV-1004"]
        assert [s["key"] for s in search_all(conn, "dental")["subjects"]] == ["APT-7"]
        assert search_all(conn, "diaz")["recipients"] == []  # no recipient rows written here


def test_deleted_subjects_are_not_found_and_come_back(db_engine: Engine) -> None:
    put(db_engine, invoice("INV-1"))
    st = store_of(db_engine)
    with write_transaction(db_engine) as conn:
        rec = st.get_subjects(conn, [("invoice", "INV-1")])[("invoice", "INV-1")]
        st.mark_subject_deleted(conn, rec, NOW)
    with db_engine.connect() as conn:
        assert search_all(conn, "INV-1")["subjects"] == []
        assert find_subjects_by_key(conn, "INV-1") == []
        assert subjects_of_recipient(conn, "carol") == ([], False)
    put(db_engine, invoice("INV-1"))
    with db_engine.connect() as conn:
        assert [s["key"] for s in search_all(conn, "INV-1")["subjects"]] == ["INV-1"]


def test_subjects_of_a_recipient_by_role(db_engine: Engine) -> None:
    odd = "a|b:c%_"
    put(
        db_engine,
        invoice("INV-1"),
        invoice("INV-2", who="carl"),
        Subject("case", "C-1", {}, {"client": ("carol",), "manager": ("carol", odd)}),
        Subject("case", "C-2", {}, {"manager": (odd,)}),
        Subject("case", "C-3", {}, {"manager": ("a|b:cX%_",)}),
    )
    with db_engine.connect() as conn:
        found, more = subjects_of_recipient(conn, "carol")
        assert [(s["key"], s["roles"]) for s in found] == [
            ("C-1", ["client", "manager"]),
            ("INV-1", ["customer"]),
        ]
        assert not more
        assert [s["key"] for s in subjects_of_recipient(conn, odd)[0]] == ["C-2", "C-1"]
        assert subjects_of_recipient(conn, "car")[0] == []  # a whole id, not a part


def test_deliveries_by_id_message_id_and_subject_key(db_engine: Engine) -> None:
    put(db_engine, invoice("INV-7"), invoice("INV-70"))
    d1 = add_delivery(db_engine, "invoice/INV-7", "<abc.123@duly>")
    add_delivery(db_engine, "invoice/INV-70")
    with db_engine.connect() as conn:
        assert [d["id"] for d in search_all(conn, str(d1))["deliveries"]] == [d1]
        assert search_all(conn, str(d1))["deliveries"][0]["exact"]
        for typed in ("abc.123@duly", "<abc.123@duly>"):
            res = search_all(conn, typed)
            assert [d["id"] for d in res["deliveries"]] == [d1], typed
            assert res["exact"] == 1
        res = search_all(conn, "INV-7")
        assert [d["id"] for d in res["deliveries"]] == [d1]  # INV-70's are not INV-7's
        assert not res["deliveries"][0]["exact"]
        assert res["exact"] == 1  # the subject


def test_results_and_input_are_bounded(db_engine: Engine) -> None:
    put(db_engine, *[invoice(f"INV-{i}", customer_name="Acme") for i in range(CANDIDATES + 30)])
    with db_engine.connect() as conn:
        res = search_all(conn, "acme", limit=20)
        assert len(res["subjects"]) == 20 and res["more"]["subjects"]
        long = search_all(conn, "acme " * 1000)  # cut to MAX_QUERY characters, MAX_WORDS words
        assert len(long["subjects"]) == 20
        assert search_all(conn, "   ") == {
            "subjects": [], "recipients": [], "deliveries": [],
            "more": {"subjects": False, "recipients": False, "deliveries": False}, "exact": 0,
        }  # fmt: skip
        assert search_all(conn, "%")["subjects"] == []  # not a pattern


def test_migration_fills_the_text_of_existing_rows(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        downgrade(engine, "0010")
        with write_transaction(engine) as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO recipients (id, name, addresses, consent, created_at, updated_at)"
                    " VALUES ('carol', 'Carol Díaz', '{}', '{}', :t, :t)"
                ),
                {"t": NOW.replace(tzinfo=None)},
            )
            for key, deleted in (("INV-1", None), ("INV-2", NOW.replace(tzinfo=None))):
                conn.execute(
                    sa.text(
                        "INSERT INTO subjects (kind, key, attributes, recipients, revision,"
                        " acknowledged, deleted_at, created_at, updated_at) VALUES ('invoice',"
                        ' :k, \'{"customer_name": "Carol D\\u00edaz"}\', \'{"customer": ["carol"]}\','
                        " 1, '[]', :d, :t, :t)"
                    ),
                    {"k": key, "d": deleted, "t": NOW.replace(tzinfo=None)},
                )
        migrate(engine)
        with engine.connect() as conn:
            res = search_all(conn, "diaz")
            assert [s["key"] for s in res["subjects"]] == ["INV-1"]
            assert [r["id"] for r in res["recipients"]] == ["carol"]
            assert [s["key"] for s in subjects_of_recipient(conn, "carol")[0]] == ["INV-1"]
    finally:
        engine.dispose()


def test_exact_matches_by_index(db_engine: Engine) -> None:
    put(db_engine, invoice("INV-7"), Subject("quote", "INV-7", {}, {}), invoice("INV-8"),
        people=(CAROL,))  # fmt: skip
    did = add_delivery(db_engine, "invoice/INV-8", "<m-1@duly>")
    with db_engine.connect() as conn:
        assert exact_matches(conn, "INV-8") == [("subject", "invoice/INV-8")]
        assert exact_matches(conn, "quote/INV-7") == [("subject", "quote/INV-7")]
        assert len(exact_matches(conn, "INV-7")) == 2  # two kinds: the page lists them
        assert exact_matches(conn, "carol") == [("recipient", "carol")]
        assert exact_matches(conn, str(did)) == [("delivery", str(did))]
        assert exact_matches(conn, "m-1@duly") == [("delivery", str(did))]
        assert exact_matches(conn, "diaz") == []  # a word: that is a search
        assert exact_matches(conn, "") == []
