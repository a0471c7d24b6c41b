"""A front-desk operator's day in a real browser, at desktop and phone width, in the light
and the dark palette: find an invoice by its customer's name typed without the accent, hold
it until cleared, read what happened in plain words, retry a failure that still matters from
the dashboard, and (as an admin: operators may not edit templates) bring back a template's
shipped wording.

Each run makes its own customer, invoices and failure (keys of its own), so the four runs
and the other browser tests do not depend on each other; one browser context serves a run.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from browserkit import ADMIN, add_user, shot, sign_in
from live import Live

OPERATOR = ("reception", "reception password 1")
TEMPLATE = "appointment-reminder"  # the one this walk edits and restores
ERROR = "421 4.4.2 mail.example.com: connection timed out"
SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def operator(ui: Live) -> tuple[str, str]:
    add_user(ui, *OPERATOR, "operator")
    return OPERATOR


class Desk:
    """The page of one run and how its user moves around: on a phone the navigation is
    behind the Menu button."""

    def __init__(self, page: Any, ui: Live, phone: bool, variant: str, tmp: Path) -> None:
        self.page, self.ui, self.phone, self.variant, self.tmp = page, ui, phone, variant, tmp

    def go(self, name: str) -> None:
        if self.phone:
            self.page.get_by_text("Menu", exact=True).click()
        nav = self.page.get_by_role("navigation", name="Main")
        nav.get_by_role("link", name=name, exact=True).click()
        self.page.wait_for_load_state()

    def search(self, text: str) -> None:
        box = self.page.get_by_role("searchbox", name="Search subjects, recipients and deliveries")
        box.fill(text)
        box.press("Enter")
        self.page.wait_for_url(re.compile(r".*/search\?q="))

    def fits(self) -> None:
        width = self.page.evaluate("document.documentElement.scrollWidth")
        limit = self.page.viewport_size["width"] + 1
        assert width <= limit, f"{self.page.url} is {width}px wide on a {limit - 1}px screen"

    def shot(self, name: str, variants: tuple[str, ...] = ("",)) -> None:
        """A viewport screenshot named for the page and the variant ("-phone", "-dark",
        "-phone-dark"; none for desktop and light), taken in the runs of ``variants`` only
        (the docs show those)."""
        if self.variant in variants:
            shot(self.page, f"{name}{self.variant}", self.tmp, full_page=False)


def _customer_and_invoices(api: httpx.Client, tag: str) -> tuple[str, str, str]:
    """A customer whose name has accents, an invoice of theirs to hold and another to
    chase. Returns the customer's name and the two keys."""
    name = f"Inés Peña {tag}"
    rid = f"walk-{tag}"
    r = api.put(
        f"/v1/recipients/{rid}",
        json={"name": name, "email": f"{rid}@example.com", "timezone": "Europe/Madrid"},
    )
    assert r.status_code in (200, 201), r.text
    keys = (f"W-{tag}", f"W-{tag}-2")
    for key in keys:
        _invoice(api, key, name, rid, "sent")
    return name, *keys


DUE = datetime.now(UTC) + timedelta(days=10)


def _invoice(api: httpx.Client, key: str, name: str, rid: str, status: str) -> None:
    r = api.put(
        f"/v1/subjects/invoice/{quote(key, safe='')}",
        json={
            "attributes": {
                "number": key,
                "customer_name": name,
                "status": status,
                "amount": 120,
                "currency": "EUR",
                "due_at": DUE.isoformat(),
            },
            "recipients": {"customer": rid},
        },
    )
    assert r.status_code == 200, r.text


