"""The deliveries pages: the filtered list, one delivery in full, its HTML frame, actions."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from duly.core.model import Recipient
from duly.store.tables import deliveries, delivery_log
from webui import HOSTILE, HOSTILE_ATTR, VIEWER, Web, add_delivery, make_web  # tests/webui.py

_ROW = re.compile(r'<td class="num"><a href="/deliveries/(\d+)">')


def add(web: Web, **kw: Any) -> int:
    """Insert one delivery row (Core insert: any state, any content) and return its id."""
    return add_delivery(web, **kw)


def log(web: Web, did: int, **kw: Any) -> None:
    row = {"delivery_id": did, "at": web.engine.clock.now(), "kind": "attempt", **kw}
    with web.rt.db.begin() as conn:
        conn.execute(sa.insert(delivery_log).values(**row))


def state_of(web: Web, did: int) -> dict[str, Any]:
    with web.rt.db.connect() as conn:
        r = web.engine.store.delivery(conn, did)
    assert r is not None
    return r


def listed(web: Web, query: str = "") -> list[int]:
    r = web.get("/deliveries" + query)
    assert r.status_code == 200, r.text[:2000]
    return [int(x) for x in _ROW.findall(r.text)]


def test_nothing_without_sign_in(web: Web) -> None:
    did = add(web, body_html="<p>secret</p>")
    for url in ("/deliveries", f"/deliveries/{did}", f"/deliveries/{did}/html", "/outbox"):
        r = web.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), url
        assert "secret" not in r.text


def test_empty_list_says_what_the_page_is_for(web: Web) -> None:
    web.login()
    r = web.get("/deliveries")
    assert r.status_code == 200
    assert "No deliveries yet" in r.text and "subject" in r.text


def test_each_filter_narrows_the_list(web: Web) -> None:
    now = web.engine.clock.now()
    base = add(web)
    pending = add(web, state="pending", due_at=now + timedelta(days=2), title="later")
    other_rule = add(web, rule="payment-receipt", step="")
    reminder = add(web, rule="@reminder", step="", subject="")
    inbox = add(web, channel="inbox")
    bob = add(web, recipient="bob")
    appt = add(web, subject="appointment/A-1")
    everything = {base, pending, other_rule, reminder, inbox, bob, appt}
    web.login()
    assert set(listed(web)) == everything
    assert listed(web) == sorted(everything, reverse=True)  # newest first
    assert listed(web, "?state=pending") == [pending]
    assert set(listed(web, "?state=sent")) == everything - {pending}
    assert listed(web, "?rule=payment-receipt") == [other_rule]
    assert listed(web, "?rule=%40reminder") == [reminder]
    assert listed(web, "?channel=inbox") == [inbox]
    assert listed(web, "?recipient=bob") == [bob]
    assert listed(web, "?subject=appointment%2FA-1") == [appt]
    assert listed(web, "?state=sent&recipient=bob&channel=email") == [bob]
    assert listed(web, "?state=failed") == []
    # the filter form shows what is chosen; @reminder is offered among the rules
    page = web.get("/deliveries?rule=payment-receipt&state=pending").text
    assert '<option value="payment-receipt" selected>' in page
    assert '<option value="pending" selected>' in page
    assert 'value="@reminder"' in page
    # links of a row: its subject and recipient pages, its detail
    page = web.get("/deliveries?subject=appointment%2FA-1").text
    assert 'href="/subjects/appointment/A-1"' in page
    assert 'href="/recipients/alice"' in page


def test_dates_are_read_in_the_viewers_zone(web: Web) -> None:
    # 23:30 UTC on 10 March is 10 March in London but already 11 March in Tokyo
    t = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    did = add(web, state="pending", due_at=t, planned_at=t)
    add(web, state="pending", due_at=t + timedelta(days=3), planned_at=t)
    web.login()
    assert listed(web, "?from=2026-03-10&to=2026-03-10") == [did]  # the rule file's zone
    assert listed(web, "?from=2026-03-11&to=2026-03-11") == []
    web.client.cookies.set("duly_tz", "Asia/Tokyo")
    assert listed(web, "?from=2026-03-11&to=2026-03-11") == [did]
    assert listed(web, "?to=2026-03-10") == []
    assert listed(web, "?from=2026-03-12&to=2026-03-13") == []
    assert did not in listed(web, "?from=2026-03-12")


def test_overdue_is_pending_past_its_due_time(web: Web) -> None:
    now = web.engine.clock.now()
    late = add(web, state="pending", due_at=now - timedelta(hours=2))
    add(web, state="pending", due_at=now + timedelta(hours=2))
    add(web, state="sent", due_at=now - timedelta(hours=2))
    add(web, state="failed", due_at=now - timedelta(hours=2))
    web.login()
    assert listed(web, "?state=overdue") == [late]
    page = web.get("/deliveries?state=overdue").text
    assert '<span class="badge state-overdue">Late</span>' in page


def test_paging_walks_every_row_once(web: Web) -> None:
    ids = [add(web, state="failed" if i % 3 else "sent") for i in range(130)]
    web.login()
    seen: list[int] = []
    url = "/deliveries?state=failed"
    pages = 0
    while url:
        r = web.get(url)
        assert r.status_code == 200
        seen += [int(x) for x in _ROW.findall(r.text)]
        pages += 1
        m = re.search(r'<a class="btn" href="(\?[^"]+)">Next page', r.text)
        url = "/deliveries" + m.group(1).replace("&amp;", "&") if m else ""
        if m:
            assert "state=failed" in m.group(1)  # the filters go along
    expected = sorted((d for i, d in enumerate(ids) if i % 3), reverse=True)
    assert seen == expected and len(set(seen)) == len(seen)
    assert pages == 2  # 86 rows: 50 + 36


def test_bad_filters_get_a_clear_400(web: Web) -> None:
    web.login()
    for query, message in (
        ("?state=bogus", "unknown state"),
        ("?from=2026-13-01", "enter a date as YYYY-MM-DD"),
        ("?to=yesterday", "enter a date as YYYY-MM-DD"),
        ("?from=2026-03-10&to=2026-03-01", "before the start date"),
        ("?after=abc", "not a delivery id"),
        ("?after=99999999999999999999999", "not a delivery id"),
        ("?subject=no-slash", "no subject has the key no-slash"),
        ("?recipient=" + "x" * 300, "at most 200 characters"),
    ):
        r = web.get("/deliveries" + query)
        assert r.status_code == 400, query
        assert message in r.text, query
        assert "Traceback" not in r.text
    assert web.get("/deliveries/abc").status_code == 400
    assert web.get("/deliveries/0").status_code == 400
    assert web.get("/deliveries/99999999999999999999").status_code == 400
    assert web.get("/deliveries/424242").status_code == 404


def test_detail_shows_attempts_errors_receipt_and_channels(web: Web) -> None:
    now = web.engine.clock.now()
    web.engine.put_recipient(Recipient(id="alice", email="a@example.com", timezone="Asia/Tokyo"))
    did = add(
        web,
        state="sent",
        attempts=2,
        title="Invoice INV-1 is due soon",
        to_address="a@example.com",
        body_text="Hello Alice,\nyour invoice is due.",
        body_html="<p>Hello <b>Alice</b></p>",
        message_id="<m-1@duly>",
        receipt='{"provider_id": "abc-123", "status": "queued"}',
        last_error="421 try again later",
        deadline_at=now + timedelta(days=3),
    )
    log(web, did, attempt=1, error="421 try again later")
    log(web, did, attempt=2, receipt='{"provider_id": "abc-123"}')
    log(web, did, kind="outcome", outcome="sent")
    sms = add(web, channel="sms", state="failed", reason="no_address", occurrence="0")
    with web.rt.db.begin() as conn:  # the same identity on the email channel
        conn.execute(sa.update(deliveries).where(deliveries.c.id == did).values(occurrence="0"))
    web.login()
    r = web.get(f"/deliveries/{did}")
    assert r.status_code == 200
    t = r.text
    assert "Attempt 1" in t and "421 try again later" in t and "Attempt 2" in t
    assert "&#34;provider_id&#34;: &#34;abc-123&#34;" in t  # the receipt, pretty-printed JSON
    assert '"status"' not in t and "&#34;status&#34;: &#34;queued&#34;" in t
    assert "&lt;m-1@duly&gt;" in t
    assert "Hello Alice,\nyour invoice is due." in t  # the text part, in a <pre>
    assert (
        f'<iframe class="message" sandbox src="/deliveries/{did}/html" title="HTML part of '
        f'delivery {did}"></iframe>'
    ) in t
    assert "Asia/Tokyo" in t and " there</span>" in t  # the recipient's local time beside
    # per channel: the sms sibling with its state and reason
    assert f'href="/deliveries/{sms}"' in t
    assert '<span class="badge state-failed">Failed</span> <span class="reason">Not sent: the recipient has no address' in t
    # history: the outcome
    assert '<span class="badge state-sent">Sent</span>' in t
    # a sent delivery offers no action
    assert "/send-now" not in t and "/cancel" not in t and "/retry" not in t


def test_hostile_content_is_escaped_on_list_and_detail(web: Web) -> None:
    did = add(
        web,
        subject=f"invoice/{HOSTILE}{HOSTILE_ATTR}",
        recipient=f"r{HOSTILE_ATTR}",
        title=HOSTILE,
        body_text=HOSTILE,
        body_html=HOSTILE,
        last_error=HOSTILE,
        receipt=HOSTILE,
        to_address=HOSTILE_ATTR,
        message_id=HOSTILE,
        state="failed",
        reason="error",
    )
    log(web, did, attempt=1, error=HOSTILE, receipt=HOSTILE)
    web.login()
    for url in ("/deliveries", f"/deliveries/{did}"):
        t = web.get(url).text
        assert "<script>alert(1)</script>" not in t, url
        assert "<img src=x" not in t, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in t, url
    t = web.get(f"/deliveries/{did}").text
    assert t.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # title, text, errors, receipt…
    # links carry the hostile parts percent-encoded
    assert "/subjects/invoice/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%22%3E%3Cimg" in t


def test_the_html_frame_has_its_own_sandbox_policy(web: Web) -> None:
    did = add(web, body_html="<p>Hi <b>there</b></p><script>alert(1)</script>")
    bare = add(web, body_text="text only")
    r = web.get(f"/deliveries/{did}/html", follow_redirects=False)
    assert r.status_code == 303  # not without signing in
    web.login(VIEWER)
    r = web.get(f"/deliveries/{did}/html")
    assert r.status_code == 200
    assert r.text == "<p>Hi <b>there</b></p><script>alert(1)</script>"  # as stored
    csp = r.headers["content-security-policy"]
    assert csp == "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; sandbox"
    assert r.headers["x-frame-options"] == "SAMEORIGIN"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"].startswith("text/html")
    assert web.get(f"/deliveries/{bare}/html").status_code == 404
    assert "<iframe" not in web.get(f"/deliveries/{bare}").text
    # the page around it keeps the strict policy and may frame only this site
    page = web.get(f"/deliveries/{did}")
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_actions_change_state(web: Web) -> None:
    now = web.engine.clock.now()
    did = add(web, state="pending", due_at=now + timedelta(days=5))
    web.login()
    page = web.get(f"/deliveries/{did}").text
    assert f'action="/deliveries/{did}/send-now"' in page
    assert f'action="/deliveries/{did}/cancel"' in page and "data-confirm=" in page
    assert "/retry" not in page

    r = web.post(f"/deliveries/{did}/send-now", token_from=f"/deliveries/{did}")
    assert r.status_code == 303 and r.headers["location"] == f"/deliveries/{did}"
    row = state_of(web, did)
    assert row["state"] == "pending" and row["due_at"] <= web.engine.clock.now()
    assert "is due now" in web.get(f"/deliveries/{did}").text

    r = web.post(f"/deliveries/{did}/cancel", token_from=f"/deliveries/{did}")
    assert r.status_code == 303
    row = state_of(web, did)
    assert (row["state"], row["reason"]) == ("cancelled", "manual")
    page = web.get(f"/deliveries/{did}").text
    assert "was cancelled" in page
    assert f'action="/deliveries/{did}/retry"' in page and "/cancel" not in page

    r = web.post(f"/deliveries/{did}/retry", token_from=f"/deliveries/{did}")
    assert r.status_code == 303
    assert state_of(web, did)["state"] == "pending"
    assert "pending again" in web.get(f"/deliveries/{did}").text


def test_an_action_in_the_wrong_state_is_refused_with_a_message(web: Web) -> None:
    sent = add(web, state="sent")
    pending = add(web, state="pending")
    web.login()
    for url in (f"/deliveries/{sent}/cancel", f"/deliveries/{sent}/send-now"):
        r = web.post(url, token_from=f"/deliveries/{sent}")
        assert r.status_code == 303
        t = web.get(f"/deliveries/{sent}").text
        assert 'class="flash flash-error"' in t and "not pending" in t
    r = web.post(f"/deliveries/{sent}/retry", token_from=f"/deliveries/{sent}")
    assert "only failed, skipped or cancelled" in web.get(f"/deliveries/{sent}").text
    r = web.post(f"/deliveries/{pending}/retry", token_from=f"/deliveries/{pending}")
    assert state_of(web, sent)["state"] == "sent"
    assert state_of(web, pending)["state"] == "pending"
    r = web.post("/deliveries/424242/cancel", token_from="/deliveries")
    assert r.status_code == 404


def test_viewers_and_forged_posts_cannot_act(web: Web) -> None:
    did = add(web, state="pending")
    web.login(VIEWER)
    page = web.get(f"/deliveries/{did}").text
    assert "/send-now" not in page and "/cancel" not in page  # no buttons for a viewer
    for action in ("send-now", "cancel", "retry"):
        r = web.post(f"/deliveries/{did}/{action}", token_from=f"/deliveries/{did}")
        assert r.status_code == 403, action
    web.logout()
    web.login()
    web.get(f"/deliveries/{did}")
    r = web.client.post(f"/deliveries/{did}/cancel", data={}, follow_redirects=False)
    assert r.status_code == 403
    r = web.client.post(
        f"/deliveries/{did}/cancel", data={"csrftoken": "forged"}, follow_redirects=False
    )
    assert r.status_code == 403
    assert state_of(web, did)["state"] == "pending"


def test_send_now_is_sent_by_the_dispatcher(web: Web) -> None:
    import time

    web.engine.put_recipient(Recipient(id="alice", email="alice@example.com"))
    later = web.engine.clock.now() + timedelta(days=3)
    from duly.engine.service import SubjectInput

    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "WEB-SEND-1",
            {
                "status": "sent",
                "due_at": (later + timedelta(days=5)).isoformat(),
                "amount": 10,
                "currency": "EUR",
            },
            {"customer": "alice"},
        )
    )
    with web.rt.db.connect() as conn:
        rows = web.engine.store.deliveries_of_subject(conn, "invoice/WEB-SEND-1", ("pending",))
    did = rows[0]["id"]
    web.start()
    web.login()
    web.post(f"/deliveries/{did}/send-now", token_from=f"/deliveries/{did}")
    deadline = time.monotonic() + 10
    while state_of(web, did)["state"] != "sent" and time.monotonic() < deadline:
        time.sleep(0.05)
    t = web.get(f"/deliveries/{did}").text
    assert '<span class="badge state-sent">Sent</span>' in t
    assert "alice@example.com" in t and "Attempt 1" in t and "outbox:" in t
    assert f'<iframe class="message" sandbox src="/deliveries/{did}/html"' in t  # demo's HTML
    assert "Invoice WEB-SEND-1 is due on" in t


def test_list_and_detail_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        now = web.engine.clock.now()
        late = add(web, state="pending", due_at=now - timedelta(hours=3))
        sent = add(web, state="sent", title=HOSTILE, receipt='{"id": 1}')
        add(web, state="pending", due_at=now + timedelta(hours=3), channel="inbox")
        web.engine.put_recipient(Recipient(id="alice", email="a@example.com", timezone="UTC"))
        web.login()
        assert listed(web, "?state=overdue") == [late]
        assert listed(web, "?channel=inbox&state=pending") == [late + 2]
        assert listed(web, f"?after={sent}") == [late]
        today = now.astimezone(UTC).date().isoformat()
        assert set(listed(web, "?state=sent")) == {sent}
        assert web.get(f"/deliveries?from={today}").status_code == 200
        t = web.get(f"/deliveries/{sent}").text
        assert "&lt;script&gt;" in t and "&#34;id&#34;: 1" in t
        r = web.post(f"/deliveries/{late}/cancel", token_from=f"/deliveries/{late}")
        assert r.status_code == 303 and state_of(web, late)["state"] == "cancelled"
        assert web.get(f"/deliveries/{sent}/html").status_code == 404
    finally:
        web.close()


def test_detail_says_when_an_attempts_outcome_is_unknown(web: Web) -> None:
    """A row retaken after its sender died mid-send: the page says it may have gone out."""
    web.login()
    did = add(web, state="sent", attempts=2)
    log(web, did, attempt=1, outcome="unknown", error="outcome unknown: w1 stopped while sending")
    log(web, did, attempt=2)
    r = web.get(f"/deliveries/{did}")
    assert r.status_code == 200
    assert "Outcome unknown — this message may have gone out." in r.text
    assert "w1 stopped while sending" in r.text
    plain = add(web, state="sent", attempts=1)
    log(web, plain, attempt=1)
    assert "Outcome unknown" not in web.get(f"/deliveries/{plain}").text
