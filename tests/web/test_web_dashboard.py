"""The dashboard: outcome counts by the viewer's days, the queue, what needs attention, the
chart and engine health — over rows inserted directly."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.store.tables import delivery_log, workers
from webui import HOSTILE, HOSTILE_ATTR, VIEWER, Web, add_delivery, make_web  # tests/webui.py

# 15:00 in London (GMT in March, before the clocks change); today began at 00:00 UTC
NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def fixed(web: Web, now: datetime = NOW) -> Web:
    web.engine.clock = VirtualClock(now)
    return web


def add(web: Web, **kw: Any) -> int:
    """Insert one delivery (any state) and return its id."""
    return add_delivery(web, **kw)


def finished(web: Web, state: str, at: datetime, **kw: Any) -> int:
    """A delivery that ended ``state`` at ``at``, with its outcome in the log."""
    did = add(web, state=state, due_at=at, **kw)
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.insert(delivery_log).values(
                delivery_id=did, at=at, kind="outcome", outcome=state, attempt=1
            )
        )
    return did


def number(html: str, box: str, which: str) -> int:
    m = re.search(rf'id="outcome-{box}".*?data-count="{which}">(\d+)<', html, re.S)
    assert m, f"no {which} count for {box}"
    return int(m.group(1))


def text_of(html: str, elem_id: str) -> str:
    m = re.search(rf'id="{elem_id}"[^>]*>(.*?)</(?:a|span|dd|ul)>', html, re.S)
    assert m, elem_id
    return re.sub(r"<[^>]+>", "", m.group(1)).strip()


def seed_week(web: Web) -> dict[str, int]:
    today = NOW - timedelta(hours=3)  # 12:00 today
    finished(web, "sent", today)
    finished(web, "sent", today - timedelta(hours=1))
    # no subject: a failure of a subject that is gone is left out of needs-attention
    finished(web, "failed", today, last_error="550 mailbox unavailable", attempts=1, subject="")
    finished(web, "skipped", today, reason="no_consent")
    three_days = NOW - timedelta(days=3)
    finished(web, "sent", three_days)
    finished(web, "cancelled", three_days, reason="manual")
    finished(web, "skipped", NOW - timedelta(days=6, hours=14))  # 01:00, 6 days ago: in
    finished(web, "sent", NOW - timedelta(days=6, hours=16))  # 23:00, 7 days ago: out
    finished(web, "sent", NOW - timedelta(days=10))  # out
    return {}


def test_outcomes_today_and_in_the_last_7_days(web: Web) -> None:
    fixed(web).login()
    seed_week(web)
    html = web.get("/").text
    assert (number(html, "sent", "today"), number(html, "sent", "week")) == (2, 3)
    assert (number(html, "failed", "today"), number(html, "failed", "week")) == (1, 1)
    assert (number(html, "skipped", "today"), number(html, "skipped", "week")) == (1, 2)
    assert (number(html, "cancelled", "today"), number(html, "cancelled", "week")) == (0, 1)
    # every number links to the list it counts
    assert 'aria-label="1 failed today: show them"' in html
    assert 'href="/deliveries?state=failed&amp;finished_from=2026-03-10&amp;finished_to=2026-03-10"' in html


def test_days_follow_the_viewers_timezone(web: Web) -> None:
    fixed(web, datetime(2026, 3, 10, 10, 0, tzinfo=UTC)).login()
    # 20:00 UTC yesterday is 05:00 today in Tokyo, and yesterday in London
    finished(web, "sent", datetime(2026, 3, 9, 20, 0, tzinfo=UTC))
    assert number(web.get("/").text, "sent", "today") == 0
    r = web.post("/account/timezone", {"timezone": "Asia/Tokyo"}, token_from="/account")
    assert r.status_code == 303
    html = web.get("/").text
    assert number(html, "sent", "today") == 1
    assert 'data-day="2026-03-10"' in html and 'data-day="2026-03-04"' in html


def test_the_chart_has_a_bar_group_per_day_with_its_numbers(web: Web) -> None:
    fixed(web).login()
    seed_week(web)
    html = web.get("/").text
    svg = html[html.index("<svg") : html.index("</svg>")]
    groups = re.findall(r'<g class="day" data-day="([\d-]+)"><title>([^<]*)</title>', svg)
    assert [d for d, _ in groups] == [f"2026-03-{d:02d}" for d in range(4, 11)]
    titles = dict(groups)
    assert (
        titles["2026-03-10"]
        == "Tue 10 Mar: 4 deliveries (2 sent, 1 failed, 1 skipped, 0 cancelled)"
    )
    assert (
        titles["2026-03-07"]
        == "Sat 07 Mar: 2 deliveries (1 sent, 0 failed, 0 skipped, 1 cancelled)"
    )
    assert titles["2026-03-04"].startswith("Wed 04 Mar: 1 delivery (0 sent, 0 failed, 1 skipped")
    assert "Tue 10 Mar: 2 sent</title>" in svg and "Tue 10 Mar: 1 failed</title>" in svg
    assert 'role="img"' in svg
    label = re.search(r'aria-label="([^"]+)"', svg)
    assert label and "3 sent, 1 failed, 2 skipped, 1 cancelled" in label.group(1)
    assert "style=" not in svg  # the CSP forbids inline style
    # the table alternative has the same numbers
    table = html[html.index('class="chart-table"') :]
    assert re.search(r"<th scope=\"row\">Tue 10 Mar</th><td class=\"num\">2</td>", table)


def test_queue_backlog_and_next_24_hours(web: Web) -> None:
    fixed(web).login()
    web.engine.put_recipient(Recipient(id="kenji", email="k@example.com", timezone="Asia/Tokyo"))
    late = add(web, state="pending", due_at=NOW - timedelta(hours=2))
    add(web, state="pending", due_at=NOW - timedelta(minutes=10))
    add(web, state="pending", due_at=NOW - timedelta(seconds=20))  # due, not yet overdue
    soon = add(web, state="pending", due_at=NOW + timedelta(hours=2), recipient="kenji")
    add(web, state="pending", due_at=NOW + timedelta(days=3))
    add(web, state="sent", due_at=NOW + timedelta(hours=1))  # not pending: not counted
    html = web.get("/").text
    assert text_of(html, "q-pending") == "5"
    assert text_of(html, "q-overdue") == "2"
    backlog = re.search(r'id="h-backlog">(.*?)</dd>', html, re.S)
    assert backlog and "<strong>3</strong></a> due and waiting" in backlog.group(1)
    assert "2 h ago" in backlog.group(1)  # the oldest
    assert text_of(html, "q-next") == "2"  # the one due 20 s ago and the one in 2 h
    nxt = html[html.index('id="next-list"') : html.index("</ul>", html.index('id="next-list"'))]
    assert f'href="/deliveries/{soon}"' in nxt
    assert "JST there" in nxt  # the recipient's own time beside it
    attention = html[html.index('id="attention-list"') :]
    assert f'href="/deliveries/{late}"' in attention and "overdue" in attention
    assert 'href="/deliveries?state=overdue" id="q-overdue"' in html


def test_failures_are_listed_with_their_error_and_escaped(web: Web) -> None:
    fixed(web).login()
    did = finished(
        web,
        "failed",
        NOW - timedelta(days=1),
        last_error=HOSTILE,
        title=HOSTILE_ATTR,
        subject="",  # a subject that is gone would leave it out (test_web_dashboard_trust)
        recipient=HOSTILE,
        attempts=4,
        reason="retries_exhausted",
    )
    finished(web, "failed", NOW - timedelta(days=9), last_error="too old to list")
    html = web.get("/").text
    assert "Failures of the last 7 days that still matter (1)" in html
    attention = html[html.index('id="attention-list"') :]
    assert f'href="/deliveries/{did}"' in attention
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in attention
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in attention
    assert HOSTILE not in html and HOSTILE_ATTR not in html
    assert "too old to list" not in html
    assert "4 attempts" in attention and "Failed: every retry failed" in attention
    assert '<code class="code" title="The code duly writes in its logs and API">failed: retries_exhausted</code>' in attention


def test_engine_health_shows_dispatcher_breakers_and_workers(web: Web) -> None:
    fixed(web).login()
    html = web.get("/").text
    assert "stopped" in text_of(html, "h-dispatcher")  # the test does not run it
    assert re.search(r"<strong>email</strong> <span class=\"badge breaker-closed\">Working", html)
    web.rt.dispatcher.breakers["email"].open_until = NOW + timedelta(seconds=30)
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.insert(workers).values(
                id="worker-2", host="box-2", started_at=NOW, heartbeat_at=NOW - timedelta(seconds=5)
            )
        )
        conn.execute(
            sa.insert(workers).values(
                id="worker-3", host="box-3", started_at=NOW, heartbeat_at=NOW - timedelta(hours=1)
            )
        )
    html = web.get("/").text
    assert re.search(
        r"<strong>email</strong> <span class=\"badge breaker-open\">Failing, paused until 15:00", html
    )
    assert "after repeated failures duly waits" in html
    assert re.search(r"worker-2 on box-2 — <span class=\"ok\">alive", html)
    assert re.search(r"worker-3 on box-3 — <span class=\"bad\">silent", html)
    assert "none</span> — everything due has been handled" in html


def test_dispatcher_running_is_shown(web: Web) -> None:
    web.login()
    web.start()
    assert "running" in text_of(web.get("/").text, "h-dispatcher")


def test_a_viewer_sees_the_dashboard_and_nobody_signed_out_does(web: Web) -> None:
    r = web.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    web.login(VIEWER)
    r = web.get("/")
    assert r.status_code == 200 and "<h1>Dashboard</h1>" in r.text


def test_empty_dashboard_explains_itself(web: Web) -> None:
    fixed(web).login()
    html = web.get("/").text
    assert "Nothing is planned for the next 24 hours" in html
    assert "All clear" in html
    assert html.count('<g class="day"') == 7


def test_a_time_50_seconds_away_renders(web: Web) -> None:
    # 45-60 s away: between "now" and "1 min" (core.relative once had no unit for it)
    fixed(web).login()
    add(web, state="pending", due_at=NOW + timedelta(seconds=50))
    add(web, state="pending", due_at=NOW - timedelta(seconds=50))
    assert web.get("/").status_code == 200
    assert web.get("/upcoming").status_code == 200


def test_dashboard_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = fixed(make_web(tmp_path, database=pg_db_url))
    try:
        web.login()
        seed_week(web)
        add(web, state="pending", due_at=NOW - timedelta(hours=1))
        add(web, state="pending", due_at=NOW + timedelta(hours=1))
        html = web.get("/").text
        assert (number(html, "sent", "today"), number(html, "sent", "week")) == (2, 3)
        assert number(html, "skipped", "week") == 2
        assert text_of(html, "q-pending") == "2" and text_of(html, "q-overdue") == "1"
        assert html.count('<g class="day"') == 7
        assert "550 mailbox unavailable" in html
    finally:
        web.close()


def test_a_running_engine_beats_in_the_workers_table_and_is_not_its_own_other(web: Web) -> None:
    from duly.engine import runtime

    web.start()
    owner = web.rt.dispatcher.owner
    deadline = time.monotonic() + 10
    while True:
        with web.rt.db.connect() as conn:
            ids = conn.execute(sa.select(workers.c.id)).scalars().all()
        if owner in ids or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ids == [owner]
    web.login()
    html = web.get("/").text
    assert "running" in text_of(html, "h-dispatcher")
    assert "Other workers" not in html and owner not in html
    web.close()  # a clean stop removes the row
    web._started = False
    with web.rt.db.connect() as conn:
        assert conn.execute(sa.select(workers.c.id)).scalars().all() == []
    assert runtime.HEARTBEAT_SECONDS <= 60  # the dashboard calls a worker silent after 2 min


def test_engine_health_lists_schedules_that_cannot_be_planned(web: Web) -> None:
    fixed(web).login()
    assert 'id="h-schedules"' not in web.get("/").text
    web.engine.schedule_errors["weekly-digest"] = (NOW, "RuntimeError: <no next date>")
    web.rt.dispatcher.last_error = (NOW, "cycle")
    html = web.get("/").text
    m = re.search(r'id="h-schedules">(.*?)</ul>', html, re.S)
    assert m
    listed = re.sub(r"<[^>]+>", "", m.group(1))
    assert "cannot be planned" in listed and "weekly-digest" in listed
    assert "&lt;no next date&gt;" in html  # escaped
    assert "cycle stage" in text_of(html, "h-last-error")
