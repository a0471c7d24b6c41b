"""The dashboard refreshes itself in a real browser: its live part is fetched again every
30 seconds and swapped in without reloading the page (the browser's clock is run forward;
the server's data change between)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from live import Live


def test_the_dashboard_refreshes_its_numbers_without_a_reload(
    page: Any, ui: Live, api: httpx.Client
) -> None:
    page.clock.install()
    page.goto(ui.url + "/")
    page.evaluate("window.__same_page = true")  # gone if the page reloads
    live = page.locator("#dashboard-live")
    assert live.get_attribute("data-every") == "30"
    before = int(page.locator("#q-pending").inner_text())
    due = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    r = api.put(
        "/v1/subjects/invoice/REFRESH-1",
        json={
            "attributes": {"status": "sent", "amount": 5, "currency": "EUR", "due_at": due},
            "recipients": {"customer": "alice"},
        },
    )
    assert r.status_code == 200, r.text
    page.clock.run_for(29_000)
    page.wait_for_timeout(300)
    assert int(page.locator("#q-pending").inner_text()) == before  # not yet
    page.clock.run_for(2_000)
    page.wait_for_function(
        "n => Number(document.querySelector('#q-pending').textContent) > n", arg=before
    )
    assert page.evaluate("window.__same_page") is True
    assert live.get_attribute("data-refreshed")
    # the refreshed part still works: its links open the lists
    href = page.locator("#outcome-sent [data-count=today]").get_attribute("href") or ""
    assert href.startswith("/deliveries?state=sent&finished_from=")
