"""Signing in and out, sessions, CSRF, roles and the `duly users` commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from duly.cli import main
from duly.web.users import UserStore
from webui import _TOKEN, ADMIN, VIEWER, Web  # tests/webui.py


def test_pages_need_sign_in_and_come_back_after_it(web: Web) -> None:
    r = web.get("/account?x=1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Faccount%3Fx%3D1"
    token = web.token("/login?next=%2Faccount%3Fx%3D1")
    r = web.client.post(
        "/login",
        data={
            "csrftoken": token,
            "username": ADMIN[0],
            "password": ADMIN[1],
            "next": "/account?x=1",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/account?x=1"
    assert "Signed in as admin" in web.get("/account").text


def test_wrong_password_and_unknown_user_get_the_same_answer(web: Web) -> None:
    a = web.post("/login", {"username": ADMIN[0], "password": "wrong password"})
    b = web.post("/login", {"username": "nobody", "password": "wrong password"})
    for r in (a, b):
        assert r.status_code == 400
        assert "Wrong username or password." in r.text
    assert web.get("/account", follow_redirects=False).status_code == 303


def test_session_cookie_is_httponly_and_samesite(web: Web) -> None:
    r = web.post("/login", {"username": ADMIN[0], "password": ADMIN[1]})
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and "duly_session=" in v
    )
    assert "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower()
    assert (
        "secure" not in cookie.lower()
    )  # plain http on 127.0.0.1; DULY_COOKIE_SECURE=true sets it


def test_a_form_without_the_csrf_token_is_refused(web: Web) -> None:
    web.get("/login")  # the CSRF cookie
    r = web.client.post(
        "/login", data={"username": ADMIN[0], "password": ADMIN[1]}, follow_redirects=False
    )
    assert r.status_code == 403
    assert "This form has expired" in r.text
    web.login()
    r = web.client.post("/logout", data={"csrftoken": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    assert web.get("/account").status_code == 200  # still signed in


def test_login_without_any_cookie_is_refused_too(web: Web) -> None:
    # login CSRF: a cross-site form posting a username and password has no cookie at all
    r = web.client.post(
        "/login",
        data={"username": ADMIN[0], "password": ADMIN[1]},
        headers={"cookie": ""},
        follow_redirects=False,
    )
    assert r.status_code == 403


def test_next_never_leaves_the_site(web: Web) -> None:
    for bad in ("//evil.example/x", "https://evil.example/", "\\\\evil", "javascript:alert(1)"):
        r = web.post("/login", {"username": ADMIN[0], "password": ADMIN[1], "next": bad})
        assert r.headers["location"] == "/", bad
        web.logout()


def test_sign_out_ends_the_session(web: Web) -> None:
    web.login()
    web.logout()
    assert web.get("/account", follow_redirects=False).status_code == 303


def test_changing_the_password_ends_other_sessions(web: Web, tmp_path: Path) -> None:
    web.login()
    other = Web(web.rt, web.client.__class__(web.client.app, base_url=str(web.client.base_url)))
    other.login()
    r = web.post(
        "/account/password",
        {"current": ADMIN[1], "password": "a brand new password"},
        token_from="/account",
    )
    assert r.status_code == 303
    assert web.get("/account").status_code == 200  # this one goes on
    assert other.get("/account", follow_redirects=False).status_code == 303  # that one ended
    r = web.post(
        "/account/password", {"current": "nope", "password": "x" * 9}, token_from="/account"
    )
    assert r.status_code == 400 and "not your current password" in r.text
    r = web.post(
        "/account/password",
        {"current": "a brand new password", "password": "short"},
        token_from="/account",
    )
    assert r.status_code == 400 and "at least 8 characters" in r.text


def test_deleting_a_user_ends_their_session(web: Web) -> None:
    web.login(VIEWER)
    assert UserStore(web.rt.db).delete("viewer")
    assert web.get("/account", follow_redirects=False).status_code == 303


def test_timezone_is_checked_and_used(web: Web) -> None:
    web.login()
    r = web.post("/account/timezone", {"timezone": "Mars/Olympus"}, token_from="/account")
    assert r.status_code == 400 and "unknown timezone" in r.text
    r = web.post("/account/timezone", {"timezone": "Asia/Tokyo"}, token_from="/account")
    assert r.status_code == 303
    assert "Times in <strong>Asia/Tokyo</strong>" in web.get("/account").text


def test_pages_carry_security_headers(web: Web) -> None:
    r = web.get("/login")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["server-timing"].startswith("app;dur=")
    assert r.headers["cache-control"] == "no-store"
    assert web.get("/static/duly.css").headers["cache-control"] == "max-age=3600"


def test_the_api_is_untouched_by_the_ui(web: Web) -> None:
    r = web.get("/v1/rules")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert web.get("/healthz").json() == {"status": "ok"}
    assert "set-cookie" not in web.get("/healthz").headers
    r = web.get("/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_ui_page_is_an_html_404(web: Web) -> None:
    web.login()
    r = web.get("/subjects/no/such/thing/at/all/really")
    assert r.status_code == 404
    assert "text/html" in r.headers["content-type"]


def test_users_commands(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'u.db'}"
    run = CliRunner()
    r = run.invoke(
        main,
        ["users", "create", "ops", "--role", "admin", "--password-stdin", "--database", db],
        input="long enough password\n",
    )
    assert r.exit_code == 0, r.output
    assert "user ops created (admin)" in r.output
    r = run.invoke(
        main,
        ["users", "create", "ops", "--password-stdin", "--database", db],
        input="long enough password\n",
    )
    assert r.exit_code == 2 and "already a user 'ops'" in r.output
    r = run.invoke(
        main,
        ["users", "create", "x y", "--password-stdin", "--database", db],
        input="long enough password\n",
    )
    assert r.exit_code == 2 and "username" in r.output
    r = run.invoke(
        main, ["users", "create", "eve", "--password-stdin", "--database", db], input="short\n"
    )
    assert r.exit_code == 2 and "at least 8 characters" in r.output
    r = run.invoke(main, ["users", "list", "--database", db])
    assert r.output.splitlines()[0].split()[:2] == ["ops", "admin"]
    assert len(r.output.splitlines()) == 1  # eve was not made
    r = run.invoke(
        main,
        ["users", "passwd", "ops", "--password-stdin", "--database", db],
        input="another long password\n",
    )
    assert r.exit_code == 0, r.output
    from duly.store.db import make_engine

    store = UserStore(make_engine(db))
    now = datetime.now(UTC)
    assert store.authenticate("ops", "long enough password", now) is None
    assert store.authenticate("ops", "another long password", now) is not None
    r = run.invoke(main, ["users", "role", "ops", "viewer", "--database", db])
    assert r.exit_code == 0 and store.get_by_name("ops").role == "viewer"  # type: ignore[union-attr]
    r = run.invoke(main, ["users", "delete", "ops", "--database", db])
    assert r.exit_code == 0 and store.get_by_name("ops") is None
    r = run.invoke(main, ["users", "delete", "ops", "--database", db])
    assert r.exit_code == 1 and "no user 'ops'" in r.output
    store.db.dispose()


def test_passwords_are_stored_as_argon2_hashes(web: Web) -> None:
    import sqlalchemy as sa

    from duly.store.tables import users

    with web.rt.db.connect() as conn:
        hashes = conn.execute(sa.select(users.c.password_hash)).scalars().all()
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(ADMIN[1] in h for h in hashes)


def test_cookie_secure_marks_both_cookies_secure(web: Web) -> None:
    from starlette.testclient import TestClient

    from duly.app import create_app

    with TestClient(create_app(web.rt, cookie_secure=True), base_url="https://duly.test") as c:
        r = c.get("/login")
        token = _TOKEN.search(r.text).group(1)  # type: ignore[union-attr]
        csrf_cookie = r.headers["set-cookie"]
        r = c.post(
            "/login",
            data={"csrftoken": token, "username": ADMIN[0], "password": ADMIN[1]},
            follow_redirects=False,
        )
        session_cookie = r.headers["set-cookie"]
    assert r.status_code == 303
    assert "duly_csrf=" in csrf_cookie and "Secure" in csrf_cookie
    assert "duly_session=" in session_cookie and "secure" in session_cookie.lower()


def test_times_follow_the_browser_zone_cookie_unless_the_account_sets_one(web: Web) -> None:
    web.login()
    # duly.js stores the zone URL-encoded, as document.cookie needs
    web.client.cookies.set("duly_tz", "America%2FNew_York")
    assert "Times in <strong>America/New_York</strong>" in web.get("/account").text
    web.client.cookies.set("duly_tz", "Not%2FA_Zone")
    assert "Times in <strong>Europe/London</strong>" in web.get("/account").text  # the rules'
    web.post("/account/timezone", {"timezone": "Asia/Tokyo"}, token_from="/account")
    web.client.cookies.set("duly_tz", "America%2FNew_York")
    assert "Times in <strong>Asia/Tokyo</strong>" in web.get("/account").text


def test_the_demo_makes_an_admin_whose_password_is_printed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import re

    from starlette.testclient import TestClient

    from duly.app import create_app
    from duly.cli import _first_user
    from duly.core.rules.loader import load_rules
    from duly.engine.runtime import BUNDLED_RULES, build_runtime

    rt = build_runtime(load_rules(str(BUNDLED_RULES)), f"sqlite:///{tmp_path / 'd.db'}")
    try:
        _first_user(rt, demo=False, host="127.0.0.1", port=8000)
        assert UserStore(rt.db).count() == 0
        assert "duly users create NAME --role admin" in caplog.text
        _first_user(rt, demo=True, host="0.0.0.0", port=8000)
        printed = capsys.readouterr().err
        m = re.search(
            r"http://127\.0\.0\.1:8000 .* sign in as\s+admin\s+with password\s+(\S+)", printed
        )
        assert m, printed
        password = m.group(1)
        assert password not in caplog.text  # printed to the terminal, never logged
        _first_user(rt, demo=True, host="127.0.0.1", port=8000)  # users exist: nothing more
        assert capsys.readouterr().err == "" and UserStore(rt.db).count() == 1
        w = Web(rt, TestClient(create_app(rt), base_url="http://127.0.0.1:8000"))
        w.login(("admin", password))
        assert "Signed in as admin" in w.get("/account").text
        w.client.close()
    finally:
        rt.db.dispose()


def test_actions_are_logged_with_who_did_them(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    web.login()
    with caplog.at_level(logging.INFO, logger="duly.audit"):
        web.post("/account/timezone", {"timezone": "Asia/Tokyo"}, token_from="/account")
    lines = [r.getMessage() for r in caplog.records if r.name == "duly.audit"]
    assert lines == ["admin: Times are now shown in Asia/Tokyo."]
