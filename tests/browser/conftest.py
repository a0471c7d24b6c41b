"""Fixtures of the browser tests (helpers in tests/browserkit.py).

One `duly serve` with the bundled rules and demo data serves every test of the session
(starting one takes seconds); tests make their own subjects and reminders, with keys of
their own, through the API (``api``) so they do not depend on each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browserkit import ADMIN, CHROMIUM, CHROMIUM_ARGS, VIEWER, add_user, sign_in
from live import Live, live_server


# Per module, not per session: Playwright's sync API keeps an event loop running in this
# thread while it is started, and a later test calling asyncio.run() would fail.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        why = f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + "; in CI they must run, never skip", pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A running `duly serve` with the demo data, users admin and viewer."""
    tmp = tmp_path_factory.mktemp("ui")
    with live_server(tmp, demo=True) as live:
        add_user(live, *ADMIN, "admin")
        add_user(live, *VIEWER, "viewer")
        yield live


@pytest.fixture
def api(ui: Live) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=ui.url, headers={"Authorization": f"Bearer {ui.key}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    ctx = chromium.new_context(
        viewport={"width": 1280, "height": 860}, timezone_id="Europe/Paris", locale="en-GB"
    )
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any, ui: Live) -> Any:
    """A page signed in as admin (on the dashboard)."""
    p = context.new_page()
    sign_in(p, ui.url, ADMIN)
    return p
