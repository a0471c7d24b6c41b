"""Users, managed by admins: list, create, change role, reset password, delete — as
``duly users`` does on the server. Every change is in the audit trail (the actor is the
admin), in the transaction that makes it.

A new or reset password is either typed by the admin or made here (16 random characters)
and shown once, on the answer to the form: never in a flash message (the session cookie is
signed, not encrypted), never in a log or the audit trail. Changing a role or a password, or
deleting a user, ends their sessions. The last admin cannot be demoted or deleted, and an
admin does not demote or delete themselves here (another admin, or the CLI, can).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.core.errors import InvalidInput
from duly.web.auditing import audited
from duly.web.core import AdminUser, flash, redirect, render, users_of, wall_now
from duly.web.users import ROLES, User, check_username, is_username

router = APIRouter()

ROLE_WORDS = {
    "viewer": "reads everything, changes nothing",
    "operator": "holds, sends now, cancels and retries deliveries; one-off reminders; consent "
    "and suppressions",
    "admin": "everything, templates and users included",
}


def _password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters


def _page(
    request: Request, *, errors: dict[str, str] | None = None, shown: Any = None, status: int = 200,
    values: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    return render(
        request,
        "users/list.html",
        {
            "users": users_of(request).list(),
            "roles": [(r, f"{r} — {ROLE_WORDS[r]}") for r in ROLES],
            "role_words": ROLE_WORDS,
            "errors": errors or {},
            "shown": shown,
            "values": values or {"username": "", "role": "viewer"},
            "title": "Users",
        },
        status=status,
    )


def _target(request: Request, username: str) -> User:
    if not is_username(username):
        raise HTTPException(404)
    u = users_of(request).get_by_name(username)
    if u is None:
        raise HTTPException(404)
    return u


@router.get("/users", response_class=HTMLResponse)
def user_list(request: Request, user: AdminUser) -> Response:
    return _page(request)


@router.post("/users", response_class=HTMLResponse)
async def user_create(request: Request, user: AdminUser) -> Response:
    form = await request.form()
    username = str(form.get("username", ""))[:200].strip()
    role = str(form.get("role", "viewer"))[:20]
    typed = str(form.get("password", ""))[:1024]
    password = typed or _password()
    values = {"username": username, "role": role}

    def work() -> User:
        name = check_username(username)
        summary = f"User {name} created ({role})"
        with audited(request, user, "create", "user", name, summary, after={"role": role}):
            return users_of(request).create(name, password, role, wall_now())

    try:
        made = await run_in_threadpool(work)
    except InvalidInput as exc:
        return _page(request, errors={exc.field or "username": str(exc)}, values=values, status=400)
    flash(request, f"User {made.username} created with the role {made.role}.")
    if typed:
        return redirect("/users")
    # a made password: shown on this answer only
    return _page(request, shown={"username": made.username, "password": password})


@router.post("/users/{username}/role", response_class=HTMLResponse)
async def user_role(username: str, request: Request, user: AdminUser) -> Response:
    form = await request.form()
    target = _target(request, username)
    role = str(form.get("role", ""))[:20]
    if target.id == user.id:
        return _page(request, errors={"role": "You cannot change your own role here."}, status=400)

    def work() -> None:
        summary = f"Role of {target.username}: {target.role} → {role}"
        with audited(request, user, "role", "user", target.username, summary,
                     before={"role": target.role}, after={"role": role}):  # fmt: skip
            users_of(request).set_role(target.username, role, wall_now(), keep_admin=True)

    try:
        await run_in_threadpool(work)
    except InvalidInput as exc:
        return _page(request, errors={"role": str(exc)}, status=400)
    flash(request, f"{target.username} is now {role}; their sessions were ended.")
    return redirect("/users")


@router.post("/users/{username}/password", response_class=HTMLResponse)
async def user_password(username: str, request: Request, user: AdminUser) -> Response:
    form = await request.form()
    target = _target(request, username)
    typed = str(form.get("password", ""))[:1024]
    password = typed or _password()

    def work() -> None:
        summary = f"Password of {target.username} reset"
        with audited(request, user, "password", "user", target.username, summary):
            users_of(request).set_password(target.username, password, wall_now())

    try:
        await run_in_threadpool(work)
    except InvalidInput as exc:
        return _page(request, errors={"password": str(exc)}, status=400)
    flash(request, f"Password of {target.username} reset; their sessions were ended.")
    if typed:
        return redirect("/users")
    return _page(request, shown={"username": target.username, "password": password})


@router.post("/users/{username}/delete", response_class=HTMLResponse)
async def user_delete(username: str, request: Request, user: AdminUser) -> Response:
    target = _target(request, username)
    if target.id == user.id:
        return _page(request, errors={"delete": "You cannot delete yourself here."}, status=400)

    def work() -> None:
        summary = f"User {target.username} deleted (was {target.role})"
        with audited(request, user, "delete", "user", target.username, summary,
                     before={"role": target.role}):  # fmt: skip
            users_of(request).delete(target.username, keep_admin=True, must_exist=True)

    try:
        await run_in_threadpool(work)
    except InvalidInput as exc:
        return _page(request, errors={"delete": str(exc)}, status=400)
    flash(request, f"User {target.username} deleted.")
    return redirect("/users")