def _failure(ui: Live, subject: str, recipient: str, title: str) -> int:
    """A failed reminder of a chased invoice, recorded as the dispatcher records one whose
    every retry failed (the demo's channel captures mail: nothing fails by itself)."""
    from duly.store.tables import deliveries, delivery_log

    now = datetime.now(UTC)
    at = now - timedelta(minutes=5)
    engine = sa.create_engine(ui.database)
    try:
        with engine.begin() as conn:
            did = conn.execute(
                sa.insert(deliveries).values(
                    rule="invoice-reminders",
                    step="due-soon",
                    occurrence=f'"{title}"',
                    subject=subject,
                    recipient=recipient,
                    channel="email",
                    state="failed",
                    reason="retries_exhausted",
                    category="reminder",
                    planned_at=at,
                    due_at=at,
                    attempts=4,
                    error_count=4,
                    last_error=ERROR,
                    title=title,
                    created_at=at,
                    updated_at=at,
                )
            ).inserted_primary_key[0]
            log = [  # four attempts spaced as the retries' backoff, then the outcome
                {"at": at - timedelta(minutes=m), "kind": "attempt", "attempt": n, "error": ERROR}
                for n, m in ((1, 31), (2, 30), (3, 25), (4, 0))
            ]
            log.append(
                {"at": at, "kind": "outcome", "outcome": "failed", "attempt": 4, "title": title}
            )
            blank = {"outcome": None, "error": None, "title": None}
            conn.execute(
                sa.insert(delivery_log), [{"delivery_id": did, **blank, **row} for row in log]
            )
    finally:
        engine.dispose()
    return int(did)


