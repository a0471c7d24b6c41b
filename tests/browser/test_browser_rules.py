"""The rules page and a simulation in a real browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from browserkit import shot
from live import Live


def test_rules_page_then_simulate_the_example_timeline(page: Any, ui: Live, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(ui.url + "/rules")
    expect(page.get_by_role("heading", name="Rules", exact=True)).to_be_visible()
    expect(page.locator("#rule-invoice-reminders")).to_contain_text("due_at - 3d")
    expect(page.locator("pre.code")).to_contain_text("name: payment-receipt")
    shot(page, "rules", tmp_path)

    page.get_by_role("link", name="Simulate a timeline").click()
    page.wait_for_url(ui.url + "/rules/simulate")
    page.get_by_role("link", name="Load an example").click()
    timeline = page.get_by_label("Timeline (JSON lines)")
    expect(timeline).to_have_value(__import__("re").compile(r'"key": "INV-1"'))
    page.get_by_role("button", name="Run simulation").click()
    rows = page.locator("table.outcomes tbody tr")
    expect(rows).to_have_count(7)
    expect(rows.filter(has_text="payment-receipt")).to_contain_text("sent")
    expect(rows.filter(has_text="cancelled")).to_contain_text("condition_false")
    expect(page.locator(".summary")).to_contain_text("sent: 6")
    shot(page, "simulate", tmp_path)

    # a broken line: the error names it, the text stays to be fixed
    timeline.fill('{"at": "2026-03-01T09:00:00Z", "delete": "invoice/INV-1"}\n{"at": oops}\n')
    page.get_by_role("button", name="Run simulation").click()
    expect(page.get_by_role("alert")).to_contain_text("Timeline: line 2: not valid JSON")
    expect(page.get_by_label("Timeline (JSON lines)")).to_have_value(
        '{"at": "2026-03-01T09:00:00Z", "delete": "invoice/INV-1"}\n{"at": oops}\n'
    )
