"""The outbox in a real browser: read the payment receipt the demo sends at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from browserkit import shot
from live import Live


def test_read_the_payment_receipt(page: Any, ui: Live, api: httpx.Client, tmp_path: Path) -> None:
    end = time.monotonic() + 20
    while True:
        items = api.get("/v1/deliveries?state=sent&rule=payment-receipt").json()["items"]
        if items or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert items, "the demo's payment receipt was not sent"
    receipt = items[0]
    page.goto(ui.url + "/")
    page.get_by_role("link", name="Outbox").click()
    page.wait_for_url(ui.url + "/outbox")
    assert page.get_by_role("heading", name="Reading pane").is_visible()
    mail = page.locator(f'.mails a[href^="/outbox/{receipt["id"]}"]')
    assert "Payment received for invoice" in mail.inner_text()
    mail.click()
    page.wait_for_url(f"{ui.url}/outbox/{receipt['id']}")
    pane = page.locator(".mail-pane")
    assert "Payment received for invoice" in pane.locator("h2").inner_text()
    headers = pane.locator(".mail-headers").inner_text()
    assert "Message-ID" in headers and receipt["message_id"] in headers
    assert "@example.com" in headers
    assert "we received your payment" in pane.locator("pre.message-text").inner_text()
    assert page.locator('.mails li.current a[aria-current="true"]').count() == 1
    shot(page, "outbox", tmp_path)

    # search by subject text keeps the message; nonsense finds nothing
    page.get_by_label("Search by address, recipient id or subject").fill("payment received")
    page.get_by_role("button", name="Search").click()
    assert page.locator(f'.mails a[href^="/outbox/{receipt["id"]}"]').count() == 1
    page.get_by_label("Search by address, recipient id or subject").fill("zz-no-such-mail")
    page.get_by_role("button", name="Search").click()
    assert "No message matches" in page.locator(".mail-list").inner_text()
