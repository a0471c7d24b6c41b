"""Roles and the audit trail in a real browser: a front-desk operator holds an invoice until
cleared, and the invoice's page shows who did it in its Action history; the admin finds it
on the Audit page."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from browserkit import ADMIN, add_user, put_invoice, shot, sign_in
from live import Live

OPERATOR = ("frontdesk", "front desk password 1")


def test_an_operator_holds_an_invoice_and_the_history_names_them(
    context: Any, ui: Live, api: httpx.Client, tmp_path: Path
) -> None:
    add_user(ui, *OPERATOR, "operator")
    key = f"INV-{uuid.uuid4().hex[:6]}"
    put_invoice(api, key)

    page = context.new_page()
    sign_in(page, ui.url, OPERATOR)
    # an operator has no Users or Audit page in the navigation, and no template saving
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Users").count() == 0
    assert nav.get_by_role("link", name="Audit").count() == 0
    page.goto(f"{ui.url}/subjects/invoice/{quote(key, safe='')}")
    page.get_by_label("Indefinitely (until cleared)").check()
    page.get_by_role("button", name="Hold", exact=True).click()
    page.wait_for_load_state()
    assert "On hold until you clear it." in page.locator(".flash-ok").inner_text()
    history = page.locator("#audit-history")
    row = history.locator("tbody tr").first
    assert row.locator(".audit-actor").inner_text() == "frontdesk"
    assert "On hold until you clear it" in row.inner_text()
    assert re.search(r"hold_until: none → indefinite", row.inner_text())
    shot(page, "subject-history", tmp_path)
    # the audit page is the admins'
    assert page.goto(ui.url + "/audit").status == 403
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/login"))
    page.close()

    admin = context.new_page()
    sign_in(admin, ui.url, ADMIN)
    admin.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    admin.get_by_label("Who").fill("frontdesk")
    admin.get_by_label("Object", exact=True).fill(f"invoice/{key}")
    admin.get_by_role("button", name="Filter").click()
    admin.wait_for_load_state()
    rows = admin.locator("table.audit-table tbody tr")
    assert rows.count() == 1 and "frontdesk" in rows.first.inner_text()
    shot(admin, "audit", tmp_path)
    admin.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    row = admin.locator("table.users-table tbody tr", has_text="frontdesk")
    assert "operator" in row.inner_text()
    shot(admin, "users", tmp_path)
    admin.close()


def test_the_audit_and_users_pages_fit_a_phone(chromium: Any, ui: Live) -> None:
    from test_browser_a11y import OVERFLOW, UNNAMED

    ctx = chromium.new_context(viewport={"width": 390, "height": 844}, timezone_id="Europe/Paris")
    try:
        phone = ctx.new_page()
        sign_in(phone, ui.url, ADMIN)
        problems = {}
        for path in ("/audit", "/users", "/subjects/invoice/INV-1001", "/recipients/alice"):
            resp = phone.goto(ui.url + path)
            assert resp is not None and resp.status == 200, path
            found = {
                "scroll width": w
                if (w := phone.evaluate("document.documentElement.scrollWidth")) > 391
                else None,
                "sticking out": phone.evaluate(OVERFLOW) or None,
                "unnamed controls": phone.evaluate(UNNAMED) or None,
                "h1 count": n if (n := phone.locator("h1").count()) != 1 else None,
            }
            found = {k: v for k, v in found.items() if v}
            if found:
                problems[path] = found
        assert not problems, problems
    finally:
        ctx.close()
