"""The deliveries list's recipient= and subject= filters take what people type: a name
without its accent or capitals, a key without its kind (or the kinds to choose from)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from webui import Web, add_delivery, make_web


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = make_web(tmp_path)
    try:
        w.login()
        w.engine.put_recipient(Recipient("carol", name="Carol Díaz", email="carol@example.com"))
        w.engine.put_recipient(Recipient("carl", name="Carl King"))
        w.engine.put_recipient(Recipient("carol2", name="Carol Smith"))
        for kind, key in (("invoice", "INV-1004"), ("invoice", "INV-7"), ("quote", "INV-7")):
            w.engine.upsert_subject(SubjectInput(kind, key, {"status": "draft"}, {}))
        yield w
    finally:
        w.close()


def listed(web: Web, **params: str) -> tuple[int, list[int], str]:
    r = web.get("/deliveries", params=params)
    ids = [int(x) for x in re.findall(r'href="/deliveries/(\d+)"', r.text)]
    return r.status_code, sorted(set(ids)), r.text


def test_recipient_by_name_any_case_or_accent(web: Web) -> None:
    mine = add_delivery(web, recipient="carol")
    add_delivery(web, recipient="carl")
    for typed in ("carol", "Carol Díaz", "carol diaz", "DIAZ", "carol@example.com"):
        status, ids, _ = listed(web, recipient=typed)
        assert (status, ids) == (200, [mine]), typed


def test_a_name_several_recipients_share_asks_which(web: Web) -> None:
    status, _, page = listed(web, recipient="Carol")  # carol's id is exactly that: hers
    assert status == 200
    status, _, page = listed(web, recipient="car")
    assert status == 400
    assert "several recipients match" in page and "carol2 (Carol Smith)" in page


def test_an_unknown_recipient_is_taken_as_an_id(web: Web) -> None:
    gone = add_delivery(web, recipient="old-customer")
    assert listed(web, recipient="old-customer")[:2] == (200, [gone])


def test_subject_by_key_alone(web: Web) -> None:
    mine = add_delivery(web, subject="invoice/INV-1004")
    add_delivery(web, subject="invoice/INV-7")
    for typed in ("INV-1004", "inv-1004", "invoice/INV-1004"):
        status, ids, _ = listed(web, subject=typed)
        assert (status, ids) == (200, [mine]), typed


def test_a_key_of_several_kinds_offers_the_kinds(web: Web) -> None:
    status, _, page = listed(web, subject="INV-7")
    assert status == 400
    assert "invoice/INV-7" in page and "quote/INV-7" in page
    quoted = add_delivery(web, subject="quote/INV-7")
    assert listed(web, subject="quote/INV-7")[:2] == (200, [quoted])


def test_an_unknown_key_says_so_and_kind_key_stays_as_typed(web: Web) -> None:
    status, _, page = listed(web, subject="INV-99")
    assert status == 400 and "no subject has the key INV-99" in page
    old = add_delivery(web, subject="invoice/INV-0001")  # a subject no longer stored
    assert listed(web, subject="invoice/INV-0001")[:2] == (200, [old])
