"""Signing in and out, and the signed-in user's own account (zone, password)."""

from __future__ import annotations

import logging
import threading
import time
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.errors import InvalidInput
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
    users_of,
)

router = APIRouter()
log = logging.getLogger("duly.web")

_ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith("Etc/"))


class Throttle:
    """Failed sign-ins per username and per client address: after ``limit`` failures
    within ``window`` seconds, further attempts are refused until the window has passed
    since the first of them (in memory: one `duly serve` process serves the UI)."""

    def __init__(self, limit: int = 5, window: float = 900.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if t > now - self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def wait(self, keys: list[str]) -> float:
        """Seconds before another attempt is allowed (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [
                times[0] + self.window - now
                for key in keys
                if len(times := self._recent(key, now)) >= self.limit
            ]
        return max(waits, default=0.0)

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 10_000:  # forget the stalest keys first
                for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:5_000]:
                    del self._failures[key]

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def _throttle(request: Request) -> Throttle:
    """The app's throttle (each UI app, so each server, counts its own)."""
    state = request.app.state
    if getattr(state, "login_throttle", None) is None:
        state.login_throttle = Throttle()
    return state.login_throttle  # type: ignore[no-any-return]


def _throttle_keys(request: Request, username: str) -> list[str]:
    client = request.client.host if request.client else "?"
    return [f"user:{username.strip().lower()}", f"addr:{client}"]


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
    username = str(form.get("username", ""))[:200]
    password = str(form.get("password", ""))[:1024]
    nxt = safe_next(str(form.get("next", "/")))
    now = engine_of(request).clock.now()
    keys = _throttle_keys(request, username)
    wait = _throttle(request).wait(keys)
    if wait > 0:
        log.warning("sign-in for %r refused: too many failed attempts", username)
        minutes = max(1, round(wait / 60))
        return render(
            request,
            "login.html",
            {
                "next": nxt,
                "username": username,
                "no_users": False,
                "error": f"Too many failed sign-ins. Try again in {minutes} min.",
            },
            status=429,
        )
    # argon2 takes tens of milliseconds: off the event loop
    user = await run_in_threadpool(users_of(request).authenticate, username, password, now)
    if user is None:
        _throttle(request).failed(keys)
        log.info("sign-in refused for %r", username)
        return render(
            request,
            "login.html",
            {
                "next": nxt,
                "username": username,
                "error": "Wrong username or password.",
                "no_users": False,
            },
            status=400,
        )
    _throttle(request).succeeded(keys[:1])  # the address keeps its count: it may be guessing others
    sign_in(request, user)
    log.info("%s signed in", user.username)
    return redirect(nxt)


@router.post("/logout")
def logout(request: Request) -> Response:
    request.session.clear()
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
