"""One-off reminders pages: list, create with per-field messages,
detail, edit, delete, send now; sent ones read-only; roles and CSRF."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from markupsafe import escape

from duly.core.model import Recipient
from duly.engine.service import ReminderInput, SubjectInput
from duly.store.tables import deliveries, reminders
from webui import VIEWER, Web, make_web  # tests/webui.py

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
ERR = re.compile(r'<p class="error" id="e-(\w+)">([^<]*)</p>')


def _people(web: Web) -> None:
    web.engine.put_recipient(
        Recipient(id="alice", name="Alice", email="alice@example.com", timezone="Asia/Tokyo")
    )
    web.engine.put_recipient(Recipient(id="bob", name="Bob", email="bob@example.com"))


def _local(web: Web, delta: timedelta, tz: str = "Europe/London") -> str:
    """A datetime-local value ``delta`` from now in ``tz`` (the demo rules' zone, which is
    the viewer's when neither the user nor the browser says otherwise)."""
    return (web.engine.clock.now() + delta).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M")


def _form(web: Web, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Call the client",
        "message": "Ask about the delivery.",
        "send_at": _local(web, timedelta(days=2)),
        "recipients": "alice, bob",
        "channels": ["email", "inbox"],
        "subject": "",
        "category": "reminder",
    }
    data.update(over)
    return data


def _errors(text: str) -> dict[str, str]:
    return {k: v for k, v in ERR.findall(text)}


def _create(web: Web, **over: Any) -> int:
    r = web.post("/reminders", _form(web, **over), token_from="/reminders/new")
    assert r.status_code == 303, _errors(r.text) or r.text[:500]
    m = re.fullmatch(r"/reminders/(\d+)", r.headers["location"])
    assert m
    return int(m.group(1))


def _rows(web: Web, rid: int) -> list[dict[str, Any]]:
    with web.rt.db.connect() as conn:
        return [
            dict(x)
            for x in conn.execute(
                sa.select(deliveries)
                .where(deliveries.c.rule == "@reminder", deliveries.c.occurrence == str(rid))
                .order_by(deliveries.c.id)
            ).mappings()
        ]


def _mark_sent(web: Web, did: int) -> None:
    now = web.engine.clock.now()
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.id == did)
            .values(state="sent", sent_at=now, attempts=1)
        )


def test_empty_list_explains_one_off_reminders(web: Web) -> None:
    web.login()
    r = web.get("/reminders")
    assert r.status_code == 200
    assert "No one-off reminders yet" in r.text and 'href="/reminders/new"' in r.text


def test_create_shows_the_reminder_and_the_list_counts_it(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    rows = _rows(web, rid)
    assert {(x["recipient"], x["channel"]) for x in rows} == {
        ("alice", "email"),
        ("alice", "inbox"),
        ("bob", "email"),
        ("bob", "inbox"),
    }
    page = web.get(f"/reminders/{rid}").text
    assert "Call the client" in page and "Ask about the delivery." in page
    assert page.count('badge state-pending">Waiting to send') == 5  # the status and 4 rows
    for x in rows:
        assert f'href="/deliveries/{x["id"]}"' in page
    assert "JST" in page  # alice's local time beside the viewer's
    lst = web.get("/reminders").text
    row = lst[lst.index(f'href="/reminders/{rid}"') :].split("</tr>")[0]
    assert re.findall(r'<td class="num">(\d+)', row) == ["4", "4", "0", "0", "0"]


def test_the_three_u56_checks_each_on_its_field_and_input_kept(web: Web) -> None:
    _people(web)
    web.login()
    past = _local(web, -timedelta(hours=1))
    r = web.post(
        "/reminders",
        {"title": "Kept <title>", "message": "kept message", "send_at": past, "recipients": ""},
        token_from="/reminders/new",
    )
    assert r.status_code == 400
    errs = _errors(r.text)
    assert set(errs) == {"send_at", "channels", "recipients"}
    assert "in the past" in errs["send_at"]
    assert "at least one channel" in errs["channels"]
    assert "at least one recipient" in errs["recipients"]
    assert 'value="Kept &lt;title&gt;"' in r.text and ">kept message</textarea>" in r.text
    assert f'value="{past}"' in r.text
    assert 'aria-invalid="true"' in r.text
    with web.rt.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reminders)).scalar() == 0


