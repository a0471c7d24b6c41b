"""A dashboard to trust: its numbers open lists of exactly that many deliveries; "needs
attention" leaves out failures that no longer matter and says why each item is there;
Retry and Send now warn when the delivery would not be sent, and say so after; the attempt
count agrees with the attempts listed; the page refreshes itself."""

from __future__ import annotations

import html as htmllib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from duly.store.tables import delivery_log
from webui import Web, add_delivery  # tests/webui.py

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # London is on GMT: today began 00:00 UTC


def fixed(web: Web) -> Web:
    web.engine.clock = VirtualClock(NOW)
    return web


def outcome(web: Web, did: int, state: str, at: datetime) -> None:
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.insert(delivery_log).values(
                delivery_id=did, at=at, kind="outcome", outcome=state, attempt=1
            )
        )


def finished(web: Web, state: str, at: datetime, **kw: Any) -> int:
    did = add_delivery(web, state=state, due_at=at, **kw)
    outcome(web, did, state, at)
    return did


def listed(web: Web, href: str) -> list[int]:
    """Every delivery id the deliveries list shows for ``href``, following its pages."""
    ids: list[int] = []
    url: str | None = href
    while url:
        r = web.get(url)
        assert r.status_code == 200, r.text[:500]
        body = r.text.split('<table class="deliveries">', 1)[-1]
        ids += [int(x) for x in re.findall(r'<td class="num"><a href="/deliveries/(\d+)">', body)]
        nxt = re.search(r'<p class="pager"><a class="btn" href="([^"]+)"', r.text)
        url = "/deliveries" + htmllib.unescape(nxt.group(1)) if nxt else None
    return ids


def invoice(web: Web, key: str, status: str) -> None:
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            key,
            {"status": status, "due_at": (NOW + timedelta(days=20)).isoformat()},
            {"customer": "alice"},
        )
    )


def test_todays_numbers_open_lists_of_exactly_that_many(web: Web) -> None:
    fixed(web).login()
    today = NOW - timedelta(hours=2)
    finished(web, "sent", today)
    finished(web, "sent", today - timedelta(hours=5))
    finished(web, "sent", NOW - timedelta(days=3))  # in the week, not today
    finished(web, "sent", NOW - timedelta(days=30))  # neither
    retried = finished(web, "failed", NOW - timedelta(days=1), attempts=1)
    outcome(web, retried, "sent", today)  # failed yesterday, retried and sent today
    with web.rt.db.begin() as conn:
        conn.execute(sa.text("UPDATE deliveries SET state='sent' WHERE id=:i"), {"i": retried})
    finished(web, "failed", today, last_error="550 no such user")
    finished(web, "failed", NOW - timedelta(days=2))
    finished(web, "skipped", today, reason="no_consent")
    html = web.get("/").text
    for state in ("sent", "failed", "skipped", "cancelled"):
        for which in ("today", "week"):
            m = re.search(
                rf'id="outcome-{state}".*?<a href="([^"]+)"[^>]*data-count="{which}">(\d+)<',
                html,
                re.S,
            )
            assert m, (state, which)
            href, count = htmllib.unescape(m.group(1)), int(m.group(2))
            assert "finished_from=" in href, href
            assert len(listed(web, href)) == count, (state, which, href)
    today_sent = re.search(r'id="outcome-sent".*?data-count="today">(\d+)<', html, re.S)
    assert today_sent and today_sent.group(1) == "3"


def test_needs_attention_leaves_out_failures_that_no_longer_matter(web: Web) -> None:
    fixed(web)
    web.engine.put_recipient(Recipient(id="alice", name="Alice", email="alice@example.com"))
    invoice(web, "PAID-1", "sent")
    invoice(web, "OPEN-1", "sent")
    invoice(web, "GONE-1", "sent")
    at = NOW - timedelta(hours=3)
    paid = finished(web, "failed", at, subject="invoice/PAID-1", reason="retries_exhausted")
    still = finished(web, "failed", at, subject="invoice/OPEN-1", reason="retries_exhausted",
                     last_error="421 try later", attempts=4)  # fmt: skip
    gone = finished(web, "failed", at, subject="invoice/GONE-1", reason="permanent_error")
    late = finished(web, "failed", at, subject="invoice/OPEN-1", reason="permanent_error",
                    deadline_at=NOW - timedelta(hours=1))  # fmt: skip
    invoice(web, "PAID-1", "paid")
    web.engine.delete_subject("invoice", "GONE-1")
    web.login()
    html = web.get("/").text
    box = re.search(r'id="attention-list".*?</ul>', html, re.S)
    assert box, html[-3000:]
    items = box.group(0)
    assert f'href="/deliveries/{still}"' in items
    for left_out in (paid, gone, late):
        assert f'href="/deliveries/{left_out}"' not in items, left_out
    # why it is there, in words
    assert (
        "still needed: the invoice still meets its rule" in items
        and "Failed: every retry failed" in items
    )
    # and what was left out is said, not hidden
    note = re.search(r'id="attention-left-out"[^>]*>(.*?)</p>', html, re.S)
    assert note and "3" in note.group(1)


