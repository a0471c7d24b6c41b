"""Deliveries in a real browser: filter, open one (text and the sandboxed HTML frame), send
now, cancel with the confirm dialog, retry."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from browserkit import shot
from live import Live


def wait_for(api: httpx.Client, query: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Deliveries the API lists for ``query``, waiting until there is at least one."""
    end = time.monotonic() + timeout
    while True:
        items = api.get("/v1/deliveries" + query).json()["items"]
        if items or time.monotonic() > end:
            assert items, f"no delivery for {query}"
            return list(items)
        time.sleep(0.2)


def pending_invoice(api: httpx.Client, key: str) -> int:
    """An invoice of alice due in 10 days: its due-soon reminder is pending for a week."""
    due = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    r = api.put(
        f"/v1/subjects/invoice/{key}",
        json={
            "attributes": {"status": "sent", "amount": 42, "currency": "EUR", "due_at": due},
            "recipients": {"customer": "alice"},
        },
    )
    assert r.status_code == 200, r.text
    items = wait_for(api, f"?subject=invoice/{key}&state=pending")
    return int(next(i["id"] for i in items if i["step"] == "due-soon"))


def test_filter_open_and_send_now(page: Any, ui: Live, api: httpx.Client, tmp_path: Path) -> None:
    receipt = wait_for(api, "?state=sent&rule=payment-receipt")[0]
    page.goto(ui.url + "/deliveries")
    page.get_by_label("State").select_option("sent")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*/deliveries\?.*state=sent.*"))
    rows = page.locator("table.deliveries tbody tr")
    assert rows.count() >= 1
    for i in range(rows.count()):
        assert rows.nth(i).locator(".badge").inner_text() == "Sent"
    link = page.get_by_role("link", name=str(receipt["id"]), exact=True)
    assert link.is_visible()
    shot(page, "deliveries", tmp_path)

    # the payment receipt: its text part
    link.click()
    page.wait_for_url(f"{ui.url}/deliveries/{receipt['id']}")
    assert "Payment received for invoice" in page.locator(".message-head").inner_text()
    assert "we received your payment" in page.locator("pre.message-text").inner_text()

    # an invoice reminder of our own, sent now: text and HTML
    did = pending_invoice(api, "BRW-DLV-SEND")
    page.goto(f"{ui.url}/deliveries/{did}")
    assert page.locator("h1 .badge").inner_text() == "Waiting to send"
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Send now").click()
    page.wait_for_url(f"{ui.url}/deliveries/{did}")
    assert "is due now" in page.locator(".flash").inner_text()
    end = time.monotonic() + 15
    while page.locator("h1 .badge").inner_text() != "Sent" and time.monotonic() < end:
        time.sleep(0.3)
        page.reload()
    assert page.locator("h1 .badge").inner_text() == "Sent"
    assert "invoice BRW-DLV-SEND for" in page.locator("pre.message-text").inner_text()
    frame = page.frame_locator("iframe.message")
    assert "BRW-DLV-SEND" in frame.locator("body").inner_text()
    assert "Attempt 1" in page.locator(".attempts").inner_text()
    shot(page, "delivery", tmp_path)


def test_cancel_with_confirm_then_retry(
    page: Any, ui: Live, api: httpx.Client, tmp_path: Path
) -> None:
    did = pending_invoice(api, "BRW-DLV-CANCEL")
    page.goto(f"{ui.url}/deliveries?subject=invoice/BRW-DLV-CANCEL&state=pending")
    page.get_by_role("link", name=str(did), exact=True).click()
    page.wait_for_url(f"{ui.url}/deliveries/{did}")
    dialogs: list[str] = []

    def accept(d: Any) -> None:
        dialogs.append(d.message)
        d.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(f"{ui.url}/deliveries/{did}")
    assert dialogs and "Cancel this delivery?" in dialogs[0]
    assert page.locator("h1 .badge").inner_text() == "Cancelled"
    assert "By an operator" in page.locator("h1").inner_text()
    assert page.locator("h1 code.code").inner_text() == "cancelled: manual"
    assert page.get_by_role("button", name="Send now").count() == 0
    assert api.get(f"/v1/deliveries/{did}").json()["state"] == "cancelled"

    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(f"{ui.url}/deliveries/{did}")
    assert "is pending again" in page.locator(".flash").inner_text()
    # due now: the dispatcher may already have sent it by the time the page is drawn
    assert page.locator("h1 .badge").inner_text() in ("Waiting to send", "Being sent", "Sent")
    assert api.get(f"/v1/deliveries/{did}").json()["state"] in ("pending", "sending", "sent")


def test_a_dismissed_confirm_does_not_cancel(page: Any, ui: Live, api: httpx.Client) -> None:
    did = pending_invoice(api, "BRW-DLV-KEEP")
    page.goto(f"{ui.url}/deliveries/{did}")
    page.once("dialog", lambda d: d.dismiss())
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(300)
    assert page.url == f"{ui.url}/deliveries/{did}"
    assert api.get(f"/v1/deliveries/{did}").json()["state"] == "pending"
