"""The header search (/search), a recipient's subjects, the subject list's title and
columns (rule file subjects:), on the bundled demo rules."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from webui import HOSTILE, Web, add_delivery, make_web


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = make_web(tmp_path)
    try:
        w.login()
        now = w.engine.clock.now()
        w.engine.put_recipient(Recipient("carol", name="Carol Díaz", email="carol@example.com"))
        w.engine.put_recipient(Recipient("carl", name="Carl King", email="carl@example.com"))
        due = (now + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for key, who, amount in (("INV-1004", "carol", 310.5), ("INV-2001", "carl", 99)):
            w.engine.upsert_subject(
                SubjectInput(
                    "invoice",
                    key,
                    {"status": "sent", "amount": amount, "currency": "EUR", "due_at": due},
                    {"customer": who},
                )
            )
        w.engine.upsert_subject(
            SubjectInput(
                "appointment",
                "APT-7",
                {"status": "confirmed", "service": "Dental check-up", "starts_at": due},
                {"client": "carol"},
            )
        )
        yield w
    finally:
        w.close()


def text_of(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_every_page_has_the_search_box(web: Web) -> None:
    for url in ("/", "/subjects", "/deliveries", "/recipients/carol"):
        page = web.get(url).text
        assert 'action="/search"' in page and 'name="q"' in page, url


@pytest.mark.parametrize("typed", ["diaz", "DÍAZ", "carol díaz", "carol@example.com"])
def test_one_match_opens_it(web: Web, typed: str) -> None:
    r = web.get("/search", params={"q": typed}, follow_redirects=False)
    assert r.status_code == 303, r.text[:300]
    assert r.headers["location"] == "/recipients/carol"


def test_an_exact_key_opens_the_subject(web: Web) -> None:
    r = web.get("/search", params={"q": "inv-1004"}, follow_redirects=False)
    assert r.headers["location"] == "/subjects/invoice/INV-1004"


def test_a_delivery_number_opens_it(web: Web) -> None:
    did = add_delivery(web, subject="invoice/INV-2001", recipient="carl")
    r = web.get("/search", params={"q": str(did)}, follow_redirects=False)
    assert r.headers["location"] == f"/deliveries/{did}"


def test_results_are_grouped_by_type(web: Web) -> None:
    add_delivery(web, subject="invoice/INV-1004", recipient="carol")
    r = web.get("/search", params={"q": "car"})  # carol, carl, and their ids on subjects
    assert r.status_code == 200
    page = r.text
    assert page.index('id="h-subjects"') < page.index('id="h-recipients"')
    text = text_of(page)
    assert "Carol Díaz" in text and "Carl King" in text
    assert "INV-1004" in text and "INV-2001" in text and "APT-7" in text
    # titles and columns of the rule file
    assert "Dental check-up" in text and "€310.50" in text


def test_no_jump_when_asked_for_all(web: Web) -> None:
    r = web.get("/search", params={"q": "diaz", "all": "1"})
    assert r.status_code == 200 and "Carol Díaz" in text_of(r.text)


def test_nothing_found_and_bounds(web: Web) -> None:
    r = web.get("/search", params={"q": "zzzz"})
    assert r.status_code == 200 and 'id="no-results"' in r.text
    r = web.get("/search", params={"q": "diaz " + "x" * 500})
    assert r.status_code == 200 and "Only the first 100 characters" in r.text
    assert web.get("/search", params={"q": "x" * 5000}).status_code in (400, 422)
    assert web.get("/search").status_code == 200


def test_search_text_is_escaped(web: Web) -> None:
    web.engine.put_recipient(Recipient("x1", name=HOSTILE))
    web.engine.put_recipient(Recipient("x2", name=HOSTILE + " two"))
    r = web.get("/search", params={"q": "script alert"})
    assert r.status_code == 200
    assert HOSTILE not in r.text and "&lt;script&gt;" in r.text


def test_a_recipients_page_lists_their_subjects_by_role(web: Web) -> None:
    page = web.get("/recipients/carol").text
    section = page[page.index('id="subjects"') : page.index('id="h-upcoming"')]
    assert 'href="/subjects/invoice/INV-1004"' in section
    assert 'href="/subjects/appointment/APT-7"' in section
    assert "INV-2001" not in section
    text = text_of(section)
    assert "customer" in text and "client" in text and "Dental check-up" in text
    other = web.get("/recipients/carl").text
    assert 'href="/subjects/invoice/INV-2001"' in other and "APT-7" not in other


def test_subject_list_shows_title_and_columns_not_json(web: Web) -> None:
    page = web.get("/subjects", params={"kind": "invoice"}).text
    head = text_of(page[page.index("<thead>") : page.index("</thead>")])
    for label in ("Customer", "Status", "Amount", "Due"):
        assert label in head
    row = page[page.index("INV-1004") :]
    row = text_of(row[: row.index("</tr>")])
    assert "Carol Díaz" in row  # the role column shows the recipient's name
    assert "€310.50" in row and "EUR 310.5, due" in row
    assert "{" not in row  # no raw JSON
    mixed = text_of(web.get("/subjects").text)  # two kinds: each row says its own
    assert "Service: Dental check-up" in mixed and "Amount: €310.50" in mixed
    detail = text_of(web.get("/subjects/appointment/APT-7").text)
    assert "Dental check-up" in detail and "Minutes" in detail
