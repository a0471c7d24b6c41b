"""The search's text normalization (duly.store.search): what makes "diaz" find "Carol Díaz"
the same way on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from duly.store.search import (
    MAX_TEXT,
    normalize,
    recipient_search_text,
    subject_search_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Carol Díaz", "carol diaz"),
        ("DIAZ", "diaz"),
        ("Straße", "strasse"),
        ("Øre Łódź", "ore lodz"),
        ("Ærø", "aero"),
        ("  INV-1004 ", "inv 1004"),
        ("carol.diaz@example.com", "carol diaz example com"),
        ("snake_case", "snake case"),
        ("ﬁne", "fine"),  # a ligature
        ("İstanbul", "istanbul"),
        ("%_\\", ""),  # nothing LIKE would read as a pattern is left
        ("Ελένη", "ελενη"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_query_and_stored_text_meet() -> None:
    stored = recipient_search_text(
        "carol", "Carol Díaz", "Carol.Diaz@Example.com", "+44 7700 900123"
    )
    for typed in (
        "diaz",
        "Díaz",
        "CAROL DIAZ",
        "carol.diaz@example",
        "7700 900123",
        "447700900123",
    ):
        assert normalize(typed) in stored, typed


def test_subject_text_has_words_values_and_roles() -> None:
    text = subject_search_text(
        "invoice",
        "INV-1004",
        {
            "customer_name": "Carol Díaz",
            "amount": 310.5,
            "paid": True,
            "due_at": "2026-12-08T00:00:00Z",
            "lines": [{"x": "hidden"}],
        },
        {"customer": ("carol",), "manager": ["a|b:c"]},
    )
    words, _, refs = text.partition(" |")
    assert words == "invoice inv 1004 carol diaz 310 5"  # no booleans, dates or nested values
    assert refs == "customer:carol|manager:a%7Cb%3Ac|"


def test_subject_text_is_bounded() -> None:
    text = subject_search_text("k", "x", {f"a{i}": "word " * 100 for i in range(50)}, {})
    assert len(text) <= MAX_TEXT
    many = subject_search_text("k", "x", {}, {"r": [f"id{i}" for i in range(500)]})
    assert many.count("|") == 51
