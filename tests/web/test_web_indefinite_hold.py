"""An indefinite hold on the pages (spec/rules.md "Hold"), on SQLite and PostgreSQL: the
subject shows "indefinitely (until cleared)", what waits for the hold shows "until the hold
is cleared" — never the instant the store keeps for it (year 9000) — and it is listed
neither under a day on Upcoming nor as a rule's next occurrence."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from duly.core.model import HOLD_INDEFINITE, Recipient
from duly.engine.service import SubjectInput
from duly.store.tables import deliveries
from webui import Web, make_web  # tests/webui.py


@pytest.fixture
def web(tmp_path: Path, db_url: str) -> Iterator[Web]:
    w = make_web(tmp_path, database=db_url)
    try:
        yield w
    finally:
        w.close()


def _held(web: Web, key: str, hold: object = "indefinite", days: int = 10) -> None:
    now = web.engine.clock.now()
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            key,
            {"status": "sent", "due_at": (now + timedelta(days=days)).isoformat()},
            {"customer": "alice"},
            hold,  # type: ignore[arg-type]
        )
    )


def _setup(web: Web) -> int:
    web.engine.put_recipient(
        Recipient(id="alice", name="Alice", email="alice@example.com", timezone="Asia/Tokyo")
    )
    _held(web, "IH-1")
    with web.rt.db.connect() as conn:
        ids = conn.execute(
            sa.select(deliveries.c.id).where(
                deliveries.c.subject == "invoice/IH-1",
                deliveries.c.state == "pending",
                deliveries.c.due_at == HOLD_INDEFINITE,
            )
        ).all()
    assert len(ids) == 1  # the latest waits; the other was skipped (held)
    web.login()
    return int(ids[0][0])


def _no_made_up_date(page: str) -> None:
    assert "9000" not in page, re.findall(r".{80}9000.{80}", page)


def test_the_subject_page_and_list_say_until_cleared(web: Web) -> None:
    _setup(web)
    u = f"/subjects/invoice/{quote('IH-1')}"
    page = web.get(u).text
    _no_made_up_date(page)
    assert "On hold indefinitely (until cleared)" in page
    assert "until the hold is cleared" in page
    assert "waits for the hold to be cleared" in page
    listing = web.get("/subjects").text
    _no_made_up_date(listing)
    assert "indefinitely" in listing


def test_upcoming_groups_them_apart_and_rules_do_not_list_them(web: Web) -> None:
    _setup(web)
    _held(web, "IH-2", hold=None)  # a plain one: its reminders are under their days
    page = web.get("/upcoming").text
    _no_made_up_date(page)
    assert "Held until cleared" in page
    days = re.findall(r'<h2 class="day-heading"[^>]*>(.*?)</h2>', page, re.S)
    assert days[-1].startswith("Held until cleared"), days  # last, after every day
    assert all("Held until cleared" not in d for d in days[:-1])
    rules = web.get("/rules").text
    _no_made_up_date(rules)
    assert "until the hold is cleared" not in rules  # no next occurrence


def test_the_delivery_page_and_dashboard_say_until_cleared(web: Web) -> None:
    did = _setup(web)
    page = web.get(f"/deliveries/{did}").text
    _no_made_up_date(page)
    assert "until the hold is cleared" in page
    for url in ("/", "/deliveries", "/recipients/alice"):
        r = web.get(url)
        assert r.status_code == 200, url
        _no_made_up_date(r.text)


def test_hold_indefinitely_then_clear_from_the_page(web: Web) -> None:
    _setup(web)
    _held(web, "IH-3", hold=None, days=2)  # due-soon is overdue-ish: planned in the past
    u = f"/subjects/invoice/{quote('IH-3')}"
    r = web.post(u, {"action": "hold", "indefinite": "1"}, token_from=u)
    assert r.status_code == 303
    page = web.get(u).text
    _no_made_up_date(page)
    assert "On hold indefinitely" in page
    r = web.post(u, {"action": "clear"}, token_from=u)
    assert r.status_code == 303
    with web.rt.db.connect() as conn:
        dues = (
            conn.execute(
                sa.select(deliveries.c.due_at).where(
                    deliveries.c.subject == "invoice/IH-3", deliveries.c.state == "pending"
                )
            )
            .scalars()
            .all()
        )
    assert dues and all(d < datetime(3000, 1, 1, tzinfo=UTC) for d in dues)
    _no_made_up_date(web.get(u).text)
