"""The recipients pages in-process: search, paging, the detail page (addresses, consent,
suppressions, inbox, deliveries), clearing a suppression, changing consent, escaping, odd
ids, 404/400 pages, and one run on PostgreSQL."""

from __future__ import annotations

import dataclasses
import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import sqlalchemy as sa

from duly.core.model import Recipient
from duly.engine.service import ReminderInput
from duly.store.db import write_transaction
from duly.store.tables import deliveries, suppressions
from webui import VIEWER, Web, make_web  # tests/webui.py

_ROW = re.compile(r'<a href="/recipients/([^"#?/]+)" class="mono">')


def ids_on(page_html: str) -> list[str]:
    """The recipient ids a list page shows, in order."""
    return [unquote(x) for x in _ROW.findall(page_html)]


def people(web: Web) -> None:
    e = web.engine
    e.put_recipient(
        Recipient(
            "alice",
            name="Alice Moreau",
            email="alice@example.com",
            phone="+441632960001",
            timezone="Europe/London",
            locale="en_GB",
        )
    )
    e.put_recipient(
        Recipient(
            "bob",
            name="Bob Chen",
            email="Bob.Chen@Example.org",
            phone="+12025550143",
            timezone="America/New_York",
        )
    )
    e.put_recipient(Recipient("carol_100%", name="Carol", email="c@example.net", phone="+3361234"))


def suppress(
    web: Web, address: str, channel: str = "email", delivery_id: int | None = None
) -> None:
    with write_transaction(web.rt.db) as conn:
        web.rt.engine.store.suppress(
            conn, address, channel, "550 mailbox unavailable", delivery_id, datetime.now(UTC)
        )


def remind(web: Web, to: list[str], channels: list[str] | None = None, title: str = "Pay") -> int:
    return web.engine.create_reminder(
        ReminderInput(
            title,
            f"{title} body",
            datetime.now(UTC) + timedelta(days=2),
            to,
            channels=channels or ["email"],
        )
    )


def delivery_ids(web: Web, recipient: str) -> list[int]:
    with web.rt.db.connect() as conn:
        return list(
            conn.execute(
                sa.select(deliveries.c.id)
                .where(deliveries.c.recipient == recipient)
                .order_by(deliveries.c.id)
            ).scalars()
        )


# --------------------------------------------------------------------------- list


def test_pages_need_sign_in(web: Web) -> None:
    people(web)
    for url in ("/recipients", "/recipients/alice"):
        r = web.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_search_by_each_field_narrows_the_list(web: Web) -> None:
    people(web)
    web.login()
    assert ids_on(web.get("/recipients").text) == ["alice", "bob", "carol_100%"]
    cases = {
        "ali": ["alice"],  # id
        "MOREAU": ["alice"],  # name, any case
        "bob.chen@example": ["bob"],  # email, any case
        "5550143": ["bob"],  # phone
        "+336": ["carol_100%"],
        "example": ["alice", "bob", "carol_100%"],
        "%": ["carol_100%"],  # LIKE's wildcards are literal text
        "_": ["carol_100%"],
        "nobody": [],
    }
    for q, want in cases.items():
        r = web.get("/recipients", params={"q": q})
        assert r.status_code == 200, q
        assert ids_on(r.text) == want, q
    r = web.get("/recipients", params={"q": "nobody"})
    assert "No recipient matches “nobody”" in r.text


def test_paging_by_id_has_no_duplicates_or_gaps(web: Web) -> None:
    for i in range(123):
        web.engine.put_recipient(Recipient(f"p{i:03d}", name=f"Person {i}"))
    web.engine.put_recipient(Recipient("zed", name="Somebody else"))
    web.login()
    seen: list[str] = []
    url: str | None = "/recipients?q=person"
    pages = 0
    while url:
        r = web.get(url)
        assert r.status_code == 200
        got = ids_on(r.text)
        assert len(got) <= 50
        seen += got
        pages += 1
        m = re.search(r'<a class="btn" href="(\?[^"]+)">Next page', r.text)
        url = "/recipients" + html.unescape(m.group(1)) if m else None
    assert pages == 3
    assert seen == [f"p{i:03d}" for i in range(123)]