def test_unknown_recipient_channel_and_subject_and_bad_values(web: Web) -> None:
    _people(web)
    web.login()
    r = web.post(
        "/reminders",
        _form(web, recipients="alice zed", channels=["email", "fax"], subject="invoice/NOPE"),
        token_from="/reminders/new",
    )
    assert r.status_code == 400
    errs = _errors(r.text)
    assert "&#39;zed&#39;" in errs["recipients"] and "alice" not in errs["recipients"]
    assert "fax" in errs["channels"]
    assert "no subject invoice/NOPE" in errs["subject"]
    assert 'value="alice zed"' in r.text
    assert re.search(r'value="email" checked', r.text) and not re.search(
        r'value="inbox" checked', r.text
    )
    r = web.post(
        "/reminders",
        _form(web, title="  ", send_at="soon", subject="no-slash", category="spam"),
        token_from="/reminders/new",
    )
    errs = _errors(r.text)
    assert set(errs) == {"title", "send_at", "subject", "category"}
    assert "KIND/KEY" in errs["subject"]


def test_send_time_is_read_in_the_viewers_zone(web: Web) -> None:
    _people(web)
    web.login()
    web.post("/account/timezone", {"timezone": "America/New_York"}, token_from="/account")
    value = _local(web, timedelta(days=3), "America/New_York")
    new = web.get("/reminders/new").text
    assert "America/New_York" in new
    rid = _create(web, send_at=value)
    with web.rt.db.connect() as conn:
        send_at = conn.execute(
            sa.select(reminders.c.send_at).where(reminders.c.id == rid)
        ).scalar_one()
    assert send_at.astimezone(ZoneInfo("America/New_York")).strftime("%Y-%m-%dT%H:%M") == value


def test_hostile_title_message_and_subject_are_escaped(web: Web) -> None:
    _people(web)
    web.engine.upsert_subject(SubjectInput("invoice", XSS[1], {}, {"customer": "alice"}))
    web.login()
    rid = _create(web, title=XSS[0], message=XSS[1], subject="invoice/" + XSS[1])
    for page in (web.get(f"/reminders/{rid}").text, web.get("/reminders").text):
        for bad in XSS:
            assert bad not in page
        assert str(escape(XSS[0])) in page
    edit = web.get(f"/reminders/{rid}/edit").text
    assert XSS[0] not in edit and XSS[1] not in edit


