"""Plain language: every page an operator reads says states, reasons, channel health and the
one-off reminders rule in words, and shows the engine's code only small, in
``<code class="code">`` (for people who search logs)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from duly.core.model import REMINDER_RULE, Reason, Recipient
from duly.engine.dispatch.breaker import Breaker
from duly.engine.service import SubjectInput
from duly.web import words
from webui import Web  # tests/webui.py
from webui import add_delivery as add

_CODE = re.compile(r'<code class="code"[^>]*>(.*?)</code>', re.S)


def visible(html: str) -> str:
    """The page's text a person reads, the small code elements left out."""
    body = html.split("<main", 1)[-1]
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    body = _CODE.sub(" ", body)
    body = re.sub(r"<select\b.*?</select>", " ", body, flags=re.S)  # option values
    body = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", body)


def codes(html: str) -> list[str]:
    return _CODE.findall(html)


def paid_invoice(web: Web, key: str = "INV-1") -> None:
    web.engine.put_recipient(Recipient(id="alice", name="Alice", email="alice@example.com"))
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            key,
            {"status": "paid", "due_at": "2026-01-01"},
            {"customer": "alice"},
        )
    )


# --------------------------------------------------------------------------- the module


def test_every_reason_and_state_has_words() -> None:
    for r in Reason:
        text = words.reason_words(r.value, "invoice/INV-1")
        assert text and text != r.value and "{" not in text, r
    for s in ("pending", "sending", "sent", "failed", "skipped", "cancelled", "set", "overdue"):
        assert words.state_words(s) and words.state_words(s) != s
    assert words.reason_words("condition_false", "invoice/INV-1", "paid") == (
        "Not needed: the invoice is now paid"
    )
    assert words.reason_words("condition_false", "appointment/A-1") == (
        "Not needed: the appointment no longer meets the rule's condition"
    )
    assert words.reason_words("subject_deleted", "appointment/A-1") == (
        "Not needed: the appointment was deleted"
    )
    assert words.rule_words(REMINDER_RULE) == "One-off reminder"
    assert words.rule_words("invoice-reminders") == "invoice-reminders"


def test_channel_health_in_words() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    now = datetime(2026, 3, 10, 10, 40, tzinfo=UTC)
    b = Breaker(failures=1, cooldown=timedelta(minutes=2))
    assert words.breaker_words(b.state(now)) == "Working"
    b.fail(now)
    assert words.breaker_words(b.state(now), b.open_until, ZoneInfo("UTC")) == (
        "Failing, paused until 10:42"
    )
    assert words.breaker_words("half-open") == "Testing again"


# --------------------------------------------------------------------------- the pages


def test_deliveries_list_and_detail_say_why_in_words(web: Web) -> None:
    paid_invoice(web)
    skipped = add(web, state="skipped", reason="condition_false")
    failed = add(web, state="failed", reason="retries_exhausted", attempts=3)
    one_off = add(web, rule=REMINDER_RULE, step="", subject="", state="pending")
    web.login()
    html = web.get("/deliveries").text
    seen = visible(html)
    assert "Not needed: the invoice is now paid" in seen
    assert "Failed: every retry failed" in seen
    assert "One-off reminder" in seen
    for code in ("condition_false", "retries_exhausted", "@reminder"):
        assert code not in seen, code
    assert "skipped: condition_false" in codes(html)
    assert "failed: retries_exhausted" in codes(html)
    detail = web.get(f"/deliveries/{skipped}").text
    assert "Not needed: the invoice is now paid" in visible(detail)
    assert "condition_false" not in visible(detail)
    assert "retries_exhausted" not in visible(web.get(f"/deliveries/{failed}").text)
    assert "@reminder" not in visible(web.get(f"/deliveries/{one_off}").text)


def test_the_state_filter_offers_words(web: Web) -> None:
    web.login()
    html = web.get("/deliveries").text
    select = re.search(r'<select id="f-state".*?</select>', html, re.S)
    assert select
    options = dict(re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select.group(0)))
    assert options["set"] == "Data updated (no message)"
    assert options["overdue"].startswith("Late")
    assert options["skipped"].startswith("Not sent")
    rules = re.search(r'<select id="f-rule".*?</select>', html, re.S)
    assert rules and f'<option value="{REMINDER_RULE}">One-off reminders</option>' in rules.group(0)


def test_subject_and_recipient_pages_use_words(web: Web) -> None:
    paid_invoice(web)
    add(web, state="skipped", reason="condition_false")
    web.login()
    for url in ("/subjects/invoice/INV-1", "/recipients/alice"):
        html = web.get(url).text
        assert "condition_false" not in visible(html), url
        assert "Not needed: the invoice" in visible(html), url
        assert "skipped: condition_false" in codes(html), url


def test_dashboard_channels_say_working_not_closed(web: Web) -> None:
    web.login()
    web.rt.dispatcher.breakers["email"] = Breaker()
    html = web.get("/").text
    channels = re.search(r'id="h-channels".*?</ul>', html, re.S)
    assert channels
    assert "Working" in visible(channels.group(0))
    assert "closed" not in visible(channels.group(0))
    assert "closed" in codes(channels.group(0))


def test_upcoming_rules_and_outbox_name_one_off_reminders_in_words(web: Web) -> None:
    now = web.engine.clock.now()
    add(
        web,
        rule=REMINDER_RULE,
        step="",
        subject="",
        state="pending",
        due_at=now + timedelta(hours=1),
    )
    add(
        web,
        rule=REMINDER_RULE,
        step="",
        subject="",
        channel="outbox",
        to_address="alice@example.com",
        title="Call the bank",
        sent_at=now,
    )
    web.login()
    for url in ("/upcoming", "/outbox", "/"):
        r = web.get(url)
        assert r.status_code == 200, url
        seen = visible(r.text)
        assert "@reminder" not in seen, url
    assert "One-off reminder" in visible(web.get("/upcoming").text)


@pytest.mark.parametrize("url", ["/", "/deliveries", "/upcoming", "/rules"])
def test_pages_show_no_raw_reason_codes(web: Web, url: str) -> None:
    paid_invoice(web)
    for r in ("missed", "past", "permanent_error", "retries_exhausted", "condition_false"):
        add(web, state="skipped" if r in ("missed", "past", "condition_false") else "failed",
            reason=r, due_at=web.engine.clock.now() - timedelta(hours=1))  # fmt: skip
    web.login()
    seen = visible(web.get(url).text)
    for code in ("condition_false", "retries_exhausted", "permanent_error", "@reminder"):
        assert code not in seen, (url, code)
