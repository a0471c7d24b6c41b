"""Subjects in a real browser: find one, hold it until a date, see the plan follow, clear
the hold."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx

from browserkit import put_invoice, shot
from live import Live


def test_hold_a_subject_until_a_date_and_clear_it(
    page: Any, ui: Live, api: httpx.Client, tmp_path: Path
) -> None:
    # a key with a slash, a space and a literal % (quoted in every link)
    key = f"HOLD-{uuid.uuid4().hex[:6]}/a 50%"
    answer = put_invoice(api, key)
    assert len(answer["plan"]) == 2  # due-soon (in 7 days) and overdue (in 11)

    page.goto(ui.url + "/subjects")
    page.get_by_label("Kind").select_option("invoice")
    page.get_by_label("Key contains").fill(key[:11])
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    shot(page, "subjects", tmp_path)
    page.get_by_role("link", name=key).click()
    page.wait_for_url(re.compile(r".*/subjects/invoice/HOLD-.*"))
    assert page.locator("h1").inner_text().endswith(key)
    assert page.locator("#hold-state").inner_text() == "not held"
    plan = page.locator("section[aria-labelledby=plan-h]")
    assert plan.locator(".badge.state-pending").count() == 2

    hint = page.locator("#h-until").inner_text()
    zone = ZoneInfo(re.search(r"In your time zone, ([\w/+-]+)\.", hint).group(1))  # type: ignore[union-attr]
    until = (
        (datetime.now(UTC) + timedelta(days=8)).astimezone(zone).replace(second=0, microsecond=0)
    )
    page.get_by_label("Hold until").fill(until.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Hold", exact=True).click()
    page.wait_for_load_state()
    assert page.locator("#hold-state").inner_text().startswith("On hold until")
    assert "On hold until" in page.locator(".flash-ok").inner_text()
    # the due-soon reminder (in 7 days) now waits for the end of the hold
    assert "planned" in plan.inner_text()
    body = api.get(f"/v1/subjects/invoice/{quote(key, safe='')}").json()
    assert datetime.fromisoformat(body["hold_until"]) == until
    soon = next(d for d in body["plan"] if d["step"] == "due-soon")
    assert datetime.fromisoformat(soon["due_at"]) == until
    shot(page, "subject", tmp_path)

    page.once("dialog", lambda d: d.accept())  # data-confirm
    page.get_by_role("button", name="Clear hold").click()
    page.wait_for_load_state()
    assert page.locator("#hold-state").inner_text() == "not held"
    body = api.get(f"/v1/subjects/invoice/{quote(key, safe='')}").json()
    assert body["hold_until"] is None
    soon = next(d for d in body["plan"] if d["step"] == "due-soon")
    assert soon["due_at"] == soon["planned_at"]
