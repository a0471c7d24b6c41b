"""The ``duly`` commands that manage who may use duly: ``keys`` (API keys) and ``users``
(web UI sign-ins)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from duly.cli.common import (
    opt_db,
)

# --------------------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """Manage API keys (stored hashed; a key is shown once, when made)."""


def _migrated(database: str) -> Any:
    """An engine on ``database``, migrated to the latest schema first."""
    from duly.store.db import make_engine
    from duly.store.db import migrate as do_migrate

    db = make_engine(database)
    do_migrate(db)
    return db


def _keystore(database: str) -> Any:
    from duly.api.keys import KeyStore

    return KeyStore(_migrated(database))


def _record_key(ks: Any, action: str, info: Any, summary: str) -> None:
    """The audit trail's entry (actor "cli") for a key made or revoked: written just after,
    once the key's id is known."""
    from duly.store import audit

    entry = audit.Entry("cli", action, "key", str(info.id), summary)
    audit.record(ks.db, entry, datetime.now(UTC))


@keys.command("create")
@click.option(
    "--name",
    required=True,
    envvar="DULY_KEY_NAME",
    show_envvar=True,
    help="What the key is for (e.g. the app that uses it).",
)
@opt_db
def keys_create(name: str, database: str) -> None:
    """Make a new API key. It is printed once, alone on the last line."""
    ks = _keystore(database)
    try:
        token, info = ks.create(name, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    _record_key(ks, "create", info, f"API key {info.name} created (prefix {info.prefix})")
    click.echo(
        f"API key {info.id} ({info.name}) created. It is shown only now; keep it safe:", err=True
    )
    click.echo(token)


@keys.command("list")
@opt_db
def keys_list(database: str) -> None:
    """List API keys (id, name, prefix, created, last used, revoked)."""
    ks = _keystore(database)
    rows = ks.list()
    if not rows:
        click.echo("No API keys. Make one with `duly keys create --name NAME`.")
        return
    for k in rows:
        used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        click.echo(
            f"{k.id:>4}  {k.prefix}…  {k.name:<24} created {k.created_at:%Y-%m-%d}  "
            f"last used {used}  {state}"
        )


@keys.command("revoke")
@click.argument("key", envvar="DULY_KEY")
@opt_db
def keys_revoke(key: str, database: str) -> None:
    """Revoke a key by id, name or prefix (KEY or DULY_KEY)."""
    ks = _keystore(database)
    info = ks.revoke(key, datetime.now(UTC))
    if info is None:
        raise click.ClickException(f"no single active key matches {key!r} (see `duly keys list`)")
    _record_key(ks, "revoke", info, f"API key {info.name} revoked")
    click.echo(f"revoked key {info.id} ({info.name})")


# --------------------------------------------------------------------------- users


@click.group()
def users() -> None:
    """Manage who signs in to the web UI (passwords stored as argon2 hashes)."""


def _userstore(database: str) -> Any:
    from duly.web.users import UserStore

    return UserStore(_migrated(database))


def _audited(store: Any, action: str, username: str, summary: str, **more: Any) -> Any:
    """Record a change of a user in the audit trail (actor "cli"), in its transaction."""
    from duly.store import audit

    entry = audit.Entry("cli", action, "user", username, summary, **more)
    return audit.recorded(store.db, entry, lambda: datetime.now(UTC))


def _read_password(password_stdin: bool) -> str:
    """From standard input (one line) with --password-stdin, else asked for twice."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _opt_password_stdin(f: Any) -> Any:
    return click.option(
        "--password-stdin",
        is_flag=True,
        envvar="DULY_PASSWORD_STDIN",
        show_envvar=True,
        help="Read the password from the first line of standard input instead of asking.",
    )(f)


@users.command("create")
@click.argument("username", envvar="DULY_USERNAME")
@click.option(
    "--role",
    type=click.Choice(["admin", "operator", "viewer"]),
    default="viewer",
    show_default=True,
    envvar="DULY_USER_ROLE",
    show_envvar=True,
    help="admin: everything (templates and users too); operator: holds, send now, cancel, "
    "retry, one-off reminders, consent and suppressions; viewer: reads only.",
)
@_opt_password_stdin
@opt_db
def users_create(username: str, role: str, password_stdin: bool, database: str) -> None:
    """Make a user who can sign in to the web UI (USERNAME or DULY_USERNAME)."""
    from duly.core.errors import InvalidInput

    store = _userstore(database)
    password = _read_password(password_stdin)
    try:
        with _audited(store, "create", username, f"User {username} created ({role})",
                      after={"role": role}):  # fmt: skip
            u = store.create(username, password, role, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"user {u.username} created ({u.role})")


@users.command("list")
@opt_db
def users_list(database: str) -> None:
    """List users (name, role, created, last sign-in)."""
    rows = _userstore(database).list()
    if not rows:
        click.echo("No users. Make one with `duly users create NAME --role admin`.")
        return
    for u in rows:
        seen = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        click.echo(
            f"{u.username:<24} {u.role:<7} created {u.created_at:%Y-%m-%d}  last sign-in {seen}"
        )


@users.command("passwd")
@click.argument("username", envvar="DULY_USERNAME")
@_opt_password_stdin
@opt_db
def users_passwd(username: str, password_stdin: bool, database: str) -> None:
    """Set a user's password (their other sessions end)."""
    from duly.core.errors import InvalidInput

    store = _userstore(database)
    password = _read_password(password_stdin)
    try:
        with _audited(store, "password", username, f"Password of {username} set"):
            store.set_password(username, password, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"password of {username} changed")


@users.command("role")
@click.argument("username", envvar="DULY_USERNAME")
@click.argument(
    "role", type=click.Choice(["admin", "operator", "viewer"]), envvar="DULY_USER_ROLE"
)
@opt_db
def users_role(username: str, role: str, database: str) -> None:
    """Change a user's role."""
    from duly.core.errors import InvalidInput

    store = _userstore(database)
    old = store.get_by_name(username)
    try:
        with _audited(store, "role", username, f"Role of {username}: "
                      f"{old.role if old else '?'} → {role}",
                      before={"role": old.role} if old else None, after={"role": role}):  # fmt: skip
            store.set_role(username, role, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"{username} is now {role}")


@users.command("delete")
@click.argument("username", envvar="DULY_USERNAME")
@opt_db
def users_delete(username: str, database: str) -> None:
    """Delete a user (their sessions end at once)."""
    from duly.core.errors import InvalidInput

    store = _userstore(database)
    old = store.get_by_name(username)
    try:
        if old is None:
            raise InvalidInput(f"no user {username!r}", field="username")
        with _audited(store, "delete", username, f"User {username} deleted (was {old.role})",
                      before={"role": old.role}):  # fmt: skip
            store.delete(username, must_exist=True)
    except InvalidInput:
        raise click.ClickException(f"no user {username!r} (see `duly users list`)") from None
    click.echo(f"user {username} deleted")
