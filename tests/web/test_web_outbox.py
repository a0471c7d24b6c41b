"""The outbox page: captured email read like a mail client; a note when email goes by SMTP."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from webui import HOSTILE, Web, make_web  # tests/webui.py
from webui import add_delivery as add

_MAIL = re.compile(r'<a href="/outbox/(\d+)[^"]*"')


def mails(web: Web, query: str = "") -> list[int]:
    r = web.get("/outbox" + query)
    assert r.status_code == 200, r.text[:2000]
    return [int(x) for x in _MAIL.findall(r.text)]


def test_outbox_lists_sent_email_and_shows_one(web: Web) -> None:
    now = web.engine.clock.now()
    first = add(
        web,
        title="Invoice INV-1 is due soon",
        to_address="alice@example.com",
        body_text="Hello Alice,\nplease pay.",
        body_html="<p>Hello <b>Alice</b></p>",
        message_id="<abc@duly>",
        sent_at=now - timedelta(hours=1),
    )
    second = add(
        web,
        rule="payment-receipt",
        step="",
        category="transactional",
        title="Payment received",
        recipient="bob",
        to_address="bob@example.com",
        body_text="Thanks Bob",
    )
    add(web, state="pending", title="not sent yet")
    add(web, state="failed", title="failed one")
    add(web, channel="inbox", title="an inbox item")
    web.login()
    assert mails(web) == [second, first]  # sent email only, newest first
    t = web.get("/outbox").text
    assert "Payment received" in t and "bob@example.com" in t
    assert "not sent yet" not in t and "an inbox item" not in t
    assert "Reading pane" in t

    r = web.get(f"/outbox/{first}")
    assert r.status_code == 200
    t = r.text
    assert "<dt>To</dt>" in t and "&lt;alice@example.com&gt;" in t
    assert "<dt>Message-ID</dt><dd><code>&lt;abc@duly&gt;</code>" in t
    assert "Hello Alice,\nplease pay." in t
    assert f'<iframe class="message" sandbox src="/deliveries/{first}/html"' in t
    assert 'aria-current="true"' in t and f'href="/deliveries/{first}"' in t
    # only text: no frame
    assert "<iframe" not in web.get(f"/outbox/{second}").text


def test_search_by_address_or_subject_and_paging(web: Web) -> None:
    ids = [
        add(web, title=f"Reminder {i}", to_address=f"user{i % 7}@example.com", recipient=f"u{i}")
        for i in range(60)
    ]
    web.login()
    assert mails(web, "?q=user3%40example") == sorted(
        (d for i, d in enumerate(ids) if i % 7 == 3), reverse=True
    )
    assert mails(web, "?q=reminder%2042") == [ids[42]]  # any case
    assert mails(web, "?q=u17") == [ids[17]]  # a recipient id, exactly
    assert mails(web, "?q=100%25") == []  # % is literal, not a wildcard
    assert "No message matches" in web.get("/outbox?q=nothing").text
    first = web.get("/outbox").text
    m = re.search(r'href="/outbox(\?after=\d+)">Older messages', first)
    assert m
    page1 = [int(x) for x in _MAIL.findall(first)]
    page2 = mails(web, m.group(1))
    assert len(page1) == 50 and len(page2) == 10
    assert page1 + page2 == sorted(ids, reverse=True)
    r = web.get("/outbox?after=nope")
    assert r.status_code == 400 and "not a message id" in r.text


def test_outbox_shows_only_outbox_messages_and_escapes(web: Web) -> None:
    pending = add(web, state="pending")
    inbox = add(web, channel="inbox")
    bad = add(web, title=HOSTILE, body_text=HOSTILE, to_address=HOSTILE, body_html=HOSTILE)
    web.login()
    assert web.get(f"/outbox/{pending}").status_code == 404
    assert web.get(f"/outbox/{inbox}").status_code == 404
    assert web.get("/outbox/424242").status_code == 404
    assert web.get("/outbox/x").status_code == 400
    for url in ("/outbox", f"/outbox/{bad}", f"/outbox?q={HOSTILE}"):
        t = web.get(url).text
        assert "<script>alert(1)</script>" not in t, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in t, url


def test_outbox_needs_sign_in(web: Web) -> None:
    did = add(web, title="private")
    for url in ("/outbox", f"/outbox/{did}"):
        r = web.get(url, follow_redirects=False)
        assert r.status_code == 303 and "private" not in r.text


def test_empty_outbox_says_how_messages_get_there(web: Web) -> None:
    web.login()
    t = web.get("/outbox").text
    assert "The outbox is empty" in t and "email" in t


def test_without_an_outbox_channel_the_page_says_email_goes_by_smtp(tmp_path: Path) -> None:
    rules = tmp_path / "duly.yaml"
    rules.write_text(
        "timezone: UTC\n"
        "channels:\n"
        '  email: {type: smtp, url: "smtp://mail.example.com:25", from: "duly@example.com"}\n'
        "rules: []\n"
    )
    web = make_web(tmp_path, rules=rules)
    try:
        did = add(web, title="went by smtp")
        web.login()
        r = web.get("/outbox")
        assert r.status_code == 200
        t = r.text
        assert "No outbox here" in t and "SMTP" in t
        assert "<td>email</td><td>smtp</td>" in t and "<td>inbox</td><td>inbox</td>" in t
        assert "went by smtp" not in t
        assert "No outbox here" in web.get(f"/outbox/{did}").text
    finally:
        web.close()


def test_outbox_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        a = add(web, title="Alpha 100%", to_address="a@example.com")
        b = add(web, title="Beta", to_address="b@example.com")
        web.login()
        assert mails(web) == [b, a]
        assert mails(web, "?q=ALPHA") == [a]
        assert mails(web, "?q=100%25") == [a]
        assert mails(web, f"?after={b}") == [a]
        assert "Beta" in web.get(f"/outbox/{b}").text
    finally:
        web.close()
