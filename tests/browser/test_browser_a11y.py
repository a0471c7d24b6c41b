"""Every main page, in a real browser: usable at phone width (nothing wider than the
screen but inside a scrolling table), every form control named, one h1, and the keyboard
reaches the skip link first."""

from __future__ import annotations

from typing import Any

import pytest

from live import Live

PAGES = [
    "/",
    "/upcoming",
    "/subjects",
    "/subjects/invoice/INV-1001",
    "/reminders",
    "/reminders/new",
    "/deliveries",
    "/templates",
    "/templates/invoice-due-soon",
    "/rules",
    "/rules/simulate?example=1",
    "/recipients",
    "/recipients/alice",
    "/outbox",
    "/account",
]

# controls without an accessible name (label, aria-label, aria-labelledby, title)
UNNAMED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => e.type !== 'hidden')
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !e.getAttribute('aria-labelledby') && !e.title
               && !(e.tagName === 'BUTTON' && e.textContent.trim()))
  .map(e => e.outerHTML.slice(0, 120))"""

# elements sticking out to the right of the screen, outside a scrolling container
OVERFLOW = """() => {
  const w = document.documentElement.clientWidth;
  const scrolls = e => { for (let p = e.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX; if (s === 'auto' || s === 'scroll') return true; }
    return false; };
  return [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > w + 1 && !scrolls(e))
    .map(e => e.tagName + '.' + e.className).slice(0, 5);
}"""


@pytest.fixture
def phone(chromium: Any, ui: Live) -> Any:
    from browserkit import ADMIN, sign_in

    ctx = chromium.new_context(viewport={"width": 390, "height": 844}, timezone_id="Europe/Paris")
    page = ctx.new_page()
    sign_in(page, ui.url, ADMIN)
    yield page
    ctx.close()


def test_every_page_fits_a_phone_and_names_its_controls(phone: Any, ui: Live) -> None:
    problems = {}
    for path in PAGES:
        resp = phone.goto(ui.url + path)
        assert resp is not None and resp.status == 200, (path, resp and resp.status)
        width = phone.evaluate("document.documentElement.scrollWidth")
        found = {
            "scroll width": width if width > 391 else None,
            "sticking out": phone.evaluate(OVERFLOW) or None,
            "unnamed controls": phone.evaluate(UNNAMED) or None,
            "h1 count": n if (n := phone.locator("h1").count()) != 1 else None,
        }
        found = {k: v for k, v in found.items() if v}
        if found:
            problems[path] = found
    assert not problems, problems
    # the checks see what they look for: an unnamed input and a too-wide block
    phone.evaluate(
        """() => { const main = document.querySelector('main');
        main.insertAdjacentHTML('beforeend', '<input id=bad><div id=wide>x</div>');
        document.getElementById('wide').style.width = '900px'; }"""
    )
    assert any("bad" in e for e in phone.evaluate(UNNAMED))
    assert phone.evaluate(OVERFLOW)


def test_the_keyboard_reaches_the_skip_link_then_the_navigation(page: Any, ui: Live) -> None:
    page.goto(ui.url + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    page.goto(ui.url + "/")
    for _ in range(3):  # skip link, the brand, then the first navigation link
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Dashboard"
