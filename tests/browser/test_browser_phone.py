"""Phone width and dark mode, in a real browser: every page and every kind of detail page
fits a 390px screen in both palettes, lists read as cards with each value labelled, the
navigation folds into a menu that works without JavaScript, and the dark palette is what a
dark system setting gets."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_browser_a11y import OVERFLOW, PAGES

from browserkit import ADMIN, shot, sign_in
from live import Live

# detail pages reached from a list: (list page, link pattern)
DETAILS = [
    ("/deliveries", r"^/deliveries/\d+$"),
    ("/reminders", r"^/reminders/\d+$"),
    ("/subjects", r"^/subjects/appointment/"),
    ("/rules", r"^/rules/[^/?]+$"),
    ("/outbox", r"^/outbox/\d+$"),
    ("/templates", r"^/templates/[^/?]+$"),
    ("/recipients", r"^/recipients/[^/?]+$"),
]

CARD_CELLS = """() => [...document.querySelectorAll('table.cards tbody td')]
  .filter(td => getComputedStyle(td).display !== 'none')
  .map(td => ({label: td.getAttribute('data-label'), width: td.getBoundingClientRect().width,
               text: td.textContent.trim()}))"""


def _phone(chromium: Any, ui: Live, scheme: str, *, js: bool = True) -> Any:
    ctx = chromium.new_context(
        viewport={"width": 390, "height": 844},
        timezone_id="Europe/Paris",
        color_scheme=scheme,
        java_script_enabled=js,
    )
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    sign_in(page, ui.url, ADMIN)
    return page


def _detail_paths(page: Any, ui: Live) -> list[str]:
    found = []
    for listing, pattern in DETAILS:
        page.goto(ui.url + listing)
        hrefs = page.eval_on_selector_all(
            "main a[href]", "as => as.map(a => a.getAttribute('href'))"
        )
        match = next((h for h in hrefs if re.match(pattern, h.split("?")[0])), None)
        assert match, f"no link like {pattern} on {listing}"
        found.append(match)
    return found


@pytest.fixture
def a_reminder(api: Any) -> None:
    """A one-off reminder to open (the demo data has none)."""
    send_at = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    body = {
        "title": "Call back about the boiler service",
        "message": "Ring the customer to confirm a time.",
        "recipients": ["alice"],
        "send_at": send_at,
        "channels": ["email"],
    }
    assert api.post("/v1/reminders", json=body).status_code == 201


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_and_detail_page_fits_a_phone(
    chromium: Any, ui: Live, scheme: str, a_reminder: None
) -> None:
    page = _phone(chromium, ui, scheme)
    try:
        problems = {}
        for path in PAGES + _detail_paths(page, ui):
            resp = page.goto(ui.url + path)
            assert resp is not None and resp.status == 200, (path, resp and resp.status)
            width = page.evaluate("document.documentElement.scrollWidth")
            out = page.evaluate(OVERFLOW)
            narrow = [c for c in page.evaluate(CARD_CELLS) if c["width"] < 200]
            found = {
                "scroll width": width if width > 391 else None,
                "sticking out": out or None,
                "squeezed cells": narrow[:3] or None,
            }
            found = {k: v for k, v in found.items() if v}
            if found:
                problems[path] = found
        assert not problems, problems
    finally:
        page.context.close()


def test_lists_read_as_cards_with_every_value_labelled(
    chromium: Any, ui: Live, tmp_path: Path
) -> None:
    page = _phone(chromium, ui, "light")
    try:
        page.goto(ui.url + "/deliveries")
        cells = page.evaluate(CARD_CELLS)
        assert cells, "the deliveries list is not laid out as cards"
        labels = {c["label"] for c in cells}
        # the title and the time, lost or squeezed in the narrow table, are labelled lines
        assert {"Title", "Due / sent", "State", "Subject"} <= labels, labels
        first_row = page.locator("table.cards tbody tr").first
        box = first_row.bounding_box()
        assert box is not None and box["width"] >= 340  # a card spans the screen
        shot(page, "deliveries-phone", tmp_path)
    finally:
        page.context.close()


@pytest.mark.parametrize("js", [True, False], ids=["with-js", "without-js"])
def test_the_navigation_folds_into_a_menu(chromium: Any, ui: Live, js: bool) -> None:
    page = _phone(chromium, ui, "light", js=js)
    try:
        page.goto(ui.url + "/")
        nav = page.get_by_role("navigation", name="Main")
        assert not nav.is_visible()
        page.get_by_text("Menu", exact=True).click()
        assert nav.is_visible()
        nav.get_by_role("link", name="Deliveries", exact=True).click()
        page.wait_for_url(ui.url + "/deliveries")
        assert not page.get_by_role("navigation", name="Main").is_visible()
    finally:
        page.context.close()


def test_the_desktop_shows_the_navigation_and_no_menu(page: Any, ui: Live) -> None:
    assert page.get_by_role("navigation", name="Main").is_visible()
    assert not page.get_by_text("Menu", exact=True).is_visible()
    assert (
        page.locator("table.cards").count() == 0
        or page.evaluate("getComputedStyle(document.querySelector('table.cards tbody tr')).display")
        == "table-row"
    )


def test_dark_mode_follows_the_system_setting(chromium: Any, ui: Live, tmp_path: Path) -> None:
    def background(scheme: str) -> tuple[int, ...]:
        ctx = chromium.new_context(
            viewport={"width": 1280, "height": 860}, color_scheme=scheme, timezone_id="Europe/Paris"
        )
        page = ctx.new_page()
        sign_in(page, ui.url, ADMIN)
        rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
        card = page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
        if scheme == "dark":
            shot(page, "dashboard-dark", tmp_path)
        ctx.close()
        return tuple(int(x) for x in re.findall(r"\d+", rgb)[:3]) + tuple(
            int(x) for x in re.findall(r"\d+", card)[:3]
        )

    light, dark = background("light"), background("dark")
    assert min(light) > 200, light  # a light page and light cards
    assert max(dark) < 60, dark  # a dark page and dark cards