def test_edit_changes_the_reminder_and_replans(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    form = web.get(f"/reminders/{rid}/edit").text
    assert 'value="Call the client"' in form and 'value="alice, bob"' in form
    r = web.post(
        f"/reminders/{rid}/edit",
        _form(web, title="Call again", recipients="bob", channels=["email"]),
        token_from=f"/reminders/{rid}/edit",
    )
    assert r.status_code == 303 and r.headers["location"] == f"/reminders/{rid}"
    rows = _rows(web, rid)
    live = [(x["recipient"], x["channel"]) for x in rows if x["state"] == "pending"]
    assert live == [("bob", "email")]
    assert {x["state"] for x in rows if x["recipient"] == "alice"} == {"cancelled"}
    assert "Call again" in web.get(f"/reminders/{rid}").text
    # validation on edit too
    r = web.post(
        f"/reminders/{rid}/edit",
        _form(web, send_at=_local(web, -timedelta(days=1)), channels=[]),
        token_from=f"/reminders/{rid}/edit",
    )
    assert r.status_code == 400 and set(_errors(r.text)) == {"send_at", "channels"}


def test_delete_cancels_its_deliveries(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    r = web.post(f"/reminders/{rid}/delete", token_from=f"/reminders/{rid}")
    assert r.status_code == 303 and r.headers["location"] == "/reminders"
    assert {x["state"] for x in _rows(web, rid)} == {"cancelled"}
    assert f'href="/reminders/{rid}"' not in web.get("/reminders").text
    assert web.get(f"/reminders/{rid}").status_code == 404


def test_send_now_makes_pending_deliveries_due_and_they_go_out(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web, recipients="alice", channels=["email"])
    web.start()
    r = web.post(f"/reminders/{rid}/send-now", token_from=f"/reminders/{rid}")
    assert r.status_code == 303
    end = time.monotonic() + 10
    while time.monotonic() < end and _rows(web, rid)[0]["state"] != "sent":
        time.sleep(0.1)
    (row,) = _rows(web, rid)
    assert row["state"] == "sent"
    page = web.get(f"/reminders/{rid}").text
    assert "1 delivery due now" in page
    assert 'badge state-sent">Sent' in page and "sent <time" in page
    assert "read-only" in page


def test_sent_reminder_is_read_only(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    first = _rows(web, rid)[0]["id"]
    _mark_sent(web, first)
    page = web.get(f"/reminders/{rid}").text
    assert f'href="/reminders/{rid}/edit"' not in page
    assert f'action="/reminders/{rid}/delete"' not in page
    assert f'action="/reminders/{rid}/send-now"' in page  # 3 deliveries still pending
    assert "read-only" in page
    assert web.get(f"/reminders/{rid}/edit").status_code == 409
    r = web.post(f"/reminders/{rid}/edit", _form(web, title="x"), token_from=f"/reminders/{rid}")
    assert r.status_code == 409 and "text/html" in r.headers["content-type"]
    r = web.post(f"/reminders/{rid}/delete", token_from=f"/reminders/{rid}")
    assert r.status_code == 409
    assert {x["state"] for x in _rows(web, rid)} == {"sent", "pending"}


def test_failed_delivery_shows_its_error_and_the_counts(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web, recipients="alice", channels=["email", "inbox"])
    ids = [x["id"] for x in _rows(web, rid)]
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.id == ids[0])
            .values(state="failed", last_error="SMTP 550 <mailbox unavailable>", attempts=3)
        )
    page = web.get(f"/reminders/{rid}").text
    assert "SMTP 550 &lt;mailbox unavailable&gt;" in page
    assert 'badge state-failed">Failed' in page
    lst = web.get("/reminders").text
    row = lst[lst.index(f'href="/reminders/{rid}"') :].split("</tr>")[0]
    assert 'state-failed">Failed' in row
    assert re.findall(r'<td class="num">(?:<span class="\w+">)?(\d+)', row) == [
        "2",
        "1",
        "0",
        "0",
        "1",
    ]


def test_viewer_reads_but_cannot_change(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    web.logout()
    web.login(VIEWER)
    page = web.get(f"/reminders/{rid}")
    assert page.status_code == 200
    assert "Send now" not in page.text and "Edit" not in page.text and "Delete" not in page.text
    assert "New reminder" not in web.get("/reminders").text
    assert web.get("/reminders/new").status_code == 403
    assert web.get(f"/reminders/{rid}/edit").status_code == 403
    src = f"/reminders/{rid}"
    assert web.post("/reminders", _form(web), token_from=src).status_code == 403
    assert (
        web.post(f"/reminders/{rid}/edit", _form(web, title="x"), token_from=src).status_code == 403
    )
    assert web.post(f"/reminders/{rid}/delete", token_from=src).status_code == 403
    assert web.post(f"/reminders/{rid}/send-now", token_from=src).status_code == 403
    rows = _rows(web, rid)
    assert {x["state"] for x in rows} == {"pending"} and len(rows) == 4


def test_posts_without_csrf_token_are_refused(web: Web) -> None:
    _people(web)
    web.login()
    rid = _create(web)
    web.get(f"/reminders/{rid}")
    for u, data in (
        ("/reminders", _form(web)),
        (f"/reminders/{rid}/edit", _form(web, title="x")),
        (f"/reminders/{rid}/delete", {}),
        (f"/reminders/{rid}/send-now", {}),
    ):
        r = web.client.post(u, data=data, follow_redirects=False)
        assert r.status_code == 403, u
    with web.rt.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reminders)).scalar() == 1
    assert {x["state"] for x in _rows(web, rid)} == {"pending"}


