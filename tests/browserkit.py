"""Helpers for browser tests: a real `duly serve` (demo data, two users) and Debian's
Chromium driven by Playwright.

Chromium comes from Debian (`apt-get install -y chromium`, at /usr/bin/chromium; `.ci/run`
installs it); Playwright's own browser download is not used. Without it the browser tests
skip with the reason, except under CI=true, where they fail.

Screenshots: ``shot(page, "dashboard")`` writes ``<name>.png`` into $DULY_SCREENSHOTS when
set (``DULY_SCREENSHOTS=docs/screenshots ./scripts/test tests/browser`` refreshes the set in
the README), else into the test's own temporary folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from live import DULY, Live

CHROMIUM = os.environ.get("DULY_TEST_CHROMIUM", "/usr/bin/chromium")
# as root in a container: no sandbox; no background traffic to Google (the network is closed)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# "admin" is the one `duly serve --demo` makes, with a password printed once
ADMIN = ("ops", "ops password 1")
VIEWER = ("viewer", "viewer password 1")


def add_user(live: Live, name: str, password: str, role: str) -> None:
    subprocess.run(
        [
            *DULY,
            "users",
            "create",
            name,
            "--role",
            role,
            "--password-stdin",
            "--database",
            live.database,
        ],
        input=password + "\n",
        env=live.env,
        check=True,
        capture_output=True,
        text=True,
    )


def put_invoice(api: Any, key: str, *, days: int = 10) -> dict[str, Any]:
    """A sent invoice of 80 EUR to alice, due in ``days`` days, through the API (``api``:
    the browser tests' API client); its answer (with the plan)."""
    from datetime import UTC, datetime, timedelta
    from urllib.parse import quote

    due = datetime.now(UTC) + timedelta(days=days)
    attributes = {"status": "sent", "amount": 80, "currency": "EUR", "due_at": due.isoformat()}
    r = api.put(
        f"/v1/subjects/invoice/{quote(key, safe='')}",
        json={"attributes": attributes, "recipients": {"customer": "alice"}},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def sign_in(page: Any, url: str, who: tuple[str, str] = ADMIN) -> None:
    page.goto(url + "/login")
    page.get_by_label("Username").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/")


def shot(page: Any, name: str, tmp_path: Path, *, full_page: bool = True) -> Path:
    folder = Path(os.environ.get("DULY_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not full_page:
        page.screenshot(path=str(path))
        return path
    # Chromium's full-page capture leaves frames of other origins blank (the sandboxed
    # message frames): grow the viewport to the page's height and take a plain one instead
    viewport = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, 200), 8000)})
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    page.set_viewport_size(viewport)
    return path
