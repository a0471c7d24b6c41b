"""People who sign in to the web UI: ``duly users create``, argon2 password hashes, roles.

Only an argon2id hash of a password is stored (argon2-cffi's recommended parameters; a
hash made with older parameters is upgraded at the next successful sign-in). Checking an
unknown username costs the same as checking a wrong password, so a sign-in form does not
tell which usernames exist.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from duly.errors import InvalidInput
from duly.store.db import write_transaction
from duly.store.tables import users

__all__ = ["ROLES", "User", "UserStore", "MIN_PASSWORD"]

ROLES = ("admin", "viewer")
MIN_PASSWORD = 8
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")

_hasher = PasswordHasher()
# verified against when the username is unknown, so both answers take as long
_DUMMY_HASH = _hasher.hash("not a password anyone has")


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    timezone: str | None
    created_at: datetime
    last_login_at: datetime | None
    # changes whenever the password does: a session made before a change stops working
    password_stamp: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _stamp(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _user(r: sa.RowMapping) -> User:
    return User(
        id=r["id"],
        username=r["username"],
        role=r["role"],
        timezone=r["timezone"],
        created_at=r["created_at"],
        last_login_at=r["last_login_at"],
        password_stamp=_stamp(r["password_hash"]),
    )


def check_username(name: str) -> str:
    name = (name or "").strip()
    if not _USERNAME.fullmatch(name):
        raise InvalidInput(
            "a username is 1 to 100 letters, digits or . _ @ - (starting with a letter or digit)",
            field="username",
        )
    return name


def check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD} characters", field="password")
    if len(password) > 1024:
        raise InvalidInput("a password can have at most 1024 characters", field="password")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    return role


def check_timezone(tz: str | None) -> str | None:
    if not tz:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown timezone {tz!r} (an IANA name such as Europe/Paris)", field="timezone"
        ) from None
    return tz


class UserStore:
    """Create, check, list, change and delete UI users."""

    def __init__(self, db: sa.Engine) -> None:
        self.db = db

    def create(self, username: str, password: str, role: str, now: datetime) -> User:
        username = check_username(username)
        check_password(password)
        check_role(role)
        try:
            with write_transaction(self.db) as conn:
                conn.execute(
                    sa.insert(users).values(
                        username=username,
                        password_hash=_hasher.hash(password),
                        role=role,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except sa.exc.IntegrityError:
            raise InvalidInput(f"there is already a user {username!r}", field="username") from None
        got = self.get_by_name(username)
        assert got is not None
        return got

    def count(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() or 0)

    def get(self, uid: int) -> User | None:
        with self.db.connect() as conn:
            r = conn.execute(sa.select(users).where(users.c.id == uid)).mappings().first()
        return _user(r) if r is not None else None

    def get_by_name(self, username: str) -> User | None:
        with self.db.connect() as conn:
            r = (
                conn.execute(sa.select(users).where(users.c.username == username))
                .mappings()
                .first()
            )
        return _user(r) if r is not None else None

    def list(self) -> list[User]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(users).order_by(users.c.username)).mappings().all()
        return [_user(r) for r in rows]

    def authenticate(self, username: str, password: str, now: datetime) -> User | None:
        """The user when the password is right, else None (same cost either way)."""
        with self.db.connect() as conn:
            r = (
                conn.execute(sa.select(users).where(users.c.username == (username or "").strip()))
                .mappings()
                .first()
            )
        stored = r["password_hash"] if r is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if r is None:  # pragma: no cover - nobody knows the dummy's password
            return None
        values: dict[str, object] = {"last_login_at": now}
        if _hasher.check_needs_rehash(stored):
            values["password_hash"] = _hasher.hash(password)
        with write_transaction(self.db) as conn:
            conn.execute(sa.update(users).where(users.c.id == r["id"]).values(**values))
        return self.get(r["id"])

    def set_password(self, username: str, password: str, now: datetime) -> User:
        check_password(password)
        return self._update(username, now, password_hash=_hasher.hash(password))

    def set_role(self, username: str, role: str, now: datetime) -> User:
        return self._update(username, now, role=check_role(role))

    def set_timezone(self, username: str, tz: str | None, now: datetime) -> User:
        return self._update(username, now, timezone=check_timezone(tz))

    def delete(self, username: str) -> bool:
        with write_transaction(self.db) as conn:
            n = conn.execute(sa.delete(users).where(users.c.username == username)).rowcount
        return bool(n)

    def _update(self, username: str, now: datetime, **values: object) -> User:
        with write_transaction(self.db) as conn:
            n = conn.execute(
                sa.update(users)
                .where(users.c.username == username)
                .values(updated_at=now, **values)
            ).rowcount
        if not n:
            raise InvalidInput(f"no user {username!r}", field="username")
        got = self.get_by_name(username)
        assert got is not None
        return got
