"""Signing in, in a real browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from browserkit import ADMIN, shot
from live import Live


def test_sign_in_shows_the_dashboard_and_sign_out_ends_it(
    context: Any, ui: Live, tmp_path: Path
) -> None:
    page = context.new_page()
    page.goto(ui.url + "/account")
    assert page.url.startswith(ui.url + "/login?next=")
    shot(page, "login", tmp_path)
    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(ui.url + "/account")
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["duly_session"]["httpOnly"] is True
    assert cookies["duly_session"]["sameSite"] == "Lax"
    copied = cookies["duly_session"]
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(ui.url + "/login")
    page.goto(ui.url + "/account")
    assert "/login" in page.url
    # the session ended on the server: a copy of its cookie, put back, signs nobody in
    context.add_cookies([copied])
    page.goto(ui.url + "/account")
    assert "/login" in page.url
