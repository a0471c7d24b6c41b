"""The header search in a real browser: type a name without its accent, press Enter, land
on the recipient's page, which lists their invoices and appointments."""

from __future__ import annotations

import re
from typing import Any

from live import Live


def test_diaz_in_the_header_box_lands_on_carol_diaz(page: Any, ui: Live) -> None:
    page.goto(ui.url + "/subjects")
    box = page.get_by_role("searchbox", name="Search subjects, recipients and deliveries")
    box.fill("diaz")
    box.press("Enter")
    page.wait_for_url(re.compile(r".*/recipients/carol$"))
    assert page.locator("h1").inner_text() == "Carol Díaz"
    subjects = page.locator("#subjects")
    # the demo's invoice INV-1004 names carol as its customer
    link = subjects.get_by_role("link", name="INV-1004")
    assert link.is_visible()
    link.click()
    page.wait_for_url(re.compile(r".*/subjects/invoice/INV-1004$"))
