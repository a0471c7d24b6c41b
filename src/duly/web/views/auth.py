"""Signing in and out, and the signed-in user's own account (zone, password)."""

from __future__ import annotations

import logging
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
    # argon2 takes tens of milliseconds: off the event loop
    user = await run_in_threadpool(users_of(request).authenticate, username, password, now)
    if user is None:
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
