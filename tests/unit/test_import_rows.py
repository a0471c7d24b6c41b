"""Reading `duly import` files: CSV and JSON lines into batch-API items, refused records with
their line numbers, bounded lines."""

from __future__ import annotations

import io

import pytest

from duly.cli.import_rows import MAX_LINE, HeaderError, Rejected, Row, read_rows


def rows(text: str, fmt: str, **kw: str) -> list[Row | Rejected]:
    return list(read_rows(io.StringIO(text), fmt, **kw))  # type: ignore[arg-type]


def test_subject_csv_types_cells_by_header_and_leaves_empty_cells_out() -> None:
    text = (
        "key,customer_name,amount:number,count:int,paid:bool,tags:json,recipients.customer,due_at\n"
        "INV-1,Carol,120.50,3,yes,\"[\"\"a\"\"]\",carol,2027-01-10\n"
        "INV-2,Bob,,,no,,\"[\"\"bob\"\", \"\"ann\"\"]\",\n"
    )
    first, second = rows(text, "csv", kind="invoice")
    assert isinstance(first, Row) and isinstance(second, Row)
    assert first.line == 2 and second.line == 3
    assert first.type == "subject"
    assert first.item["kind"] == "invoice" and first.item["key"] == "INV-1"
    assert first.item["attributes"] == {
        "customer_name": "Carol",
        "amount": 120.5,
        "count": 3,
        "paid": True,
        "tags": ["a"],
        "due_at": "2027-01-10",
    }
    assert first.item["recipients"] == {"customer": "carol"}
    assert second.item["attributes"] == {"customer_name": "Bob", "paid": False}
    assert second.item["recipients"] == {"customer": ["bob", "ann"]}


def test_a_bad_cell_is_refused_with_its_line_and_column_and_the_rest_go_on() -> None:
    text = "key,amount:number,paid:bool\nA,1,yes\nB,lots,yes\nC,2,perhaps\nD,3,no\n"
    out = rows(text, "csv", kind="invoice")
    assert [type(r).__name__ for r in out] == ["Row", "Rejected", "Rejected", "Row"]
    bad = [r for r in out if isinstance(r, Rejected)]
    assert [(r.line, r.field) for r in bad] == [(3, "amount:number"), (4, "paid:bool")]
    assert "'lots' is not a number" in bad[0].message


def test_line_numbers_count_quoted_newlines_inside_a_record() -> None:
    text = 'key,note\nA,"two\nlines"\nB,x,extra\nC,ok\n'
    out = rows(text, "csv", kind="job")
    assert [(type(r).__name__, r.line) for r in out] == [("Row", 2), ("Rejected", 4), ("Row", 5)]
    assert "3 cells where the header has 2" in out[1].message  # type: ignore[union-attr]


def test_recipient_csv_columns_and_consent() -> None:
    text = (
        "id,name,email,timezone,addresses.whatsapp,consent.promotional,consent.channels.sms\n"
        "carol,Carol Díaz,carol@example.test,Europe/Madrid,+34600000000,no,yes\n"
    )
    (row,) = rows(text, "csv")
    assert isinstance(row, Row) and row.type == "recipient"
    assert row.item["addresses"] == {"whatsapp": "+34600000000"}
    assert row.item["consent"] == {"promotional": False, "channels": {"sms": True}}
    assert row.item["name"] == "Carol Díaz"


def test_an_unknown_recipient_column_is_a_header_error_naming_it() -> None:
    with pytest.raises(HeaderError, match="column 3: 'favourite_colour'"):
        rows("id,name,favourite_colour\nx,y,z\n", "csv")


def test_a_header_with_neither_key_nor_id_is_refused() -> None:
    with pytest.raises(HeaderError, match="'key' column"):
        rows("name,email\nx,y\n", "csv")


def test_jsonl_detects_each_line_and_refuses_bad_ones_alone() -> None:
    text = "\n".join(
        [
            '{"id": "carol", "name": "Carol"}',
            '{"key": "INV-1", "attributes": {"status": "sent"}}',
            "",
            "not json",
            "[1, 2]",
            '{"type": "parcel", "id": "x"}',
            '{"id": "dan", "shoe_size": 44}',
            '{"type": "subject", "kind": "invoice", "key": "INV-2"}',
        ]
    )
    out = rows(text, "jsonl", kind="invoice")
    got = [(type(r).__name__, r.line) for r in out]
    assert got == [("Row", 1), ("Row", 2), ("Rejected", 4), ("Rejected", 5), ("Rejected", 6),
                   ("Rejected", 7), ("Row", 8)]
    assert out[1].item["kind"] == "invoice"  # type: ignore[union-attr]
    assert out[5].field == "shoe_size"  # type: ignore[union-attr]
    assert out[4].field == "type"  # type: ignore[union-attr]


def test_an_overlong_json_line_is_refused_without_reading_it_whole() -> None:
    long = '{"id": "' + "x" * (MAX_LINE + 10) + '"}'
    out = rows(long + '\n{"id": "ok"}\n', "jsonl")
    assert [(type(r).__name__, r.line) for r in out] == [("Rejected", 1), ("Row", 2)]
    assert len(out[0].raw) <= 200
