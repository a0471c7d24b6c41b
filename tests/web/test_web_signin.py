"""Sign-in limits and server-side sessions, on SQLite and PostgreSQL.

The limits (docs/how-to/use-the-web-ui.md, "Sign-in limits"): attempts are counted in the
database before the password is checked; 5 failures in 15 minutes lock an account, 20 lock
a client address (only when the address is the client's own), and a browser that signed in
to an account before (its device cookie) is held to its own limit instead of both, so
someone else's failures do not keep a user out of their usual browser.

Sessions live in the database: a copied session cookie stops working on sign-out, password
change, role change and deletion of the user.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from duly.app import create_app
from duly.core.rules.loader import load_rules
from duly.engine.runtime import BUNDLED_RULES, build_runtime
from duly.web import SESSION_COOKIE, ClientAddress
from duly.web.users import SignInLimits, UserStore
from live import free_port  # tests/live.py
from webui import _TOKEN, ADMIN, VIEWER, Web, make_web  # tests/webui.py

BASE = "http://127.0.0.1:8000"


@pytest.fixture
def web(db_url: str, tmp_path: Path) -> Iterator[Web]:
    """The UI on SQLite and on PostgreSQL (the module's tests run on both)."""
    w = make_web(tmp_path, database=db_url)
    try:
        yield w
    finally:
        w.close()


def client_at(web: Web, address: str, app: Any = None, **kw: Any) -> Web:
    """Another browser (no cookies), connecting from ``address``."""
    c = TestClient(app or web.client.app, base_url=BASE, client=(address, 40000), **kw)
    return Web(web.rt, c)


def try_login(w: Web, who: tuple[str, str], **kw: Any) -> int:
    return int(w.post("/login", {"username": who[0], "password": who[1]}, **kw).status_code)


def fail(w: Web, username: str, n: int = 1, **kw: Any) -> None:
    for _ in range(n):
        assert try_login(w, (username, "a wrong guess"), **kw) == 400


# --------------------------------------------------------------------------- counting


class CountChecks:
    """Counts the password checks (UserStore.authenticate, which runs argon2): ``n`` in
    all, ``wrong`` with a wrong password."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = self.wrong = 0
        self._lock = threading.Lock()
        real = UserStore.authenticate

        def counted(store: UserStore, *a: Any, **kw: Any) -> Any:
            got = real(store, *a, **kw)
            with self._lock:
                self.n += 1
                self.wrong += got is None
            return got

        monkeypatch.setattr(UserStore, "authenticate", counted)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by a real uvicorn on a free port, in a thread."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=300,  # clients wait at a barrier between their two requests
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.02)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("right_one", [False, True], ids=["all-wrong", "one-right"])
def test_concurrent_sign_ins_cannot_exceed_the_limit_even_across_servers(
    web: Web, db_url: str, monkeypatch: pytest.MonkeyPatch, right_one: bool
) -> None:
    """150 sign-ins for one account at once, through two servers sharing the database
    (as two `duly serve` processes would): at most 5 wrong passwords reach the password
    check. With the right password among them, it may take a sixth check: a right
    password is not a failure, so it frees the place it took."""
    checks = CountChecks(monkeypatch)
    rt2 = build_runtime(load_rules(str(BUNDLED_RULES)), db_url)
    n = 150
    statuses: list[int | str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)
    try:
        with serving(create_app(web.rt)) as url1, serving(create_app(rt2)) as url2:

            def attempt(i: int) -> None:
                try:
                    with httpx.Client(base_url=(url1, url2)[i % 2], timeout=120) as c:
                        m = _TOKEN.search(c.get("/login").text)
                        assert m
                        right = right_one and i == n - 1
                        password = ADMIN[1] if right else f"wrong guess {i}"
                        barrier.wait(timeout=120)
                        data = {"csrftoken": m.group(1), "username": "admin", "password": password}
                        status: int | str = c.post("/login", data=data).status_code
                except Exception as exc:  # reported below, not lost in a thread
                    status = repr(exc)
                with lock:
                    statuses.append(status)

            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
    finally:
        rt2.db.dispose()
    assert len(statuses) == n
    assert all(isinstance(s, int) for s in statuses), [s for s in statuses if isinstance(s, str)]
    assert checks.wrong <= 5, f"{checks.wrong} wrong passwords reached the password check"
    assert checks.n <= (6 if right_one else 5)
    assert set(statuses) <= {303, 400, 429}
    assert statuses.count(400) == checks.wrong
    assert statuses.count(303) + statuses.count(400) == checks.n
    assert statuses.count(429) == n - checks.n


def test_attempts_are_counted_before_the_check_and_a_success_is_not_a_failure(
    db_engine: Any,
) -> None:
    limits = SignInLimits(db_engine)
    t0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    keys = [("account:a", 2), ("address:x", 3)]
    first = limits.begin(keys, t0)
    second = limits.begin(keys, t0 + timedelta(seconds=1))
    assert first.allowed and second.allowed
    # two attempts in flight: the third is refused before any check
    third = limits.begin(keys, t0 + timedelta(seconds=2))
    assert not third.allowed and 0 < third.retry_after <= 900
    limits.finish(first, ok=True, now=t0 + timedelta(seconds=3))  # right: not a failure
    assert limits.begin([("account:a", 2)], t0 + timedelta(seconds=4)).allowed
    assert not limits.begin([("account:a", 2)], t0 + timedelta(seconds=5)).allowed
    # the address's limit is its own
    assert limits.begin([("address:x", 3)], t0 + timedelta(seconds=6)).allowed
    # refused attempts did not count; the window slides past the oldest
    later = t0 + timedelta(minutes=15, seconds=2)
    assert limits.begin([("account:a", 2)], later).allowed
    assert limits.begin([("account:b", 2)], t0).allowed  # other keys are untouched


# --------------------------------------------------------------------------- policy


def test_failures_on_one_account_do_not_refuse_others_from_the_same_address(web: Web) -> None:
    attacker = client_at(web, "10.0.0.1")
    fail(attacker, "admin", 5)
    assert try_login(attacker, ADMIN) == 429  # that account is locked for new browsers
    assert "Too many failed sign-ins" in attacker.post("/login", {"username": "admin"}).text
    colleague = client_at(web, "10.0.0.1")  # the same address (a shared NAT, a proxy)
    assert try_login(colleague, VIEWER) == 303


def test_a_locked_account_still_lets_its_usual_browser_in(web: Web) -> None:
    usual = client_at(web, "10.0.0.2")
    usual.login(ADMIN)
    usual.logout()
    attacker = client_at(web, "10.0.0.3")
    fail(attacker, "admin", 5)
    assert try_login(attacker, ADMIN) == 429
    assert try_login(usual, ADMIN) == 303  # a browser that signed in before: its own limit
    usual.logout()
    fail(usual, "admin", 5)  # which holds too
    assert try_login(usual, ADMIN) == 429


def test_many_failures_from_one_address_limit_that_address(web: Web) -> None:
    usual = client_at(web, "10.0.0.4")
    usual.login(VIEWER)
    usual.logout()
    sprayer = client_at(web, "10.0.0.4")
    for i in range(20):
        fail(sprayer, f"user{i}")
    assert try_login(client_at(web, "10.0.0.4"), VIEWER) == 429  # a new browser there
    assert try_login(usual, VIEWER) == 303  # the known browser is not held to the address
    assert try_login(client_at(web, "10.0.0.5"), VIEWER) == 303  # another address


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(web: Web) -> None:
    app = ClientAddress(web.client.app, "127.0.0.1")

    def via_proxy(client: str) -> Web:
        return client_at(web, "127.0.0.1", app, headers={"x-forwarded-for": client})

    sprayer = via_proxy("203.0.113.5")
    for i in range(20):
        fail(sprayer, f"user{i}")
    assert try_login(via_proxy("203.0.113.5"), VIEWER) == 429
    assert try_login(via_proxy("203.0.113.6"), VIEWER) == 303


def test_a_proxy_that_does_not_pass_the_address_locks_nobody_out(web: Web) -> None:
    """A trusted proxy without X-Forwarded-For: every client would share its address, so
    no address limit applies (the account limit does)."""
    app = ClientAddress(web.client.app, "127.0.0.1")
    sprayer = client_at(web, "127.0.0.1", app)
    for i in range(25):
        fail(sprayer, f"user{i}")
    assert try_login(client_at(web, "127.0.0.1", app), VIEWER) == 303


def test_an_untrusted_peer_cannot_escape_the_address_limit_with_a_forged_header(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    app = ClientAddress(web.client.app, "127.0.0.1")
    for i in range(20):
        forged = client_at(web, "198.51.100.7", app, headers={"x-forwarded-for": f"1.2.3.{i}"})
        fail(forged, f"user{i}")
    fresh = client_at(web, "198.51.100.7", app, headers={"x-forwarded-for": "9.9.9.9"})
    assert try_login(fresh, VIEWER) == 429
    # a proxy missing from --forwarded-allow-ips would look the same: said once
    said = [r for r in caplog.records if "not a trusted proxy" in r.getMessage()]
    assert len(said) == 1 and "198.51.100.7" in said[0].getMessage()


def test_nul_bytes_in_the_sign_in_form_are_a_plain_failure(web: Web) -> None:
    for username, password in (("ad\x00min", ADMIN[1]), ("admin", "pass\x00word"), ("\x00", "")):
        r = web.post("/login", {"username": username, "password": password})
        assert r.status_code == 400, r.text[:300]
        assert "Wrong username or password" in r.text
    r = web.post("/login", {"username": ADMIN[0], "password": ADMIN[1], "next": "/a\x00b"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert web.get("/login?next=/x%00y").status_code in (200, 303)


# --------------------------------------------------------------------------- sessions


def copied_cookie_works(web: Web, cookie: str) -> bool:
    """Replays a copied session cookie from another browser."""
    c = TestClient(web.client.app, base_url=BASE, cookies={SESSION_COOKIE: cookie})
    try:
        r = c.get("/account", follow_redirects=False)
    finally:
        c.close()
    return r.status_code == 200 and "Signed in as" in r.text


def signed_in(web: Web, who: tuple[str, str] = ADMIN) -> tuple[Web, str]:
    w = client_at(web, "10.1.0.1").login(who)
    cookie = w.client.cookies.get(SESSION_COOKIE)
    assert cookie and copied_cookie_works(web, cookie)
    return w, cookie


def test_a_copied_cookie_stops_working_on_sign_out(web: Web) -> None:
    w, cookie = signed_in(web)
    w.logout()
    assert not copied_cookie_works(web, cookie)


def test_a_copied_cookie_stops_working_on_password_change(web: Web) -> None:
    w, cookie = signed_in(web)
    other, other_cookie = signed_in(web)
    r = w.post(
        "/account/password",
        {"current": ADMIN[1], "password": "a brand new password"},
        token_from="/account",
    )
    assert r.status_code == 303
    assert w.get("/account").status_code == 200  # the session that changed it goes on
    assert not copied_cookie_works(web, cookie)  # under a new id: the old cookie is dead
    assert not copied_cookie_works(web, other_cookie)
    UserStore(web.rt.db).set_password("viewer", "another new password", datetime.now(UTC))


def test_a_copied_cookie_stops_working_on_role_change(web: Web) -> None:
    _, cookie = signed_in(web, VIEWER)
    UserStore(web.rt.db).set_role("viewer", "admin", datetime.now(UTC))
    assert not copied_cookie_works(web, cookie)


def test_a_copied_cookie_stops_working_when_the_user_is_deleted(web: Web) -> None:
    _, cookie = signed_in(web, VIEWER)
    store = UserStore(web.rt.db)
    assert store.delete("viewer")
    assert not copied_cookie_works(web, cookie)
    # a new user of the same name (and maybe the same id) gets no old session
    store.create("viewer", VIEWER[1], "viewer", datetime.now(UTC))
    assert not copied_cookie_works(web, cookie)


def test_a_cookie_from_before_sessions_were_stored_signs_nobody_in(web: Web) -> None:
    """The cookie used to hold the user's id and a password stamp, enough on its own."""
    import base64
    import hashlib
    import json

    import sqlalchemy as sa
    from itsdangerous import TimestampSigner

    from duly.delivery.ack import load_secret
    from duly.store.tables import users
    from duly.web import _derive

    with web.rt.db.connect() as conn:
        uid, pw_hash = conn.execute(
            sa.select(users.c.id, users.c.password_hash).where(users.c.username == "admin")
        ).one()
    stamp = hashlib.sha256(pw_hash.encode()).hexdigest()[:16]  # as the old cookie had it
    signer = TimestampSigner(_derive(load_secret(web.rt.db), "duly.web.session"))
    data = base64.b64encode(json.dumps({"uid": uid, "pw": stamp}).encode())
    old = signer.sign(data).decode()
    assert not copied_cookie_works(web, old)
    # and the form of such a cookie with this secret is right: a live session passes
    _, cookie = signed_in(web)
    assert signer.unsign(cookie)


def test_an_idle_session_ends(web: Web) -> None:
    from duly.web import SESSION_MAX_AGE
    from duly.web.users import SessionStore

    _, cookie = signed_in(web)
    sessions = SessionStore(web.rt.db)
    assert sessions.count() == 1
    later = datetime.now(UTC) + timedelta(seconds=SESSION_MAX_AGE + 60)
    assert sessions.expire(later, SESSION_MAX_AGE) == 1
    assert not copied_cookie_works(web, cookie)


def test_sessions_are_bounded(db_engine: Any) -> None:
    from duly.web.users import SessionStore

    t0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    ann = UserStore(db_engine).create("ann", "ann password 1", "viewer", t0)
    sessions = SessionStore(db_engine)
    sessions.PER_USER = 3
    tokens = [sessions.start(ann.id, t0 + timedelta(seconds=i), 3600) for i in range(5)]
    assert sessions.count() == 3  # the least recently used end first
    t1 = t0 + timedelta(seconds=10)
    assert sessions.user(tokens[0], t1, 3600) is None
    live = sessions.user(tokens[4], t1, 3600)
    assert live is not None and live.username == "ann"
    # idle sessions go when anyone signs in
    sessions.start(ann.id, t0 + timedelta(hours=2), 3600)
    assert sessions.count() == 1


# --------------------------------------------------------------------------- duly serve


def test_serve_documents_forwarded_allow_ips() -> None:
    from click.testing import CliRunner

    from duly.cli import main

    out = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    assert "--forwarded-allow-ips" in out and "DULY_FORWARDED_ALLOW_IPS" in out


def test_duly_serve_behind_a_proxy_limits_by_forwarded_address_and_ends_sessions(
    db_url: str, tmp_path: Path
) -> None:
    """A real `duly serve --forwarded-allow-ips 127.0.0.1` over HTTP: the address limit
    counts the forwarded client, and a copied cookie is dead after sign-out."""
    import subprocess

    from live import DULY, live_server

    env = {"DULY_FORWARDED_ALLOW_IPS": "127.0.0.1", "DULY_SECRET_KEY": "k" * 32}
    with live_server(tmp_path, database=db_url, extra_env=env) as live:
        subprocess.run(
            [*DULY, "users", "create", "ann", "--role", "viewer", "--password-stdin"],
            input="ann password 1\n",
            env=live.env,
            check=True,
            capture_output=True,
            text=True,
        )

        def sign_in(client: str, username: str, password: str) -> httpx.Response:
            with httpx.Client(base_url=live.url, headers={"x-forwarded-for": client}) as c:
                m = _TOKEN.search(c.get("/login").text)
                assert m
                data = {"csrftoken": m.group(1), "username": username, "password": password}
                r = c.post("/login", data=data)
                r.extensions["cookies"] = dict(c.cookies)
                return r

        for i in range(20):
            assert sign_in("203.0.113.5", f"user{i}", "a wrong guess").status_code == 400
        assert sign_in("203.0.113.5", "ann", "ann password 1").status_code == 429
        ok = sign_in("203.0.113.6", "ann", "ann password 1")
        assert ok.status_code == 303
        cookie = ok.extensions["cookies"][SESSION_COOKIE]

        def replay() -> int:
            with httpx.Client(base_url=live.url, cookies={SESSION_COOKIE: cookie}) as c:
                return c.get("/account").status_code

        assert replay() == 200
        with httpx.Client(base_url=live.url, cookies=ok.extensions["cookies"]) as c:
            m = _TOKEN.search(c.get("/account").text)
            assert m
            assert c.post("/logout", data={"csrftoken": m.group(1)}).status_code == 303
        assert replay() == 303  # to the sign-in page