def test_retry_warns_when_it_would_not_be_sent_and_says_so_after(web: Web) -> None:
    fixed(web)
    web.engine.put_recipient(Recipient(id="alice", name="Alice", email="alice@example.com"))
    invoice(web, "PAID-2", "sent")
    did = finished(web, "failed", NOW - timedelta(hours=1), subject="invoice/PAID-2",
                   reason="retries_exhausted", attempts=3)  # fmt: skip
    invoice(web, "PAID-2", "paid")
    ok = finished(web, "failed", NOW - timedelta(hours=1), subject="invoice/PAID-X",
                  reason="retries_exhausted", rule="payment-receipt", step="",
                  category="transactional")  # fmt: skip
    invoice(web, "PAID-X", "paid")
    web.login()
    page = web.get(f"/deliveries/{did}").text
    warn = re.search(r'id="action-warning"[^>]*>(.*?)</p>', page, re.S)
    assert warn and "Not needed: the invoice is now paid" in warn.group(1)
    assert 'data-confirm="It would not be sent: Not needed: the invoice is now paid' in page
    assert 'id="action-warning"' not in web.get(f"/deliveries/{ok}").text
    r = web.post(f"/deliveries/{did}/retry", token_from=f"/deliveries/{did}")
    assert r.status_code == 303
    after = web.get(f"/deliveries/{did}").text
    assert "pending again, but it will not be sent: Not needed: the invoice is now paid" in after
    assert "pending again and due now" not in after


def test_send_now_warns_for_a_recipient_without_consent(web: Web) -> None:
    fixed(web)
    web.engine.put_recipient(
        Recipient(id="alice", email="alice@example.com", consent={"reminder": False})
    )
    invoice(web, "C-1", "sent")
    did = add_delivery(web, state="pending", subject="invoice/C-1", due_at=NOW + timedelta(days=1))
    web.login()
    page = web.get(f"/deliveries/{did}").text
    warn = re.search(r'id="action-warning"[^>]*>(.*?)</p>', page, re.S)
    assert warn and "has not agreed" in warn.group(1)


def test_attempt_count_agrees_with_the_attempts_listed(web: Web) -> None:
    fixed(web).login()
    did = add_delivery(web, state="skipped", reason="condition_false", attempts=0)
    with web.rt.db.begin() as conn:
        for n in (1, 2, 1, 2):  # two rounds: the counter started again at a retry
            conn.execute(
                sa.insert(delivery_log).values(
                    delivery_id=did, at=NOW, kind="attempt", attempt=n, error="421 later"
                )
            )
    page = web.get(f"/deliveries/{did}").text
    total = re.search(r'id="attempts-total">(\d+)', page)
    assert total and int(total.group(1)) == page.count("<strong>Attempt ")
    assert int(total.group(1)) == 4
    row = re.search(
        rf'<a href="/deliveries/{did}">{did}</a>.*?</tr>', web.get("/deliveries").text, re.S
    )
    assert row and re.findall(r'<td class="num hide-phone">(\d+)</td>', row.group(0)) == ["4"]


def test_dashboard_refreshes_itself_and_works_without_script(web: Web) -> None:
    fixed(web).login()
    html = web.get("/").text
    live = re.search(r'<div id="dashboard-live" data-refresh="([^"]+)" data-every="(\d+)"', html)
    assert live and int(live.group(2)) <= 60
    fragment = web.get(htmllib.unescape(live.group(1)))
    assert fragment.status_code == 200
    assert 'id="outcome-sent"' in fragment.text and "<html" not in fragment.text
    # without JavaScript the page reloads itself
    assert re.search(r'<noscript><meta http-equiv="refresh" content="\d+"></noscript>', html)


def test_numbers_and_lists_agree_on_postgresql(tmp_path: Any, pg_db_url: str) -> None:
    from webui import make_web

    web = make_web(tmp_path, database=pg_db_url)
    try:
        test_todays_numbers_open_lists_of_exactly_that_many(web)
        web.engine.put_recipient(Recipient(id="alice", email="alice@example.com"))
        invoice(web, "PG-PAID", "sent")
        paid = finished(web, "failed", NOW - timedelta(hours=1), subject="invoice/PG-PAID",
                        reason="retries_exhausted")  # fmt: skip
        invoice(web, "PG-PAID", "paid")
        assert f'href="/deliveries/{paid}"' not in web.get("/").text.split('id="attention', 1)[1]
    finally:
        web.close()


def test_a_bad_finished_date_gets_a_clear_400(web: Web) -> None:
    web.login()
    r = web.get("/deliveries?state=sent&finished_from=yesterday")
    assert r.status_code == 400
    assert 'id="e-finished_from"' in r.text and "YYYY-MM-DD" in r.text
    r = web.get("/deliveries?finished_from=2026-03-10&finished_to=2026-03-01")
    assert r.status_code == 400 and 'id="e-finished_to"' in r.text


def test_send_now_on_a_held_invoice_says_it_waits(web: Web) -> None:
    fixed(web)
    web.engine.put_recipient(Recipient(id="alice", email="alice@example.com"))
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "HELD-1",
            {"status": "sent", "due_at": (NOW + timedelta(days=20)).isoformat()},
            {"customer": "alice"},
            "indefinite",  # type: ignore[arg-type]
        )
    )
    did = add_delivery(
        web, state="pending", subject="invoice/HELD-1", due_at=NOW + timedelta(days=1)
    )
    web.login()
    page = web.get(f"/deliveries/{did}").text
    warn = re.search(r'id="action-warning"[^>]*>(.*?)</p>', page, re.S)
    assert warn and "It would wait:" in warn.group(1) and "until cleared" in warn.group(1)
    web.post(f"/deliveries/{did}/send-now", token_from=f"/deliveries/{did}")
    after = web.get(f"/deliveries/{did}").text
    assert (
        f"Delivery {did} is due now, but it waits: the invoice is on hold until cleared." in after
    )
