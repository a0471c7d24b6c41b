"""The delivery page lists what the provider reported after accepting the message
(delivery receipts, issue 16), in the order things happened, escaped."""

from __future__ import annotations

from datetime import timedelta

from duly.engine.receipts import ReceiptEvent, record_receipts
from webui import HOSTILE, Web, add_delivery  # tests/webui.py


def test_the_delivery_page_shows_provider_reports_in_time_order(web: Web) -> None:
    did = add_delivery(web, receipt="PM-1", to_address="alice@example.test")
    quiet = add_delivery(web)
    now = web.engine.clock.now()
    record_receipts(
        web.engine,
        [
            ReceiptEvent("postmark", "PM-1", "bounced", hard=True, occurred_at=now, detail=HOSTILE),
            ReceiptEvent("postmark", "PM-1", "delivered", occurred_at=now - timedelta(minutes=1)),
        ],
    )
    web.login()
    r = web.get(f"/deliveries/{did}")
    assert r.status_code == 200, r.text[:2000]
    assert "Provider reports" in r.text and "(permanent)" in r.text
    assert r.text.index(">delivered<") < r.text.index(">bounced<")
    assert HOSTILE not in r.text  # escaped
    assert "Provider reports" not in web.get(f"/deliveries/{quiet}").text
