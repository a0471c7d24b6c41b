"""Preference pages and one-click unsubscribe against a real ``duly serve`` (tests/live.py):
docs/reference/http-api.md ``GET/POST /u/{token}``, RFC 8058, docs/reference/rules.md "Consent".

The routes come with the wiring diff to api/app.py; these tests skip, saying so, until it is
applied."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from duly.core.clock import VirtualClock
from duly.delivery.ack import SECRET_ENV
from duly.delivery.preferences import PrefSigner, apply_unsubscribe
from live import Live, live_server  # noqa: E402  (tests/ is on sys.path: conftest.py)

SECRET = "preferences-test-secret"
RULES = """\
timezone: UTC
channels:
  email: {type: outbox}
rules:
  - name: chase
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    channels: [email]
    template: note
    steps:
      - {name: nudge, at: "due_at"}
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    channels: [email]
    template: note
"""
EVIL = '<script>alert("x")</script> & Co'


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("prefs")
    (tmp / "duly.yaml").write_text(RULES)
    (tmp / "templates").mkdir()
    (tmp / "templates" / "note.email.txt").write_text("Subject: {{ rule.name }}\nHello.\n")
    env = {"DULY_BASE_URL": "https://duly.example.test", SECRET_ENV: SECRET}
    with live_server(tmp, rules=tmp / "duly.yaml", extra_env=env) as server:
        if httpx.get(server.url + "/u/probe", timeout=10).status_code == 404:
            pytest.skip("the /u/ routes are wired into the app by the diff to api/app.py")
        yield server


@pytest.fixture(scope="module")
def api(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture
def browser(live: Live) -> Iterator[httpx.Client]:
    """No API key, no cookies kept."""
    with httpx.Client(base_url=live.url, timeout=10) as c:
        yield c


signer = PrefSigner(SECRET)


def recipient(api: httpx.Client, rid: str, consent: dict[str, Any] | None = None) -> None:
    body = {"name": EVIL, "email": f"{rid}@example.test", "consent": consent or {}}
    r = api.put(f"/v1/recipients/{rid}", json=body)
    assert r.status_code in (200, 201), r.text


def consent(api: httpx.Client, rid: str) -> dict[str, Any]:
    r = api.get(f"/v1/recipients/{rid}/preferences")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def page_ok(r: httpx.Response, status: int, *texts: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "set-cookie" not in r.headers
    assert "<script" not in r.text
    for t in texts:
        assert t in r.text, (t, r.text)
    return r.text


def test_the_page_shows_the_state_escaped(api: httpx.Client, browser: httpx.Client) -> None:
    recipient(api, "p1", {"promotional": True, "rules": {"chase": False}})
    token = signer.pref_token("p1")
    text = page_ok(browser.get(f"/u/{token}"), 200, "Your notification preferences")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in text
    assert '<label for="cat-reminder">' in text and '<form method="post">' in text
    assert 'name="category" value="reminder" checked' in text
    assert 'name="category" value="promotional" checked' in text
    assert 'name="channel" value="email" checked' in text
    assert 'name="rule" value="chase">' in text  # opted out: unchecked
    assert consent(api, "p1")["rules"] == {"chase": False}  # a GET changes nothing


def test_the_form_saves(api: httpx.Client, browser: httpx.Client) -> None:
    recipient(api, "p2")
    path = f"/u/{signer.pref_token('p2', rule='chase', category='reminder')}"
    form = {"form": "preferences", "category": ["promotional"], "channel": [], "rule": ["chase"]}
    r = browser.post(path, data=form, headers={"Origin": "null"})
    page_ok(r, 200, "Your preferences are saved")
    assert consent(api, "p2") == {
        "promotional": True,
        "reminder": False,
        "channels": {"email": False},
        "rules": {"chase": True},
    }
    # from another site: refused, nothing changed
    r = browser.post(path, data={"form": "preferences"}, headers={"Origin": "https://evil.test"})
    page_ok(r, 403, "another site")
    assert consent(api, "p2")["promotional"] is True
    # from the server's own origin (DULY_BASE_URL): fine
    r = browser.post(
        path,
        data={"form": "preferences", "category": "reminder", "channel": "email"},
        headers={"Origin": "https://duly.example.test"},
    )
    page_ok(r, 200, "saved")
    assert consent(api, "p2") == {  # an unticked box (the rule here) is an opt-out
        "promotional": False,
        "reminder": True,
        "channels": {},
        "rules": {"chase": False},
    }


def test_one_click_exactly_as_mailbox_providers_send_it(api: httpx.Client, live: Live) -> None:
    recipient(api, "p3")
    path = f"/u/{signer.pref_token('p3', rule='chase', category='reminder')}"
    # RFC 8058 section 3.1: a POST with exactly this body, urlencoded; no cookies, no Origin
    r = httpx.post(
        live.url + path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    page_ok(r, 200, "You are unsubscribed", "chase")
    assert consent(api, "p3")["rules"] == {"chase": False}
    # multipart/form-data, and a promotional message: the whole category
    recipient(api, "p4", {"promotional": True})
    promo = signer.pref_token("p4", rule="chase", category="promotional")
    r = httpx.post(
        f"{live.url}/u/{promo}",
        files={"List-Unsubscribe": (None, "One-Click")},
        timeout=10,
    )
    page_ok(r, 200, "You are unsubscribed")
    assert consent(api, "p4")["promotional"] is False
    # twice is harmless
    r = httpx.post(live.url + path, data={"List-Unsubscribe": "One-Click"}, timeout=10)
    page_ok(r, 200, "You are unsubscribed")
    # anything else is not an unsubscribe
    r = httpx.post(live.url + path, data={"List-Unsubscribe": "Maybe"}, timeout=10)
    page_ok(r, 400, "Nothing to do")


def test_tampered_or_expired_tokens_are_a_400_page(
    api: httpx.Client, browser: httpx.Client
) -> None:
    recipient(api, "p5")
    token = signer.pref_token("p5")
    payload, stamp, sig = token.rsplit(".", 2)
    old = PrefSigner(SECRET, clock=VirtualClock(datetime.now(UTC) - timedelta(days=400)))
    from duly.delivery.ack import AckSigner

    ack = AckSigner(SECRET).dumps("chase", "invoice/I", "p5")  # another salt: not ours
    for bad in (f"{payload}.{stamp}.{sig[:-3]}", token[:20], "x", "a" * 3000, "%00", ack):
        for method in ("GET", "POST"):
            r = browser.request(method, f"/u/{bad}", data={"List-Unsubscribe": "One-Click"})
            page_ok(r, 400, "This link is not valid")
    expired = old.pref_token("p5")
    for method in ("GET", "POST"):
        r = browser.request(method, f"/u/{expired}", data={"List-Unsubscribe": "One-Click"})
        page_ok(r, 400, "expired")
    r = browser.post(f"/u/{token}", content=b"\xff\xfe", headers={"Content-Type": "multipart/x"})
    page_ok(r, 400)
    assert consent(api, "p5") == {
        "promotional": None,
        "reminder": None,
        "channels": {},
        "rules": {},
    }
    page_ok(browser.get(f"/u/{signer.pref_token('nobody')}"), 410, "no longer applies")


def test_consent_api(api: httpx.Client, live: Live) -> None:
    recipient(api, "p6")
    body = {"reminder": False, "channels": {"sms": False}, "rules": {}}
    r = api.put("/v1/recipients/p6/preferences", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "promotional": None,
        "reminder": False,
        "channels": {"sms": False},
        "rules": {},
    }
    assert api.get("/v1/recipients/p6").json()["name"] == EVIL  # the rest kept
    assert api.get("/v1/recipients/nobody/preferences").status_code == 404
    assert api.put("/v1/recipients/p6/preferences", json={"x": 1}).status_code == 422
    assert httpx.get(live.url + "/v1/recipients/p6/preferences", timeout=10).status_code == 401


def test_transactional_mail_keeps_going_after_opting_out_of_reminders(
    api: httpx.Client, live: Live
) -> None:
    recipient(api, "p7")
    assert apply_unsubscribe({}, category="reminder") == {"reminder": False}
    r = httpx.post(
        f"{live.url}/u/{signer.pref_token('p7', category='reminder')}",
        data={"List-Unsubscribe": "One-Click"},
        timeout=10,
    )
    page_ok(r, 200, "You are unsubscribed")
    due = datetime.now(UTC) + timedelta(seconds=2)
    attrs = {"status": "sent", "due_at": due.isoformat()}
    subject = {"attributes": attrs, "recipients": {"customer": "p7"}}
    assert api.put("/v1/subjects/invoice/P7", json=subject).status_code == 200
    assert wait_done(api, "chase") == ("skipped", "no_consent")  # the reminder: opted out
    subject["attributes"] = {**attrs, "status": "paid"}
    assert api.put("/v1/subjects/invoice/P7", json=subject).status_code == 200
    assert wait_done(api, "receipt") == ("sent", None)  # the receipt: always


def wait_done(api: httpx.Client, rule: str) -> tuple[str, str | None]:
    end = time.monotonic() + 20
    while True:
        items = api.get("/v1/deliveries", params={"subject": "invoice/P7"}).json()["items"]
        done = [(d["state"], d["reason"]) for d in items if d["rule"] == rule]
        if (done and done[0][0] not in ("pending", "sending")) or time.monotonic() > end:
            assert done, items
            return done[0]
        time.sleep(0.2)