def test_unknown_and_bad_ids(web: Web) -> None:
    web.login()
    for u in ("/reminders/999", "/reminders/999/edit"):
        r = web.get(u)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"], u
    for u in ("/reminders/999/delete", "/reminders/999/send-now", "/reminders/999/edit"):
        assert web.post(u, _form(web), token_from="/reminders").status_code == 404, u
    assert web.get("/reminders/abc").status_code == 400
    assert web.get("/reminders/0").status_code == 400
    assert web.get("/reminders?after=x").status_code == 400


def test_new_form_for_a_subject_and_paging(web: Web) -> None:
    _people(web)
    web.engine.upsert_subject(SubjectInput("invoice", "a/b c", {}, {"customer": "alice"}))
    web.login()
    r = web.get("/reminders/new?subject=invoice%2Fa%2Fb%20c")
    assert 'value="invoice/a/b c"' in r.text
    assert "alice" in r.text[r.text.index('id="h-recipients"') :][:300]  # known ids hint
    rid = _create(web, subject="invoice/a/b c")
    assert 'href="/subjects/invoice/a%2Fb%20c"' in web.get(f"/reminders/{rid}").text
    now = web.engine.clock.now()
    for i in range(52):
        web.engine.create_reminder(
            ReminderInput(f"R{i}", "", now + timedelta(days=1), ["alice"], ["email"])
        )
    first = web.get("/reminders").text
    assert first.count('<tr>\n      <td><a href="/reminders/') == 50
    assert ">R51<" in first and f'href="/reminders/{rid}"' not in first
    nxt = re.search(r'class="pager"><a class="btn" href="\?([^"]+)"', first)
    assert nxt
    second = web.get("/reminders?" + nxt.group(1).replace("&amp;", "&")).text
    assert f'href="/reminders/{rid}"' in second and ">R0<" in second


def test_reminders_on_postgres(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        _people(web)
        web.login()
        rid = _create(web, title=XSS[1])
        r = web.post(
            "/reminders",
            _form(web, send_at=_local(web, -timedelta(hours=2)), channels=[], recipients=""),
            token_from="/reminders/new",
        )
        assert r.status_code == 400 and set(_errors(r.text)) == {
            "send_at",
            "channels",
            "recipients",
        }
        _mark_sent(web, _rows(web, rid)[0]["id"])
        lst = web.get("/reminders").text
        assert XSS[1] not in lst
        row = lst[lst.index(f'href="/reminders/{rid}"') :].split("</tr>")[0]
        assert re.findall(r'<td class="num">(?:<span class="\w+">)?(\d+)', row) == [
            "4",
            "3",
            "1",
            "0",
            "0",
        ]
        assert web.post(f"/reminders/{rid}/delete", token_from="/reminders").status_code == 409
    finally:
        web.close()


def test_a_reminder_sent_now_is_not_late_while_it_goes_out(web: Web) -> None:
    """Send now makes the deliveries due this instant; until the dispatcher has sent them
    (here: it is not running) the reminder reads pending, not overdue — late only once it
    is more than a minute past its time, on the pages and in the API alike."""
    from duly.api.keys import KeyStore

    token, _ = KeyStore(web.rt.db).create("tests", datetime.now(UTC))
    auth = {"Authorization": f"Bearer {token}"}
    _people(web)
    web.login()
    rid = _create(web, recipients="alice", channels=["email"])
    r = web.post(f"/reminders/{rid}/send-now", token_from=f"/reminders/{rid}")
    assert r.status_code == 303
    page = web.get(f"/reminders/{rid}").text
    assert "state-overdue" not in page and "state-overdue" not in web.get("/reminders").text
    assert web.get(f"/v1/reminders/{rid}", headers=auth).json()["counts"]["overdue"] == 0
    # still not sent two minutes later: now it is late
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.rule == "@reminder", deliveries.c.occurrence == str(rid))
            .values(due_at=web.engine.clock.now() - timedelta(minutes=2))
        )
    assert "state-overdue" in web.get(f"/reminders/{rid}").text
    assert web.get(f"/v1/reminders/{rid}", headers=auth).json()["counts"]["overdue"] == 1