def test_list_shows_suppression_and_pending_counts(web: Web) -> None:
    people(web)
    suppress(web, "ALICE@example.com")
    suppress(web, "+12025550143", "sms")
    with write_transaction(web.rt.db) as conn:  # a cleared one does not count
        conn.execute(
            sa.update(suppressions)
            .where(suppressions.c.channel == "sms")
            .values(cleared_at=datetime.now(UTC))
        )
    remind(web, ["alice", "bob"])
    remind(web, ["alice"], title="Again")
    web.login()
    text = web.get("/recipients").text
    rows = {
        rid: row
        for rid, row in re.findall(
            r'<tr>\s*<td><a href="/recipients/([^"]+)" class="mono">.*?</a></td>(.*?)</tr>',
            text,
            re.S,
        )
    }
    assert "suppressed" in rows["alice"] and "suppressed" not in rows["bob"]
    assert re.search(r'class="num">2</td>', rows["alice"])
    assert re.search(r'class="num">1</td>', rows["bob"])
    assert re.search(r'class="num">0</td>', rows[quote("carol_100%", safe="")])
    assert "Europe/London" in rows["alice"] and "en_GB" in rows["alice"]


def test_bad_query_is_a_400_page(web: Web) -> None:
    web.login()
    r = web.get("/recipients", params={"q": "x" * 500})
    assert r.status_code == 400 and "text/html" in r.headers["content-type"]
    r = web.get("/recipients", params={"after": "y" * 500})
    assert r.status_code == 400


def test_empty_list_says_how_recipients_get_there(web: Web) -> None:
    web.login()
    assert "No recipients yet" in web.get("/recipients").text


# --------------------------------------------------------------------------- detail


# an inbox channel of its own name, used by a rule (only channels some rule uses are built)
INBOX_RULES = """\
timezone: Europe/London
channels:
  app: {type: inbox}
rules:
  - name: task-nudges
    subject: task
    to: [owner]
    channels: [app]
    at: "due_at"
    template: nudge
"""


def test_detail_shows_addresses_consent_suppressions_inbox_and_deliveries(tmp_path: Path) -> None:
    rules = tmp_path / "duly.yaml"
    rules.write_text(INBOX_RULES)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "nudge.app.txt").write_text("Task due\n")
    web = make_web(tmp_path, rules=rules)
    try:
        web.engine.put_recipient(
            Recipient(
                "dana",
                name="Dana Scully",
                email="dana@example.com",
                phone="+15550001",
                timezone="Asia/Tokyo",
                locale="ja_JP",
                addresses={"slack": "U0DANA"},
            )
        )
        # two inbox items on the rule file's own inbox channel "app", one read
        remind(web, ["dana"], ["app"], title="First note")
        remind(web, ["dana"], ["app"], title="Second note")
        remind(web, ["dana"], ["email"], title="Later email")
        first, second, later = delivery_ids(web, "dana")
        web.engine.send_now(first)
        web.engine.send_now(second)
        web.rt.dispatcher.run_once()
        from duly.engine.inbox import InboxStore

        InboxStore(web.rt.db, ("app",)).mark_read("dana", first, datetime.now(UTC))
        with web.rt.db.connect() as conn:
            dana = web.engine.store.get_recipients(conn, ["dana"])["dana"]
        consent = {"reminder": False, "channels": {"app": False}, "rules": {"old": False}}
        web.engine.put_recipient(dataclasses.replace(dana, consent=consent))
        suppress(web, "dana@example.com", delivery_id=later)
        web.login()
        r = web.get("/recipients/dana")
        assert r.status_code == 200
        t = r.text
        assert "<h1>Dana Scully</h1>" in t
        for s in ("dana@example.com", "+15550001", "slack", "U0DANA", "Asia/Tokyo", "ja_JP"):
            assert s in t, s
        assert "local time there now" in t and " JST" in t
        # consent, readable
        assert re.search(r"Reminders</th><td[^>]*><span class=\"bad\">Opted out", t)
        assert re.search(r"Channel <code>app</code></th><td[^>]*><span class=\"bad\">Opted out", t)
        assert re.search(r"Rule <code>old</code>.*?Opted out", t, re.S)
        assert "Not opted in" in t  # promotional
        # the suppression and its cause
        assert "550 mailbox unavailable" in t and f'href="/deliveries/{later}"' in t
        assert ">Clear</button>" in t
        # inbox: both items, one unread
        assert "First note" in t and "Second note" in t and "(1 unread)" in t
        inbox = t.split('id="h-inbox"')[1].split("</section>")[0]
        assert inbox.count('state-pending">unread') == 1
        # the sent items are recent deliveries; the email is upcoming, with Tokyo time beside
        upcoming = t.split('id="h-upcoming"')[1].split("</section>")[0]
        recent = t.split('id="h-recent"')[1].split("</section>")[0]
        assert f'href="/deliveries/{later}"' in upcoming and "JST there" in upcoming
        assert f'href="/deliveries/{first}"' in recent and "state-sent" in recent
        assert f'href="/deliveries/{later}"' not in recent
    finally:
        web.close()


