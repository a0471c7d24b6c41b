"""Upcoming: pending deliveries soonest first, grouped by the viewer's days, filters, keyset
paging, recipients' local times, bad filter values."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from webui import HOSTILE, HOSTILE_ATTR, VIEWER, Web, add_delivery  # tests/webui.py

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # Europe/London: GMT
_ROW = re.compile(r'<td><a href="/deliveries/(\d+)"')


def fixed(web: Web) -> Web:
    web.engine.clock = VirtualClock(NOW)
    return web


def add(web: Web, **kw: Any) -> int:
    """Insert one pending delivery, due an hour after NOW unless told otherwise."""
    return add_delivery(web, **{"state": "pending", "due_at": NOW + timedelta(hours=1), **kw})


def listed(web: Web, query: str = "", status: int = 200) -> list[int]:
    r = web.get("/upcoming" + query)
    assert r.status_code == status, r.text[:500]
    return [int(x) for x in _ROW.findall(r.text)]


def test_pending_rows_soonest_first_grouped_by_day(web: Web) -> None:
    fixed(web).login()
    c = add(web, due_at=NOW + timedelta(days=1, hours=2))
    a = add(web, due_at=NOW - timedelta(hours=1))  # overdue: first
    b = add(web, due_at=NOW + timedelta(minutes=30))
    add(web, state="sent", due_at=NOW + timedelta(minutes=5))  # not pending
    add(web, state="failed", due_at=NOW + timedelta(minutes=6))
    r = web.get("/upcoming")
    assert listed(web) == [a, b, c]
    headings = [h.strip() for h in re.findall(r"<h2 class=\"day-heading\">([^<]+)", r.text)]
    assert headings == ["Tuesday 10 March 2026", "Wednesday 11 March 2026"]
    assert r.text.count('<span class="badge state-overdue">Late</span>') == 1
    assert r.text.count('<span class="badge state-pending">Waiting to send</span>') == 2


def test_each_row_links_and_shows_the_recipients_local_time(web: Web) -> None:
    fixed(web).login()
    web.engine.put_recipient(Recipient(id="kenji", email="k@example.com", timezone="Asia/Tokyo"))
    did = add(web, recipient="kenji", subject="appointment/APT-1", rule="appointment-reminders")
    html = web.get("/upcoming").text
    assert f'href="/deliveries/{did}"' in html
    assert 'href="/subjects/appointment/APT-1"' in html
    assert 'href="/recipients/kenji"' in html
    assert "Tue 10 Mar 2026, 16:00 GMT" in html
    assert "Wed 11 Mar 2026, 01:00 JST there" in html


def test_filters_rule_channel_recipient_and_kind(web: Web) -> None:
    fixed(web).login()
    inv = add(web)
    apt = add(web, rule="appointment-reminders", subject="appointment/A-1", recipient="bob")
    sms = add(web, channel="sms")
    odd = add(web, subject="inXvoice/1")  # "_" in a kind filter must not match "X"
    underscore = add(web, subject="in_voice/2")
    assert listed(web, "?rule=appointment-reminders") == [apt]
    assert set(listed(web, "?rule=invoice-reminders")) == {inv, sms, odd, underscore}
    assert sms not in listed(web, "?channel=email")
    assert listed(web, "?recipient=bob") == [apt]
    assert listed(web, "?kind=appointment") == [apt]
    assert set(listed(web, "?kind=invoice")) == {inv, sms}
    assert listed(web, "?kind=in_voice") == [underscore]
    assert listed(web, "?rule=invoice-reminders&recipient=bob") == []
    r = web.get("/upcoming?recipient=nobody")
    assert "No planned delivery matches these filters" in r.text
    # the form shows what was chosen, from the rule file
    r = web.get("/upcoming?rule=appointment-reminders")
    assert '<option value="appointment-reminders" selected>' in r.text
    assert '<option value="email">' in r.text
    assert '<option value="appointment">' in r.text


def test_from_to_window_in_the_viewers_zone(web: Web) -> None:
    fixed(web).login()
    early = add(web, due_at=datetime(2026, 3, 12, 8, 0, tzinfo=UTC))
    mid = add(web, due_at=datetime(2026, 3, 12, 12, 0, tzinfo=UTC))
    add(web, due_at=datetime(2026, 3, 12, 18, 0, tzinfo=UTC))
    assert listed(web, "?from=2026-03-12T09:00&to=2026-03-12T13:00") == [mid]
    assert listed(web, "?to=2026-03-12T09:00") == [early]
    r = web.get("/upcoming?from=2026-03-12T09:00")
    assert 'value="2026-03-12T09:00"' in r.text  # kept in the form


def test_paging_by_due_time_and_id_without_duplicates(web: Web) -> None:
    fixed(web).login()
    ids = []
    for i in range(120):
        # ties: three rows share each due time, so paging must go on the id too
        ids.append(add(web, due_at=NOW + timedelta(minutes=10 * (i // 3))))
    seen: list[int] = []
    query = "?rule=invoice-reminders"
    pages = 0
    while True:
        r = web.get("/upcoming" + query)
        assert r.status_code == 200
        got = [int(x) for x in _ROW.findall(r.text)]
        pages += 1
        assert len(got) == (50 if pages < 3 else 20)
        seen += got
        m = re.search(r'<a class="btn" href="(\?[^"]+)">Next page', r.text)
        if not m:
            break
        query = m.group(1).replace("&amp;", "&")
        assert "rule=invoice-reminders" in query  # filters carry over
    assert pages == 3
    assert seen == ids  # in order, none twice, none missing
    # past the last page
    last = re.sub(r"after=[^&]+", "after=9999999999.000000~999999", query)
    assert "No more planned deliveries" in web.get("/upcoming" + last).text


def test_bad_filter_values_get_a_message_not_an_error(web: Web) -> None:
    fixed(web).login()
    add(web)
    for query, message in (
        ("?rule=no-such-rule", "There is no rule of that name"),
        ("?channel=pigeon", "There is no channel of that name"),
        ("?kind=a/b%25", "A subject kind is letters"),
        ("?from=yesterday", "enter a date and time as YYYY-MM-DD HH:MM"),
        ("?from=2026-03-12T10:00&to=2026-03-12T09:00", "must be after its start"),
        ("?after=garbage", "this page link is damaged"),
        ("?after=1.1~1", "this page link is damaged"),
        ("?recipient=" + "x" * 250, "at most 200 characters"),
    ):
        r = web.get("/upcoming" + query)
        assert r.status_code == 400, query
        assert message in r.text, query
        assert "Traceback" not in r.text
    r = web.get("/upcoming?rule=" + HOSTILE)
    assert r.status_code == 400 and HOSTILE not in r.text


def test_hostile_data_is_escaped(web: Web) -> None:
    fixed(web).login()
    add(web, subject=f"invoice/{HOSTILE_ATTR}", recipient=HOSTILE, step=HOSTILE)
    r = web.get("/upcoming")
    assert r.status_code == 200
    assert HOSTILE not in r.text and HOSTILE_ATTR not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert 'href="/subjects/invoice/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in r.text
    r = web.get("/upcoming?recipient=" + HOSTILE_ATTR.replace("&", "%26"))
    assert r.status_code == 200 and HOSTILE_ATTR not in r.text


def test_empty_page_says_what_it_is_for(web: Web) -> None:
    fixed(web).login()
    r = web.get("/upcoming")
    assert "Nothing is planned." in r.text and 'href="/reminders"' in r.text


def test_viewer_reads_it_and_nobody_signed_out_does(web: Web) -> None:
    r = web.get("/upcoming", follow_redirects=False)
    assert r.status_code == 303 and "/login" in r.headers["location"]
    fixed(web).login(VIEWER)
    did = add(web)
    assert listed(web) == [did]
