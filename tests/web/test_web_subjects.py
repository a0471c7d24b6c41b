"""The subjects pages: search, a subject's page, hold and clear hold, escaping, roles."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from markupsafe import escape

from duly.core.model import Recipient
from duly.engine.service import ReminderInput, SubjectInput
from duly.store.tables import deliveries, subjects
from duly.web.views.subjects import INDEFINITE
from webui import VIEWER, Web, make_web  # tests/webui.py

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _people(web: Web) -> None:
    web.engine.put_recipient(
        Recipient(id="alice", name="Alice", email="alice@example.com", timezone="Asia/Tokyo")
    )


def _invoice(web: Web, key: str, days: int = 10, **attrs: Any) -> None:
    """An invoice the demo rules plan two reminders for (due_at - 3d, due_at + 1d)."""
    now = web.engine.clock.now()
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            key,
            {"status": "sent", "due_at": _iso(now + timedelta(days=days)), **attrs},
            {"customer": "alice"},
        )
    )


def url(kind: str, key: str) -> str:
    return f"/subjects/{quote(kind, safe='')}/{quote(key, safe='')}"


def _hold_until(web: Web, key: str) -> datetime | None:
    with web.rt.db.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(subjects.c.hold_until).where(
                subjects.c.kind == "invoice", subjects.c.key == key
            )
        ).scalar_one()


@contextmanager
def counting(web: Web) -> Iterator[list[str]]:
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        seen.append(statement)

    sa.event.listen(web.rt.db, "before_cursor_execute", on)
    try:
        yield seen
    finally:
        sa.event.remove(web.rt.db, "before_cursor_execute", on)


def test_list_shows_subjects_with_their_pending_counts(web: Web) -> None:
    _people(web)
    _invoice(web, "INV-1")
    _invoice(web, "INV-2", days=-30)  # both reminders in the past: nothing pending
    web.login()
    r = web.get("/subjects")
    assert r.status_code == 200
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r'<a class="mono" href="[^"]+">([^<]+)</a>.*?<td class="num">(\d+)</td>',
            r.text,
            re.S,
        )
    }
    assert rows == {"INV-1": "2", "INV-2": "0"}
    assert '<option value="invoice"' in r.text and '<option value="appointment"' in r.text


def test_empty_list_says_how_subjects_get_there(web: Web) -> None:
    web.login()
    r = web.get("/subjects")
    assert "No subjects yet" in r.text and "PUT /v1/subjects" in r.text


def test_search_by_kind_and_key_with_like_characters_taken_literally(web: Web) -> None:
    _people(web)
    for k in ("ABC-100", "abc-200", "XYZ-1", "50%_off"):
        _invoice(web, k)
    now = web.engine.clock.now()
    web.engine.upsert_subject(
        SubjectInput("appointment", "ABC-9", {"starts_at": _iso(now + timedelta(days=3))})
    )
    web.login()

    def keys(q: str) -> set[str]:
        text = web.get("/subjects" + q).text
        return set(map(html.unescape, re.findall(r'class="mono"[^>]*>([^<]+)<', text)))

    assert keys("?key=abc") == {"ABC-100", "abc-200", "ABC-9"}  # substring, any case
    assert keys("?kind=invoice&key=abc") == {"ABC-100", "abc-200"}
    assert keys("?kind=appointment") == {"ABC-9"}
    assert keys("?key=%25") == {"50%_off"}  # a literal %, not "anything"
    assert keys("?key=_") == {"50%_off"}
    assert "No subject matches" in web.get("/subjects?key=nothing-like-it").text


def test_deleted_subjects_only_when_asked(web: Web) -> None:
    _people(web)
    _invoice(web, "GONE-1")
    _invoice(web, "KEPT-1")
    web.engine.delete_subject("invoice", "GONE-1")
    web.login()
    assert "GONE-1" not in web.get("/subjects").text
    r = web.get("/subjects?deleted=1")
    assert "GONE-1" in r.text and "deleted" in r.text and "KEPT-1" in r.text
    assert web.get(url("invoice", "GONE-1")).status_code == 404


def test_keyset_paging_and_one_count_query_per_page(web: Web) -> None:
    _people(web)
    web.engine.upsert_subjects(
        [
            SubjectInput("invoice", f"P-{i:03d}", {"status": "draft"}, {"customer": "alice"})
            for i in range(57)
        ]
    )
    web.login()
    web.get("/subjects")  # warm up (session, caches)
    with counting(web) as seen:
        first = web.get("/subjects")
    found = re.findall(r'class="mono" href="[^"]+">(P-\d+)<', first.text)
    assert len(found) == 50 and found[0] == "P-056"  # newest first
    # not N+1: a fixed number of statements whatever the page size
    assert len([s for s in seen if "FROM deliveries" in s]) == 1
    nxt = re.search(r'class="pager"><a class="btn" href="([^"]+)"', first.text)
    assert nxt
    second = web.get("/subjects" + html.unescape(nxt.group(1)))
    rest = re.findall(r'class="mono" href="[^"]+">(P-\d+)<', second.text)
    assert len(rest) == 7 and not set(rest) & set(found)
    assert 'class="pager"' not in second.text


def test_bad_query_parameters_get_a_400_page(web: Web) -> None:
    web.login()
    r = web.get("/subjects?after=abc")
    assert r.status_code == 400 and "text/html" in r.headers["content-type"]


def test_hostile_key_and_attributes_are_escaped(web: Web) -> None:
    _people(web)
    for bad in XSS:
        _invoice(web, bad, note=bad, **{bad: "x"})
    web.login()
    lst = web.get("/subjects")
    assert lst.status_code == 200
    for bad in XSS:
        assert bad not in lst.text
        assert str(escape(bad)) in lst.text
        page = web.get(url("invoice", bad))
        assert page.status_code == 200, bad
        assert bad not in page.text
        assert "<img src=x" not in page.text and "<script>alert" not in page.text
        # its link in the list is quoted, not raw
        assert f'href="{url("invoice", bad)}"' in lst.text


def test_key_with_slashes_spaces_and_other_characters(web: Web) -> None:
    _people(web)
    # (a literal "%" in a key works with a real server; Starlette's TestClient decodes the
    # path twice, so it is left to the browser test)
    key = "2026/Q1 acme ltd/#7?x=1&y=2 <b>"
    _invoice(web, key)
    web.login()
    r = web.get(url("invoice", key))
    assert r.status_code == 200
    assert str(escape(key)) in r.text
    assert r.text.count("invoice-reminders") == 2  # its two planned reminders
    assert f'action="{url("invoice", key)}"' in r.text  # the hold form posts back here
    assert f"/reminders/new?subject={quote('invoice/' + key, safe='')}" in r.text
    # an unknown one is a 404 page, also when it has slashes
    r = web.get(url("invoice", "2026/Q1 acme ltd"))
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert web.get("/subjects/nokind/x").status_code == 404


def test_subject_page_shows_attributes_recipients_plan_history_and_problems(web: Web) -> None:
    _people(web)
    _invoice(web, "INV-7", amount=12.5)
    now = web.engine.clock.now()
    # a broken date: a problem recorded for the subject
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-8",
            {"status": "sent", "due_at": "not a date"},
            {"customer": "alice"},
        )
    )
    # one cancelled row in the history: the reminder deleted
    rid = web.engine.create_reminder(
        ReminderInput(
            "Call Alice", "", now + timedelta(days=1), ["alice"], ["email"], "invoice/INV-7"
        )
    )
    web.engine.delete_reminder(rid)
    web.login()
    r = web.get(url("invoice", "INV-7"))
    assert "&#34;amount&#34;: 12.5" in r.text
    assert '<a href="/recipients/alice">alice</a>' in r.text and "(Alice)" in r.text
    plan = r.text[r.text.index('id="plan-h"') : r.text.index('id="hist-h"')]
    hist = r.text[r.text.index('id="hist-h"') : r.text.index('id="rem-h"')]
    assert plan.count('badge state-pending">Waiting to send') == 2
    assert "due-soon" in plan and "overdue" in plan
    assert 'state-cancelled">Cancelled</span> <span class="reason">By an operator, by hand' in hist
    assert "Tokyo" in plan or "JST" in plan  # the recipient's local time beside ours
    r8 = web.get(url("invoice", "INV-8"))
    assert "Problems with this subject" in r8.text and "due_at" in r8.text


def test_hold_and_clear_hold(web: Web) -> None:
    _people(web)
    _invoice(web, "H-1")
    u = url("invoice", "H-1")
    web.login()
    web.post("/account/timezone", {"timezone": "Europe/Paris"}, token_from="/account")
    until_local = (web.engine.clock.now() + timedelta(days=8)).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris")
    )
    value = until_local.strftime("%Y-%m-%dT%H:%M")
    r = web.post(u, {"action": "hold", "until": value}, token_from=u)
    assert r.status_code == 303 and r.headers["location"] == u
    stored = _hold_until(web, "H-1")
    assert stored is not None
    # read in the viewer's zone (Paris), stored as UTC
    assert stored == until_local.replace(second=0, microsecond=0).astimezone(UTC)
    page = web.get(u).text
    assert "On hold until" in page and "state-held" in page
    # the due-soon reminder (due in 7 days) waits for the end of the hold
    with web.rt.db.connect() as conn:
        due = conn.execute(
            sa.select(deliveries.c.due_at).where(
                deliveries.c.subject == "invoice/H-1", deliveries.c.step == "due-soon"
            )
        ).scalar_one()
    assert due == stored
    assert "planned <time" in page  # the moved row shows its planned time
    assert 'value="' + value + '"' in page  # the form shows the current hold
    assert "Clear hold" in page
    assert "held" in web.get("/subjects").text

    r = web.post(u, {"action": "hold", "indefinite": "1"}, token_from=u)
    assert r.status_code == 303
    assert _hold_until(web, "H-1") == INDEFINITE
    assert "On hold indefinitely" in web.get(u).text

    r = web.post(u, {"action": "clear"}, token_from=u)
    assert r.status_code == 303
    assert _hold_until(web, "H-1") is None
    page = web.get(u).text
    assert "Hold cleared" in page and "not held" in page and "Clear hold" not in page
    with web.rt.db.connect() as conn:
        due, planned = conn.execute(
            sa.select(deliveries.c.due_at, deliveries.c.planned_at).where(
                deliveries.c.subject == "invoice/H-1", deliveries.c.step == "due-soon"
            )
        ).one()
    assert due == planned  # back at its planned time


def test_hold_in_the_past_or_unreadable_is_refused_on_the_field(web: Web) -> None:
    _people(web)
    _invoice(web, "H-2")
    u = url("invoice", "H-2")
    web.login()
    for value, msg in (
        ("2020-01-01T10:00", "choose a time in the future"),
        ("next tuesday", "YYYY-MM-DD"),
        ("", "enter a date and time"),
    ):
        r = web.post(u, {"action": "hold", "until": value}, token_from=u)
        assert r.status_code == 400
        assert 'id="e-until"' in r.text and msg in r.text, value
    assert _hold_until(web, "H-2") is None
    assert web.post(url("invoice", "nope"), {"action": "clear"}, token_from=u).status_code == 404


def test_viewer_reads_but_cannot_hold(web: Web) -> None:
    _people(web)
    _invoice(web, "V-1")
    u = url("invoice", "V-1")
    web.login(VIEWER)
    page = web.get(u)
    assert page.status_code == 200
    assert "Hold until" not in page.text and "Only an operator or an admin" in page.text
    assert "New reminder for this subject" not in page.text
    r = web.post(u, {"action": "hold", "indefinite": "1"}, token_from=u)
    assert r.status_code == 403
    assert _hold_until(web, "V-1") is None


def test_hold_without_csrf_token_is_refused(web: Web) -> None:
    _people(web)
    _invoice(web, "C-1")
    u = url("invoice", "C-1")
    web.login()
    web.get(u)
    r = web.client.post(u, data={"action": "hold", "indefinite": "1"}, follow_redirects=False)
    assert r.status_code == 403
    assert _hold_until(web, "C-1") is None


def test_not_signed_in_sees_nothing(web: Web) -> None:
    _people(web)
    _invoice(web, "S-1")
    for u in ("/subjects", url("invoice", "S-1")):
        r = web.get(u, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_subject_page_lists_its_reminders_with_counts(web: Web) -> None:
    _people(web)
    web.engine.put_recipient(Recipient(id="bob", email="bob@example.com"))
    _invoice(web, "R-1")
    _invoice(web, "R-2")
    now = web.engine.clock.now()
    eng = web.engine
    a = eng.create_reminder(
        ReminderInput(
            "Chase <b>now</b>",
            "",
            now + timedelta(days=2),
            ["alice", "bob"],
            ["email", "inbox"],
            "invoice/R-1",
        )
    )
    b = eng.create_reminder(
        ReminderInput("Second", "", now + timedelta(days=3), ["alice"], ["email"], "invoice/R-1")
    )
    eng.create_reminder(
        ReminderInput(
            "Other subject", "", now + timedelta(days=3), ["alice"], ["email"], "invoice/R-2"
        )
    )
    gone = eng.create_reminder(
        ReminderInput("Deleted", "", now + timedelta(days=3), ["alice"], ["email"], "invoice/R-1")
    )
    eng.delete_reminder(gone)
    # one of a's deliveries sent, one overdue
    with web.rt.db.begin() as conn:
        ids = (
            conn.execute(
                sa.select(deliveries.c.id)
                .where(deliveries.c.rule == "@reminder", deliveries.c.occurrence == str(a))
                .order_by(deliveries.c.id)
            )
            .scalars()
            .all()
        )
        conn.execute(
            sa.update(deliveries).where(deliveries.c.id == ids[0]).values(state="sent", sent_at=now)
        )
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.id == ids[1])
            .values(due_at=now - timedelta(hours=1))
        )
    web.login()
    with counting(web) as seen:
        r = web.get(url("invoice", "R-1"))
    sec = r.text[r.text.index('id="rem-h"') :]
    assert "Chase &lt;b&gt;now&lt;/b&gt;" in sec and "Second" in sec
    assert "Other subject" not in sec and "Deleted" not in sec
    row_a = sec[sec.index(f'href="/reminders/{a}"') :].split("</tr>")[0]
    nums = re.findall(r'<td class="num">(?:<span class="warn">)?(\d+)', row_a)
    assert nums == ["4", "3", "1", "1"]  # total, pending, sent, overdue
    row_b = sec[sec.index(f'href="/reminders/{b}"') :].split("</tr>")[0]
    assert re.findall(r'<td class="num">(\d+)', row_b) == ["1", "1", "0", "0"]
    # counts of all the subject's reminders in one query
    assert len([s for s in seen if "FROM deliveries" in s and "GROUP BY" in s]) == 1


def test_subjects_pages_on_postgres(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        _people(web)
        key = "pg/key with space/" + XSS[1]
        _invoice(web, key)
        _invoice(web, "100%_PG")
        web.login()
        assert set(
            re.findall(r'class="mono" href="[^"]+">([^<]+)<', web.get("/subjects?key=%25_pg").text)
        ) == {"100%_PG"}
        lst = web.get("/subjects?kind=invoice")
        assert lst.status_code == 200 and XSS[1] not in lst.text
        u = url("invoice", key)
        page = web.get(u)
        assert page.status_code == 200 and page.text.count("badge state-pending") == 2
        r = web.post(u, {"action": "hold", "indefinite": "1"}, token_from=u)
        assert r.status_code == 303
        with web.rt.db.connect() as conn:
            hold = conn.execute(
                sa.select(subjects.c.hold_until).where(subjects.c.key == key)
            ).scalar_one()
        assert hold == INDEFINITE
        assert "On hold indefinitely" in web.get(u).text
    finally:
        web.close()


def test_a_hold_can_carry_a_note_kept_in_the_history(web: Web) -> None:
    _people(web)
    _invoice(web, "N-1")
    u = url("invoice", "N-1")
    web.login()
    page = web.get(u).text
    assert 'name="note"' in page and 'maxlength="300"' in page
    assert "Pause the reminders about this invoice" in page
    note = "Promised to pay by the 15th  <b>on the phone</b>"
    r = web.post(u, {"action": "hold", "indefinite": "1", "note": note + " x" * 400}, token_from=u)
    assert r.status_code == 303
    page = web.get(u).text
    # in the subject's history, escaped, whitespace folded, cut to 300 characters
    assert "Note: Promised to pay by the 15th &lt;b&gt;on the phone&lt;/b&gt;" in page
    assert "<b>on the phone</b>" not in page
    assert "x x x" in page and " x" * 200 not in page