def test_unknown_recipient_is_a_404_page(web: Web) -> None:
    web.login()
    r = web.get("/recipients/nobody")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert web.get("/recipients/" + "x" * 300).status_code == 404


def test_odd_ids_work_and_links_are_quoted(web: Web) -> None:
    odd = ["team/ops lead", "zoë ünï", "a#b?c", "x/consent"]
    for rid in odd:
        web.engine.put_recipient(Recipient(rid, name=f"Name of {rid}", email=f"{len(rid)}@x.io"))
    web.login()
    text = web.get("/recipients").text
    assert sorted(ids_on(text)) == sorted(odd)
    for rid in odd:
        assert f'href="/recipients/{quote(rid, safe="")}"' in text
        r = web.get(f"/recipients/{quote(rid, safe='')}")
        assert r.status_code == 200, rid
        assert html.escape(f"Name of {rid}") in r.text
    # a form of a recipient whose id ends like a route goes to that recipient
    suppress(web, "9@x.io")  # x/consent's
    url = f"/recipients/{quote('x/consent', safe='')}"
    r = web.post(url + "/unsuppress", {"address": "9@x.io"}, token_from=url)
    assert r.status_code == 303 and r.headers["location"].startswith(url)
    with web.rt.db.connect() as conn:
        assert conn.execute(sa.select(suppressions.c.cleared_at)).scalar() is not None


def test_hostile_data_is_escaped(web: Web) -> None:
    web.engine.put_recipient(
        Recipient(
            "<b>id</b>",
            name="<script>alert(1)</script>",
            email='"><img src=x onerror=alert(1)>@x.com',
            addresses={"<i>ch</i>": "<svg onload=alert(2)>"},
            consent={"rules": {"<u>rule</u>": False}},
        )
    )
    suppress(web, '"><img src=x onerror=alert(1)>@x.com')
    web.login()
    for url in (
        "/recipients",
        "/recipients?q=script",
        "/recipients/" + quote("<b>id</b>", safe=""),
    ):
        t = web.get(url).text
        assert "<script>alert(1)</script>" not in t
        assert "<img src=x" not in t and "<svg" not in t and "<b>id</b>" not in t
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in t
    t = web.get("/recipients/" + quote("<b>id</b>", safe="")).text
    assert "<i>ch</i>" not in t and "<u>rule</u>" not in t
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;@x.com" in t


# --------------------------------------------------------------------------- changes


def test_clearing_a_suppression(web: Web) -> None:
    people(web)
    suppress(web, "alice@example.com")
    suppress(web, "+12025550143", "sms")  # bob's: not alice's to clear
    web.login(VIEWER)
    page = web.get("/recipients/alice").text
    assert "550 mailbox unavailable" in page and ">Clear</button>" not in page
    r = web.post(
        "/recipients/alice/unsuppress",
        {"address": "alice@example.com"},
        token_from="/recipients/alice",
    )
    assert r.status_code == 403
    web.logout()
    web.login()
    # without the CSRF token: refused
    r = web.client.post(
        "/recipients/alice/unsuppress",
        data={"address": "alice@example.com"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    # someone else's address through this recipient: no
    r = web.post(
        "/recipients/alice/unsuppress", {"address": "+12025550143"}, token_from="/recipients/alice"
    )
    assert r.status_code == 404
    with web.rt.db.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).where(suppressions.c.cleared_at.is_(None))
            ).scalar()
            == 2
        )
    r = web.post(
        "/recipients/alice/unsuppress",
        {"address": "Alice@Example.com"},
        token_from="/recipients/alice",
    )
    assert r.status_code == 303 and r.headers["location"] == "/recipients/alice#suppressions"
    with web.rt.db.connect() as conn:
        rows = {
            a: c
            for a, c in conn.execute(sa.select(suppressions.c.address, suppressions.c.cleared_at))
        }
    assert rows["alice@example.com"] is not None and rows["+12025550143"] is None
    page = web.get("/recipients/alice").text
    assert "cleared: deliveries to it go out again" in page
    assert 'state-skipped">cleared' in page and ">Clear</button>" not in page
    assert "suppressed" not in web.get("/recipients?q=alice").text.split("<tbody>")[1]


