"""Acknowledge links (docs/reference/rules.md "Acknowledge").

First the tokens themselves (duly.delivery.ack): round trip, tampering, another secret, expiry judged
by itsdangerous's ``max_age`` in frozen (virtual) time, the secret from the environment or
kept in the database, the ``ack_link()`` template helper. Then the routes against a real
``duly serve`` (tests/live.py): a link in a sent message opens a page with a button, the
button acknowledges and stops the repeats; bad links get a 400 page; the API call.

The routes, the helper in templates and the ``settings`` table come with the wiring diffs
(app.py, render.py, runtime.py, a migration); the tests that need them skip, saying so, until
those are applied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from jinja2.sandbox import ImmutableSandboxedEnvironment

pytest.importorskip(
    "itsdangerous", reason="itsdangerous is added to the dependencies by the wiring diff"
)

from duly.core.clock import VirtualClock  # noqa: E402
from duly.delivery.ack import (  # noqa: E402
    ACK_LINKS_KEY,
    SECRET_ENV,
    AckLinkExpired,
    AckLinkInvalid,
    AckLinks,
    AckNotConfigured,
    AckSigner,
    ack_link,
    ack_url,
    load_secret,
)
from duly.store import tables  # noqa: E402
from duly.store.db import make_engine  # noqa: E402
from live import Live, live_server  # noqa: E402  (tests/ is on sys.path: conftest.py)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HAS_SETTINGS = hasattr(tables, "settings")
NEEDS_SETTINGS = pytest.mark.skipif(
    not HAS_SETTINGS, reason="the settings table comes with the migration in the wiring diff"
)


# --------------------------------------------------------------------------- tokens


def test_a_token_round_trips_what_it_carries() -> None:
    clock = VirtualClock(T0)
    s = AckSigner("s3cret", clock=clock)
    token = s.dumps("invoice-reminders", "invoice/INV 1/ä", "c1")
    assert re.fullmatch(r"[A-Za-z0-9_\-.]+", token), token  # safe in a URL path segment
    claim = s.loads(token)
    assert (claim.rule, claim.subject, claim.recipient) == (
        "invoice-reminders",
        "invoice/INV 1/ä",
        "c1",
    )
    assert claim.issued_at == T0 and claim.max_age_days == 30
    assert claim.expires_at == T0 + timedelta(days=30)
    assert s.loads(s.dumps("r", "job/J1", None)).recipient is None
    url = ack_url("https://duly.example.test/", "r", "job/J1", "c1", signer=s)
    assert url.startswith("https://duly.example.test/a/")
    assert s.loads(url.rsplit("/", 1)[1]).subject == "job/J1"


def test_a_changed_cut_or_foreign_token_is_invalid_not_expired() -> None:
    s = AckSigner("s3cret", clock=VirtualClock(T0))
    token = s.dumps("invoice-reminders", "invoice/INV-1", "c1")
    payload, stamp, sig = token.rsplit(".", 2)

    def flip(text: str, i: int) -> str:
        return text[:i] + ("B" if text[i] == "A" else "A") + text[i + 1 :]

    forged = [
        f"{flip(payload, 5)}.{stamp}.{sig}",  # the claim changed
        f"{payload}.{stamp}.{sig[:-2]}",  # the signature cut short
        f"{payload}.{flip(stamp, len(stamp) - 1)}.{sig}",  # the date changed
        f"{payload}.{stamp}.{flip(sig, 0)}",  # the signature changed
        token[: len(token) // 2],
        "",
        "x",
        "a" * 5000,
        AckSigner("another secret", clock=VirtualClock(T0)).dumps(
            "invoice-reminders", "invoice/INV-1", "c1"
        ),
    ]
    for bad in forged:
        with pytest.raises(AckLinkInvalid) as e:
            s.loads(bad)
        assert type(e.value) is AckLinkInvalid, bad


def test_expiry_is_itsdangerous_max_age_in_frozen_time() -> None:
    clock = VirtualClock(T0)
    s = AckSigner("s3cret", clock=clock)
    month = s.dumps("r", "job/J1", "c1")
    day = s.dumps("r", "job/J1", "c1", max_age_days=1)
    clock.set(T0 + timedelta(days=1))
    assert s.loads(day).max_age_days == 1  # exactly the max age: still valid
    clock.set(T0 + timedelta(days=1, seconds=1))
    with pytest.raises(AckLinkExpired, match="valid for 1 days"):
        s.loads(day)
    clock.set(T0 + timedelta(days=30))
    assert s.loads(month).rule == "r"
    clock.set(T0 + timedelta(days=30, seconds=1))
    with pytest.raises(AckLinkExpired, match="expired"):
        s.loads(month)


def test_a_link_from_a_clock_a_little_ahead_is_fine_from_far_ahead_it_is_not() -> None:
    later = AckSigner("s3cret", clock=VirtualClock(T0 + timedelta(minutes=2)))
    much_later = AckSigner("s3cret", clock=VirtualClock(T0 + timedelta(days=1)))
    s = AckSigner("s3cret", clock=VirtualClock(T0))
    assert s.loads(later.dumps("r", "job/J1", None)).rule == "r"
    with pytest.raises(AckLinkInvalid):
        s.loads(much_later.dumps("r", "job/J1", None))


def test_what_a_token_can_carry_is_checked() -> None:
    s = AckSigner("s3cret")
    for bad in (0, 367, True, 1.5):
        with pytest.raises(ValueError, match="max_age_days"):
            s.dumps("r", "job/J1", None, max_age_days=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="KIND/KEY"):
        s.dumps("r", "J1", None)
    with pytest.raises(ValueError, match="rule"):
        s.dumps("", "job/J1", None)
    with pytest.raises(ValueError, match="empty"):
        AckSigner("")


def test_the_secret_comes_from_the_environment_first(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, "  from-env  ")
    assert load_secret(None) == "from-env"
    links = AckLinks(db=None, base_url="https://x.test", clock=VirtualClock(T0))
    token = links.url("r", "job/J1", "c1").rsplit("/", 1)[1]
    assert AckSigner("from-env", clock=VirtualClock(T0)).loads(token).recipient == "c1"
    monkeypatch.delenv(SECRET_ENV)
    if not HAS_SETTINGS:
        with pytest.raises(AckNotConfigured, match="DULY_SECRET_KEY"):
            load_secret(make_engine(sqlite_url))


@NEEDS_SETTINGS
def test_without_one_a_secret_is_generated_once_and_kept_in_the_database(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    db = make_engine(db_url)
    first = load_secret(db)
    assert len(first) >= 40
    other = make_engine(db_url)  # another process
    assert load_secret(other) == first
    a = AckLinks(db=db, base_url="https://x.test", clock=VirtualClock(T0))
    b = AckLinks(db=other, base_url="https://x.test", clock=VirtualClock(T0))
    assert b.verify(a.url("r", "job/J1", "c1").rsplit("/", 1)[1]).rule == "r"
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(tables.settings)).scalar() == 1
    db.dispose()
    other.dispose()


def test_without_a_settings_table_links_need_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    db = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    with pytest.raises(AckNotConfigured, match="DULY_SECRET_KEY"):
        load_secret(db)
    db.dispose()


def render(source: str, **context: Any) -> str:
    env = ImmutableSandboxedEnvironment()
    env.globals["ack_link"] = ack_link
    return env.from_string(source).render(context)


def test_the_template_helper_links_the_messages_rule_subject_and_recipient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = VirtualClock(T0)
    s = AckSigner("s3cret", clock=clock)
    links = AckLinks(signer=s, base_url="https://duly.example.test")
    ctx = {
        "rule": {"name": "invoice-reminders", "category": "reminder"},
        "subject": {"kind": "invoice", "key": "INV-1", "ref": "invoice/INV-1"},
        "recipient": {"id": "c1", "name": "Alice"},
        ACK_LINKS_KEY: links,
    }
    url = render("{{ ack_link() }}", **ctx)
    assert url.startswith("https://duly.example.test/a/")
    claim = s.loads(url.rsplit("/", 1)[1])
    assert (claim.rule, claim.subject, claim.recipient, claim.max_age_days) == (
        "invoice-reminders",
        "invoice/INV-1",
        "c1",
        30,
    )
    week = render("{{ ack_link(max_age_days=7) }}", **ctx)
    assert s.loads(week.rsplit("/", 1)[1]).max_age_days == 7
    # a preview (no links configured) shows a sample link
    monkeypatch.setenv("DULY_BASE_URL", "https://preview.test/")
    assert render("{{ ack_link() }}", **{**ctx, ACK_LINKS_KEY: None}) == (
        "https://preview.test/a/sample-link"
    )
    with pytest.raises(ValueError, match="not about a subject"):
        render("{{ ack_link() }}", **{**ctx, "subject": None})


def test_the_renderer_offers_ack_link_in_every_template(tmp_path: Path) -> None:
    import inspect

    from duly.delivery.rendering import Renderer

    if "ack_links" not in inspect.signature(Renderer).parameters:
        pytest.skip("Renderer(ack_links=...) comes with the render.py diff")
    (tmp_path / "note.email.txt").write_text("Subject: Hi\nGot it? {{ ack_link() }}\n")
    s = AckSigner("s3cret", clock=VirtualClock(T0))
    r = Renderer(tmp_path, ack_links=AckLinks(signer=s, base_url="https://d.test"))  # type: ignore[call-arg]
    out = r.render(
        "note",
        "email",
        {
            "rule": {"name": "n"},
            "subject": {"kind": "job", "key": "J1", "ref": "job/J1"},
            "recipient": {"id": "c1"},
        },
    )
    assert out.text is not None
    token = out.text.split("https://d.test/a/", 1)[1].strip()
    assert s.loads(token).subject == "job/J1"


# --------------------------------------------------------------------------- the routes

RULES = """\
timezone: UTC
rules:
  - name: chase
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - {name: nudge, at: "due_at", repeat: {every: 1d, count: 4}, template: chase}
"""
TEMPLATE = "Subject: {{ subject.key }} is due\nPaid already? Tell us: {{ ack_link() }}\n"
BASE_URL = "https://duly.example.test"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("ack")
    (tmp / "templates").mkdir()
    (tmp / "templates" / "chase.email.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    env = {"DULY_BASE_URL": BASE_URL, SECRET_ENV: ""}  # no secret given: one is generated
    with live_server(tmp, rules=tmp / "duly.yaml", extra_env=env) as server:
        r = httpx.get(server.url + "/a/probe", timeout=10)
        if r.status_code == 404:
            pytest.skip("the /a/ routes are wired into the app by the diff to api/app.py")
        yield server


@pytest.fixture(scope="module")
def api(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def secret(live: Live) -> str:
    """The secret the server generated and keeps in the database (or this makes it first:
    the server then reads the same one)."""
    import os

    assert not os.environ.get(SECRET_ENV)
    db = make_engine(live.database)
    try:
        return load_secret(db)
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def signer(secret: str) -> AckSigner:
    """Signs like the server."""
    return AckSigner(secret)


def invoice(api: httpx.Client, key: str, due: datetime) -> None:
    r = api.put("/v1/recipients/c1", json={"name": "Alice", "email": "alice@example.test"})
    assert r.status_code in (200, 201), r.text
    r = api.put(
        f"/v1/subjects/invoice/{key}",
        json={
            "attributes": {"status": "sent", "due_at": due.isoformat()},
            "recipients": {"customer": "c1"},
        },
    )
    assert r.status_code == 200, r.text


def plan(api: httpx.Client, key: str) -> list[dict[str, Any]]:
    r = api.get("/v1/deliveries", params={"subject": f"invoice/{key}", "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def page_ok(r: httpx.Response, status: int, *texts: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "<script" not in r.text
    for t in texts:
        assert t in r.text, (t, r.text)
    return r.text


def test_the_link_in_a_message_opens_a_page_and_its_button_stops_the_repeats(
    live: Live, api: httpx.Client
) -> None:
    invoice(api, "INV-1", datetime.now(UTC) + timedelta(seconds=2))
    end = time.monotonic() + 20
    while True:
        sent = [d for d in plan(api, "INV-1") if d["state"] == "sent"]
        if sent or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert sent, "the first reminder was not sent"
    detail = api.get(f"/v1/deliveries/{sent[0]['id']}").json()
    link = re.search(r"(\S+/a/\S+)", detail["content"]["text"]).group(1)  # type: ignore[union-attr]
    assert link.startswith(BASE_URL + "/a/")  # DULY_BASE_URL
    path = link[len(BASE_URL) :]

    with httpx.Client(base_url=live.url, timeout=10) as browser:  # no API key, no cookies
        page = page_ok(browser.get(path), 200, "Acknowledge", "chase", "invoice/INV-1")
        assert '<form method="post">' in page and '<button type="submit">' in page
        # opening the link (a mail scanner would) changes nothing
        assert api.get("/v1/subjects/invoice/INV-1").json()["acknowledged"] == []
        assert len([d for d in plan(api, "INV-1") if d["state"] == "pending"]) == 3

        # the button: a plain form POST
        page_ok(browser.post(path, data={}), 200, "Thank you")
    assert api.get("/v1/subjects/invoice/INV-1").json()["acknowledged"] == ["chase"]
    left = plan(api, "INV-1")
    assert not [d for d in left if d["state"] == "pending"]
    assert (
        sorted((d["state"], d["reason"]) for d in left if d["state"] != "sent")
        == [("cancelled", "acknowledged")] * 3
    )
    with httpx.Client(base_url=live.url, timeout=10) as browser:  # pressing it again: fine
        page_ok(browser.post(path), 200, "Thank you")


def test_changed_cut_or_expired_links_get_a_clear_400_page(
    live: Live, api: httpx.Client, secret: str, signer: AckSigner
) -> None:
    invoice(api, "INV-2", datetime.now(UTC) + timedelta(days=30))
    token = signer.dumps("chase", "invoice/INV-2", "c1")
    # signed 40 days ago
    old = AckSigner(secret, clock=VirtualClock(datetime.now(UTC) - timedelta(days=40))).dumps(
        "chase", "invoice/INV-2", "c1"
    )
    payload, stamp, sig = token.rsplit(".", 2)
    with httpx.Client(base_url=live.url, timeout=10) as browser:
        for bad in (f"{payload}.{stamp}.{sig[:-3]}", token[:20], "x", "a" * 3000, "%00"):
            for method in ("GET", "POST"):
                r = browser.request(method, f"/a/{bad}")
                page_ok(r, 400, "This link is not valid")
        for method in ("GET", "POST"):
            page_ok(browser.request(method, f"/a/{old}"), 400, "This link has expired")
    assert api.get("/v1/subjects/invoice/INV-2").json()["acknowledged"] == []


def test_a_link_whose_subject_or_rule_is_gone_says_so(
    live: Live, api: httpx.Client, signer: AckSigner
) -> None:
    invoice(api, "INV-3", datetime.now(UTC) + timedelta(days=30))
    assert api.delete("/v1/subjects/invoice/INV-3").status_code == 204
    gone = signer.dumps("chase", "invoice/INV-3", "c1")
    no_rule = signer.dumps("no-such-rule", "invoice/INV-2", "c1")
    with httpx.Client(base_url=live.url, timeout=10) as browser:
        for token in (gone, no_rule):
            for method in ("GET", "POST"):
                page_ok(browser.request(method, f"/a/{token}"), 410, "no longer applies")


def test_the_api_acknowledges_for_the_app(live: Live, api: httpx.Client) -> None:
    invoice(api, "INV-4", datetime.now(UTC) + timedelta(days=30))
    r = api.post("/v1/subjects/invoice/INV-4/ack", json={"rule": "chase", "recipient": "c1"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "rule": "chase",
        "subject": "invoice/INV-4",
        "recipient": "c1",
        "acknowledged": ["chase"],
        "cancelled": 4,
    }
    r = api.post("/v1/subjects/invoice/INV-4/ack", json={"rule": "chase"})
    assert r.status_code == 200 and r.json()["cancelled"] == 0
    assert (
        httpx.post(live.url + "/v1/subjects/invoice/INV-4/ack", json={"rule": "chase"}).status_code
        == 401
    )
    r = api.post("/v1/subjects/invoice/NOPE/ack", json={"rule": "chase"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "subject"
    r = api.post("/v1/subjects/invoice/INV-4/ack", json={"rule": "nope"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "rule"
    r = api.post("/v1/subjects/invoice/INV-4/ack", json={"rule": "chase", "extra": 1})
    assert r.status_code == 422
    doc = api.get("/openapi.json").json()
    assert "/v1/subjects/{kind}/{key}/ack" in doc["paths"]
    assert not [p for p in doc["paths"] if p.startswith("/a/")]  # pages are not API
