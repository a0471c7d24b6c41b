"""Recipients in a real browser: search, a recipient's page with local time, clearing a
suppression, and the keyboard path through the list."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from browserkit import shot
from duly.store.tables import suppressions
from live import Live


def _suppress(database: str, address: str, reason: str) -> None:
    db = sa.create_engine(database)
    try:
        with db.begin() as conn:
            conn.execute(
                sa.insert(suppressions).values(
                    address=address,
                    channel="email",
                    reason=reason,
                    delivery_id=None,
                    created_at=datetime.now(UTC),
                )
            )
    finally:
        db.dispose()


def test_search_open_alice_and_clear_a_suppression(page: Any, ui: Live, tmp_path: Path) -> None:
    page.goto(ui.url + "/recipients")
    page.get_by_label("Search by id, name, email or phone").fill("ALICE")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r".*/recipients\?q=ALICE$"))
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert "Alice Moreau" in rows.first.inner_text()
    shot(page, "recipients", tmp_path)
    page.get_by_role("link", name="alice", exact=True).click()
    page.wait_for_url(ui.url + "/recipients/alice")
    assert page.get_by_role("heading", level=1).inner_text() == "Alice Moreau"
    local = page.locator("#local-time").inner_text()
    assert re.search(r"local time there now: \w{3} \d\d \w{3} \d{4}, \d\d:\d\d (GMT|BST)", local)
    assert "Europe/London" in page.locator("dl.props").inner_text()

    _suppress(ui.database, "alice@example.com", "550 5.1.1 browser-test mailbox unknown")
    page.reload()
    section = page.locator("#suppressions")
    assert "browser-test mailbox unknown" in section.inner_text()
    shot(page, "recipient", tmp_path)
    page.once("dialog", lambda d: d.accept())  # duly.js asks before a data-confirm form
    section.get_by_role("button", name="Clear").click()
    page.wait_for_url(ui.url + "/recipients/alice#suppressions")
    assert "cleared: deliveries to it go out again" in page.locator(".flashes").inner_text()
    section = page.locator("#suppressions")
    assert section.get_by_role("button", name="Clear").count() == 0
    assert "cleared" in section.inner_text()
    page.goto(ui.url + "/recipients?q=alice")
    assert "suppressed" not in page.locator("tbody").inner_text()


def test_keyboard_reaches_search_and_first_result_and_controls_are_labelled(
    page: Any, ui: Live
) -> None:
    page.goto(ui.url + "/recipients")
    first_link = page.locator("tbody tr").first.get_by_role("link")
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        what = page.evaluate(
            "() => { const e = document.activeElement;"
            " return (e.id || '') + '|' + (e.getAttribute('href') || '') }"
        )
        reached.append(what)
        if what.startswith("|/recipients/"):
            break
    assert "f-q|" in reached, reached  # the search field
    assert reached[-1] == "|" + first_link.get_attribute("href"), reached
    assert reached.index("f-q|") < len(reached) - 1
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/recipients/[^?]+$"))
    # every form control on the recipient's page has an accessible name
    for label in ("Reminders", "News and offers (promotional)", "Channel email"):
        assert page.get_by_label(label, exact=True).count() == 1, label
    boxes = page.locator("form input[type=checkbox]")
    for i in range(boxes.count()):
        box_id = boxes.nth(i).get_attribute("id")
        name = page.locator(f"label[for='{box_id}']").inner_text().strip()
        assert name and page.get_by_label(name, exact=True).count() == 1, box_id
    unnamed = page.evaluate(
        "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea,"
        " button')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !(e.tagName === 'BUTTON' && e.textContent.trim())).map(e => e.outerHTML)"
    )
    assert unnamed == []