def test_changing_consent_through_the_form(web: Web) -> None:
    people(web)
    remind(web, ["alice"])
    web.login()
    page = web.get("/recipients/alice").text
    # every control has a label
    for cid in re.findall(r'<input type="checkbox" id="([^"]+)"', page):
        assert re.search(f'<label for="{re.escape(cid)}"[ >]', page), cid
    rules = re.findall(r'name="rule" value="([^"]+)"', page)
    assert "invoice-reminders" in rules and "payment-receipt" not in rules  # transactional
    # opt out of reminders and of the email channel and of one rule; opt in to promotional
    keep = [x for x in rules if x != "invoice-reminders"]
    r = web.post(
        "/recipients/alice/consent",
        {"category": ["promotional"], "rule": keep},
        token_from="/recipients/alice",
    )
    assert r.status_code == 303
    with web.rt.db.connect() as conn:
        alice = web.engine.store.get_recipients(conn, ["alice"])["alice"]
    assert alice.consent == {
        "reminder": False,
        "promotional": True,
        "channels": {"email": False},
        "rules": {"invoice-reminders": False},
    }
    page = web.get("/recipients/alice").text
    assert "Consent saved." in page
    assert re.search(r"Reminders</th><td[^>]*><span class=\"bad\">Opted out", page)
    assert re.search(r"promotional\)</th><td[^>]*><span class=\"ok\">Opted in", page)
    assert re.search(r"Rule <code>invoice-reminders</code>.*?Opted out", page, re.S)
    assert 'value="email" checked' not in page and 'value="promotional" checked' in page
    # and back: checking everything removes the opt-outs
    r = web.post(
        "/recipients/alice/consent",
        {"category": ["reminder"], "channel": ["email"], "rule": rules},
        token_from="/recipients/alice",
    )
    with web.rt.db.connect() as conn:
        alice = web.engine.store.get_recipients(conn, ["alice"])["alice"]
    assert alice.consent == {
        "reminder": True,
        "promotional": False,
        "rules": {"invoice-reminders": True},
    }


def test_a_viewer_cannot_change_consent_and_a_form_without_token_is_refused(web: Web) -> None:
    people(web)
    web.login(VIEWER)
    page = web.get("/recipients/alice").text
    assert "Consent and preferences" in page and "Save consent" not in page
    r = web.post("/recipients/alice/consent", {}, token_from="/recipients/alice")
    assert r.status_code == 403
    web.logout()
    web.login()
    r = web.client.post("/recipients/alice/consent", data={}, follow_redirects=False)
    assert r.status_code == 403
    with web.rt.db.connect() as conn:
        assert web.engine.store.get_recipients(conn, ["alice"])["alice"].consent == {}
    r = web.post("/recipients/nobody/consent", {}, token_from="/recipients/alice")
    assert r.status_code == 404


# --------------------------------------------------------------------------- PostgreSQL


def test_search_detail_and_clear_on_postgres(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        people(web)
        web.engine.put_recipient(Recipient("team/ops lead", name="Zoë Ünal", email="z@x.io"))
        suppress(web, "alice@example.com")
        remind(web, ["alice"])
        web.login()
        assert ids_on(web.get("/recipients?q=MOREAU").text) == ["alice"]
        assert ids_on(web.get("/recipients?q=bob.chen@EXAMPLE").text) == ["bob"]
        assert ids_on(web.get("/recipients?q=%25").text) == ["carol_100%"]
        assert ids_on(web.get("/recipients?q=ops lead").text) == ["team/ops lead"]
        assert ids_on(web.get("/recipients?after=bob").text) == ["carol_100%", "team/ops lead"]
        t = web.get("/recipients?q=alice").text
        assert "suppressed" in t.split("<tbody>")[1]
        r = web.get("/recipients/" + quote("team/ops lead", safe=""))
        assert r.status_code == 200 and "Zoë Ünal" in r.text
        t = web.get("/recipients/alice").text
        assert "550 mailbox unavailable" in t and "Europe/London" in t
        r = web.post(
            "/recipients/alice/unsuppress",
            {"address": "alice@example.com"},
            token_from="/recipients/alice",
        )
        assert r.status_code == 303
        r = web.post(
            "/recipients/alice/consent",
            {"category": ["reminder"]},
            token_from="/recipients/alice",
        )
        assert r.status_code == 303
        with web.rt.db.connect() as conn:
            assert conn.execute(sa.select(suppressions.c.cleared_at)).scalar() is not None
            alice = web.engine.store.get_recipients(conn, ["alice"])["alice"]
        assert alice.consent["channels"] == {"email": False}
    finally:
        web.close()