@pytest.fixture(params=["desktop", "phone"])
def size(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["light", "dark"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def desk(chromium: Any, ui: Live, size: str, scheme: str, tmp_path: Path) -> Iterator[Desk]:
    ctx = chromium.new_context(
        viewport=SIZES[size], color_scheme=scheme, timezone_id="Europe/Paris", locale="en-GB"
    )
    ctx.set_default_timeout(10_000)
    variant = ("-phone" if size == "phone" else "") + ("-dark" if scheme == "dark" else "")
    try:
        yield Desk(ctx.new_page(), ui, size == "phone", variant, tmp_path)
    finally:
        ctx.close()


def test_a_front_desk_day(
    desk: Desk, ui: Live, api: httpx.Client, operator: tuple[str, str]
) -> None:
    from playwright.sync_api import expect

    page = desk.page
    tag = uuid.uuid4().hex[:8]
    name, held_key, chased_key = _customer_and_invoices(api, tag)
    rid = f"walk-{tag}"
    failed_title = f"Payment due soon, {chased_key}"
    failed_id = _failure(ui, f"invoice/{chased_key}", rid, failed_title)

    # 1. find the invoice by the customer's name, typed without its accents
    sign_in(page, ui.url, operator)
    desk.search(f"pena {tag}")
    found = page.get_by_role("region", name=re.compile(r"^Subjects"))
    expect(found.get_by_role("link", name=held_key, exact=True)).to_be_visible()
    people = page.get_by_role("region", name=re.compile(r"^Recipients"))
    expect(people.get_by_role("link", name=name, exact=True)).to_be_visible()
    desk.fits()
    desk.shot("search", ("", "-phone-dark"))
    found.get_by_role("link", name=held_key, exact=True).click()
    page.wait_for_url(re.compile(rf".*/subjects/invoice/{held_key}$"))

    # 2. hold it until cleared; the page says so in words, never as a date, and its
    # history names the operator
    page.get_by_label("Indefinitely (until cleared)").check()
    page.get_by_role("button", name="Hold", exact=True).click()
    expect(page.locator(".flash-ok")).to_contain_text("On hold until you clear it.")
    hold = page.locator("#hold-state")
    expect(hold).to_have_text("On hold indefinitely (until cleared)")
    main = page.locator("main")
    expect(main).not_to_contain_text("9000")
    row = page.locator("#audit-history tbody tr").first
    expect(row.locator(".audit-actor")).to_have_text(operator[0])
    expect(row).to_contain_text("On hold until you clear it")
    desk.fits()
    desk.shot("subject-held", ("", "-phone", "-dark", "-phone-dark"))
    # Upcoming lists its reminders under "Held until cleared", not at a date
    desk.go("Upcoming")
    held = page.locator("#held-until-cleared")
    expect(held).to_contain_text("Held until cleared")
    expect(page.locator("main")).not_to_contain_text("9000")
    expect(page.get_by_role("link", name=re.compile(re.escape(held_key))).first).to_be_visible()

    # 3. plain words: the customer pays; the reminders no longer needed say so, with the
    # code small beside the words for those who search logs
    _invoice(api, held_key, name, rid, "paid")
    page.goto(f"{ui.url}/subjects/invoice/{held_key}")
    history = page.get_by_role("region", name="History", exact=True)
    expect(history).to_contain_text("Not needed: the invoice is now paid")
    expect(history.locator("code.code", has_text="condition_false").first).to_be_visible()
    expect(history).not_to_contain_text(re.compile(r"^\s*condition_false\s*$"))

    # 4. retry, from the dashboard's needs-attention list, a failure that still matters
    desk.go("Dashboard")
    attention = page.locator("#attention-list")
    item = attention.locator("li", has_text=failed_title)
    expect(item).to_contain_text("Why it is here:")
    expect(item).to_contain_text("still needed: the invoice still meets its rule")
    desk.fits()
    item.scroll_into_view_if_needed()
    desk.shot("dashboard-attention", ("", "-phone-dark"))
    item.get_by_role("link", name=failed_title).click()
    page.wait_for_url(re.compile(rf".*/deliveries/{failed_id}$"))
    expect(page.locator("#action-warning")).to_have_count(0)  # it would be sent: no warning
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".flash-ok, .flash-info").first).to_have_text(
        re.compile(rf"Delivery {failed_id} is pending again and due now")
    )
    row = page.locator("#audit-history tbody tr").first
    expect(row.locator(".audit-actor")).to_have_text(operator[0])
    # the honest result: the dispatcher sends it within seconds (the page, fetched again)
    page.wait_for_function(
        """async (url) => {
            const html = await (await fetch(url)).text();
            const h1 = new DOMParser().parseFromString(html, "text/html").querySelector("h1");
            return h1 !== null && /\\bSent\\b/.test(h1.textContent);
        }""",
        arg=page.url,
        polling=200,
    )
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Sent")
    # every attempt counted and listed: the four before the retry and the one that sent it
    expect(page.locator("#attempts-total")).to_contain_text("5")
    expect(page.locator("ol.attempts > li")).to_have_count(5)
    desk.shot("delivery-retried")

    # 5. templates are the admins': the operator may preview, not save or restore
    resp = page.goto(f"{ui.url}/templates/{TEMPLATE}")
    assert resp is not None and resp.status == 200
    expect(page.get_by_text("only an admin can save them")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(r"^Save"))).to_have_count(0)
    page.get_by_role("link", name=re.compile(r"^History")).click()
    expect(page.locator("tr.shipped")).to_contain_text("shipped with the rule file")
    expect(page.get_by_role("button", name=re.compile("^Restore"))).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login"))

    # ... an admin changes the wording, then restores the one shipped with the rule file
    sign_in(page, ui.url, ADMIN)
    desk.go("Templates")
    page.get_by_role("link", name=TEMPLATE, exact=True).first.click()
    text = page.locator("#part-email-txt")
    shipped = text.input_value()
    text.fill(shipped + f"\nSee you soon ({tag}).")
    page.get_by_role("button", name=re.compile(r"^Save as version \d+$")).click()
    expect(page.locator(".flash-ok")).to_contain_text("Saved version")
    page.get_by_role("link", name=re.compile(r"^History")).click()
    shipped_row = page.locator("tr.shipped")
    expect(shipped_row).to_contain_text("shipped with the rule file")
    page.once("dialog", lambda d: d.accept())
    shipped_row.get_by_role("button", name="Restore the shipped wording").click()
    expect(page.locator(".flash-ok")).to_contain_text(
        re.compile(rf"Restored the shipped wording of {TEMPLATE} as version \d+\.")
    )
    desk.fits()
    desk.shot("template-restored")
    page.goto(f"{ui.url}/templates/{TEMPLATE}")
    assert page.locator("#part-email-txt").input_value() == shipped

    # the admin finds the operator's hold in the audit trail, and the operator on Users
    desk.go("Audit")
    page.get_by_label("Who").fill(operator[0])
    page.get_by_label("Object", exact=True).fill(f"invoice/{held_key}")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(operator[0])
    desk.fits()
    desk.shot("audit")
    desk.go("Users")
    expect(page.locator("table.users-table tbody tr", has_text=operator[0])).to_contain_text(
        "operator"
    )
    desk.fits()
    desk.shot("users")
