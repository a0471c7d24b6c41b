"""Signing in and out, and the signed-in user's own account (zone, password).

Sign-in limits (docs/how-to/use-the-web-ui.md, "Sign-in limits"): every attempt is
counted in the database before its password is checked (duly.web.users.SignInLimits), so
no number of simultaneous attempts, on any number of server processes, gets more checks
than the limits allow:

- an account: 5 failed attempts in 15 minutes, then its sign-ins are refused (429)
  until the oldest of them is 15 minutes old;
- a client address: 20 failed attempts in 15 minutes, on any accounts; counted only
  when the address is the client's own (duly.web.ClientAddress: behind a proxy that does
  not forward it, every client would share one);
- a browser that signed in to the account before (a signed device cookie, kept 180
  days) is held to a limit of its own, 5 failures in 15 minutes, instead of the two
  above: someone else's failures never keep a user out of their usual browser.

A right password deletes its attempt: only failures (and attempts being checked) count.
"""

from __future__ import annotations

import logging
import secrets
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool

from duly.core.errors import InvalidInput
from duly.web.core import (
    TZ_COOKIE,
    CurrentUser,
    engine_of,
    flash,
    redirect,
    render,
    safe_next,
    session_user,
    sign_in,
    sign_out,
    users_of,
    wall_now,
)
from duly.web.users import Attempt, SignInLimits, is_username

router = APIRouter()
log = logging.getLogger("duly.web")

_ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith("Etc/"))

ACCOUNT_LIMIT = 5  # failed attempts per account in the window
ADDRESS_LIMIT = 20  # failed attempts per client address in the window
DEVICE_LIMIT = 5  # failed attempts per known browser (device cookie) in the window
DEVICE_COOKIE = "duly_device"
DEVICE_MAX_AGE = 180 * 24 * 3600


def _limits(request: Request) -> SignInLimits:
    state = request.app.state
    if getattr(state, "sign_in_limits", None) is None:
        state.sign_in_limits = SignInLimits(state.runtime.db)
    return state.sign_in_limits  # type: ignore[no-any-return]


def _devices(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.device_secret, salt="duly.web.device")


def _device_of(request: Request, username: str) -> str | None:
    """The id of this browser when it signed in to ``username`` before, else None."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw or len(raw) > 500:
        return None
    try:
        data = _devices(request).loads(raw, max_age=DEVICE_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("u") != username.lower():
        return None
    device = data.get("d")
    return device if isinstance(device, str) and 0 < len(device) <= 64 else None


def _client_address(request: Request) -> str | None:
    """The client's address when it is the client's own (see duly.web.ClientAddress;
    without it in front, as in tests, the peer's address)."""
    if request.scope.get("duly.client_trusted", True) is False or request.client is None:
        return None
    host = request.client.host
    return host[:100] if host else None


def _limit_keys(request: Request, username: str, device: str | None) -> list[tuple[str, int]]:
    if device is not None:
        return [(f"device:{device}", DEVICE_LIMIT)]
    keys = [(f"account:{username.lower()}", ACCOUNT_LIMIT)]
    address = _client_address(request)
    if address is not None:
        keys.append((f"address:{address}", ADDRESS_LIMIT))
    return keys


def _login_page(request: Request, nxt: str, username: str, error: str, status: int) -> HTMLResponse:
    return render(
        request,
        "login.html",
        {"next": nxt, "username": username, "no_users": False, "error": error},
        status=status,
    )


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if session_user(request) is not None:
        return redirect(safe_next(next))
    return render(
        request,
        "login.html",
        {"next": safe_next(next), "username": "", "no_users": users_of(request).count() == 0},
    )


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username", ""))[:200].strip()
    password = str(form.get("password", ""))[:1024]
    nxt = safe_next(str(form.get("next", "/")))
    if not is_username(username):
        # no user can have this name (and it must not reach the database: a NUL is an
        # error on PostgreSQL): the answer to a wrong password, without counting or checking
        return _login_page(request, nxt, "", "Wrong username or password.", 400)
    device = _device_of(request, username)
    limits = _limits(request)
    attempt: Attempt = await run_in_threadpool(
        limits.begin, _limit_keys(request, username, device), wall_now()
    )
    if not attempt.allowed:
        log.warning("sign-in for %r refused: too many failed attempts", username)
        minutes = max(1, round(attempt.retry_after / 60))
        return _login_page(
            request,
            nxt,
            username,
            f"Too many failed sign-ins. Try again in {minutes} min.",
            429,
        )
    # argon2 takes tens of milliseconds: off the event loop
    now = engine_of(request).clock.now()
    user = await run_in_threadpool(users_of(request).authenticate, username, password, now)
    await run_in_threadpool(limits.finish, attempt, ok=user is not None, now=wall_now())
    if user is None:
        log.info("sign-in refused for %r", username)
        return _login_page(request, nxt, username, "Wrong username or password.", 400)
    sign_in(request, user)
    log.info("%s signed in", user.username)
    response = redirect(nxt)
    cookie = _devices(request).dumps(
        {"u": username.lower(), "d": device or secrets.token_urlsafe(16)}
    )
    response.set_cookie(
        DEVICE_COOKIE,
        cookie,
        max_age=DEVICE_MAX_AGE,
        path="/login",
        httponly=True,
        samesite="lax",
        secure=bool(getattr(request.app.state, "cookie_secure", False)),
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    sign_out(request)
    return redirect("/login")


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, user: CurrentUser) -> Response:
    return _account(request, {})


def _account(request: Request, errors: dict[str, str], status: int = 200) -> Response:
    return render(
        request,
        "account.html",
        {"errors": errors, "zones": _ZONES, "browser_tz": request.cookies.get(TZ_COOKIE)},
        status,
    )


@router.post("/account/timezone")
async def set_timezone(request: Request, user: CurrentUser) -> Response:
    form = await request.form()
    tz = str(form.get("timezone", "")).strip()[:64]
    try:
        users_of(request).set_timezone(user.username, tz or None, engine_of(request).clock.now())
    except InvalidInput as exc:
        return _account(request, {"timezone": str(exc)}, 400)
    request.scope.pop("duly.user", None)
    flash(request, f"Times are now shown in {tz}." if tz else "Times now follow your browser.")
    return redirect("/account")


@router.post("/account/password")
async def set_password(request: Request, user: CurrentUser) -> Response:
    form = await request.form()
    users = users_of(request)
    now = engine_of(request).clock.now()
    current = str(form.get("current", ""))[:1024]
    ok = await run_in_threadpool(users.authenticate, user.username, current, now)
    if ok is None:
        return _account(request, {"current": "This is not your current password."}, 400)
    try:
        changed = await run_in_threadpool(
            users.set_password, user.username, str(form.get("password", "")), now
        )
    except InvalidInput as exc:
        return _account(request, {"password": str(exc)}, 400)
    sign_in(request, changed)  # this session goes on; every other one ends
    flash(request, "Password changed.")
    return redirect("/account")
