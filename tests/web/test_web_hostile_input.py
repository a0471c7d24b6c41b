"""Hostile input to the web UI on SQLite and PostgreSQL: a NUL byte in any search box, form
field or path, and instants out of the supported range, are answered with a 4xx page naming
the field (never a 500, never a traceback in the log), and nothing is stored."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from duly.store.tables import reminders
from webui import Web, make_web  # tests/ is on sys.path (tests/conftest.py)

NUL = "a\x00b"


@pytest.fixture
def web(tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> Iterator[Web]:
    w = make_web(tmp_path, database=db_url)
    w.engine.put_recipient(Recipient("alice", email="alice@example.test"))
    w.engine.upsert_subject(
        SubjectInput("invoice", "INV-1", {"status": "sent", "due_at": "2031-01-10"},
                     {"customer": "alice"})
    )  # fmt: skip
    caplog.set_level(logging.ERROR)
    try:
        yield w
    finally:
        w.close()
    bugs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bugs, f"errors logged: {bugs}"


def refused(r: object, field: str) -> None:
    status = r.status_code  # type: ignore[attr-defined]
    text = r.text  # type: ignore[attr-defined]
    assert 400 <= status < 500, (status, text[:300])
    assert "text/html" in r.headers["content-type"]  # type: ignore[attr-defined]
    assert f"“{field}”" in text, text[:2000]


SEARCHES = [
    ("/subjects", ["kind", "key", "after"]),
    ("/recipients", ["q", "after"]),
    ("/deliveries", ["state", "rule", "channel", "recipient", "subject", "from", "to", "after"]),
    ("/upcoming", ["rule", "channel", "recipient", "kind", "from", "to", "after"]),
    ("/reminders", ["after", "q"]),
    ("/outbox", ["q", "after"]),
    ("/templates", ["q"]),
    ("/", ["q"]),
]


@pytest.mark.parametrize(("page", "params"), SEARCHES, ids=[p for p, _ in SEARCHES])
def test_nul_in_a_search_box_is_a_400_page_naming_it(
    web: Web, page: str, params: list[str]
) -> None:
    web.login()
    for param in params:
        r = web.get(page, params={param: NUL})
        refused(r, param)


@pytest.mark.parametrize(
    "path",
    [
        "/subjects/invoice/a%00b",
        "/subjects/inv%00oice/k",
        "/recipients/a%00b",
        "/templates/a%00b",
        "/templates/a%00b/history",
    ],
)
def test_nul_in_a_page_path_is_a_4xx_page(web: Web, path: str) -> None:
    web.login()
    r = web.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "text/html" in r.headers["content-type"]


def test_nul_at_sign_in_is_a_4xx_and_signs_nobody_in(web: Web) -> None:
    """(What the sign-in page says is its own: tests/web/test_web_signin.py.)"""
    for data in ({"username": NUL, "password": "x"}, {"username": "admin", "password": NUL}):
        r = web.post("/login", data)
        assert 400 <= r.status_code < 500, r.text[:300]
    assert web.get("/account", follow_redirects=False).status_code == 303


def _reminder_form(web: Web, **changes: str) -> dict[str, str]:
    send_at = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    form = {
        "title": "Call back",
        "message": "",
        "recipients": "alice",
        "send_at": send_at,
        "channels": "email",
        "subject": "",
        "category": "reminder",
    }
    form.update(changes)
    return form


def _reminder_count(web: Web) -> int:
    with web.rt.db.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(reminders)).scalar_one())


@pytest.mark.parametrize("field", ["title", "message", "recipients", "subject", "send_at"])
def test_nul_in_the_reminder_form_is_refused(web: Web, field: str) -> None:
    web.login()
    r = web.post("/reminders", _reminder_form(web, **{field: NUL}), token_from="/reminders/new")
    refused(r, field)
    assert _reminder_count(web) == 0


@pytest.mark.parametrize("send_at", ["9999-12-31T23:59", "0001-01-01T00:00", "1899-12-31T23:59"])
def test_a_reminder_form_send_at_out_of_range_is_refused(web: Web, send_at: str) -> None:
    web.login()
    r = web.post("/reminders", _reminder_form(web, send_at=send_at), token_from="/reminders/new")
    assert r.status_code == 400, r.text[:300]
    assert "Send time" in r.text
    assert _reminder_count(web) == 0


@pytest.mark.parametrize("until", ["9999-12-31T23:59", "0001-01-01T00:00"])
def test_a_hold_until_out_of_range_is_refused(web: Web, until: str) -> None:
    web.login()
    url = "/subjects/invoice/INV-1"
    r = web.post(url, {"action": "hold", "until": until}, token_from=url)
    assert 400 <= r.status_code < 500 or r.status_code == 303, r.text[:300]
    s = web.engine.get_subject("invoice", "INV-1")
    assert s is not None and s.hold_until is None


@pytest.mark.parametrize(
    ("page", "param", "value"),
    [
        ("/deliveries", "from", "9999-12-31"),
        ("/deliveries", "to", "9999-12-31"),
        ("/deliveries", "from", "0001-01-01"),
        ("/upcoming", "from", "9999-12-31T23:59"),
        ("/upcoming", "to", "0001-01-01T00:00"),
    ],
)
def test_a_date_filter_out_of_range_is_named(web: Web, page: str, param: str, value: str) -> None:
    web.login()
    r = web.get(page, params={param: value})
    assert r.status_code < 500, r.text[:300]


def test_nul_in_the_other_forms_is_refused(web: Web) -> None:
    web.login()
    url = "/subjects/invoice/INV-1"
    refused(web.post(url, {"action": "hold", "until": NUL}, token_from=url), "until")
    url = "/recipients/alice"
    refused(web.post(f"{url}/unsuppress", {"address": NUL}, token_from=url), "address")
    refused(web.post(f"{url}/consent", {"channel": NUL}, token_from=url), "channel")
    refused(web.post("/account/timezone", {"timezone": NUL}, token_from="/account"), "timezone")
