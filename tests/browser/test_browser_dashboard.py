"""The dashboard and the upcoming timeline in a real browser (demo data with its history)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from browserkit import ADMIN, shot, sign_in
from live import Live


def test_dashboard_shows_counts_and_the_chart(page: Any, ui: Live, tmp_path: Path) -> None:
    page.goto(ui.url + "/")
    assert page.get_by_role("heading", level=1).inner_text() == "Dashboard"
    # the demo history: a week of outcomes, most of them sent
    week_sent = int(page.locator("#outcome-sent [data-count=week]").inner_text())
    week_failed = int(page.locator("#outcome-failed [data-count=week]").inner_text())
    assert week_sent >= 10 and week_failed >= 1
    chart = page.locator("figure.chart svg[role=img]")
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    assert chart.locator("g.day").count() == 7
    assert re.search(r"\d+ sent", chart.get_attribute("aria-label") or "")
    # the history's failures no longer matter (every demo invoice is paid, every appointment
    # over): needs-attention leaves them out and says so
    assert "550 5.1.1" not in page.locator("#h-attention").locator("..").inner_text()
    assert "no longer matter" in page.locator("#attention-left-out").inner_text()
    # the numbers table behind the chart opens without script
    page.get_by_text("The same numbers as a table").click()
    assert page.locator("table.chart-table tbody tr").count() == 7
    assert page.locator("#h-dispatcher").inner_text().startswith("running")
    shot(page, "dashboard", tmp_path)


def test_upcoming_filters_by_rule_with_the_form(page: Any, ui: Live, tmp_path: Path) -> None:
    page.goto(ui.url + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Upcoming").click()
    page.wait_for_url(ui.url + "/upcoming")
    assert page.get_by_role("heading", level=1).inner_text() == "Upcoming"
    everything = page.locator("table.upcoming tbody tr").count()
    assert everything >= 2
    page.get_by_label("Rule").select_option("appointment-reminders")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*/upcoming\?rule=appointment-reminders.*"))
    rows = page.locator("table.upcoming tbody tr")
    assert 1 <= rows.count() < everything
    for text in rows.all_inner_texts():
        assert "appointment-reminders" in text
    # the recipient's own time beside the viewer's (dave is in Asia/Tokyo, the browser in Paris)
    assert "there" in page.locator("main").inner_text()
    shot(page, "upcoming", tmp_path)


def test_dashboard_fits_a_phone(context: Any, ui: Live, tmp_path: Path) -> None:
    page = context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, ui.url, ADMIN)
    page.goto(ui.url + "/")
    assert page.locator("figure.chart svg").is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391, f"the dashboard is {width}px wide on a 390px phone"
    shot(page, "dashboard-phone", tmp_path)
    page.goto(ui.url + "/upcoming")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391, f"upcoming is {width}px wide on a 390px phone"
