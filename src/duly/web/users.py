"""People who sign in to the web UI: ``duly users create``, argon2 password hashes, roles;
their sessions, and the limits on sign-in attempts.

Only an argon2id hash of a password is stored (argon2-cffi's recommended parameters; a
hash made with older parameters is upgraded at the next successful sign-in). Checking an
unknown username costs the same as checking a wrong password, so a sign-in form does not
tell which usernames exist.

Sessions are rows (:class:`SessionStore`): a session cookie only names one, and changing a
user's password or role, or deleting the user, deletes their rows in the same transaction,
whichever surface (UI or CLI) did it. Sign-in attempts are counted in the database
(:class:`SignInLimits`), so the limits hold across threads and server processes. The
queries are :mod:`duly.store.users`; this module hashes, checks and decides.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from duly.core.errors import InvalidInput
from duly.store import users as q
from duly.store.db import Engine, write_transaction

__all__ = ["ROLES", "Attempt", "SessionStore", "SignInLimits", "User", "UserStore", "MIN_PASSWORD"]

# What each role may do (docs/reference/roles.md): a viewer reads everything and changes
# nothing; an operator also acts on deliveries and subjects (hold, send now, cancel, retry,
# one-off reminders, consent, suppressions); an admin also changes templates and users.
ROLES = ("admin", "operator", "viewer")
_RANK = {"viewer": 0, "operator": 1, "admin": 2}
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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_operate(self) -> bool:
        """An operator or an admin: may hold, send now, cancel, retry, create one-off
        reminders, change consent and clear suppressions."""
        return _RANK.get(self.role, 0) >= _RANK["operator"]


def _user(r: Any) -> User:
    return User(
        id=r["id"],
        username=r["username"],
        role=r["role"],
        timezone=r["timezone"],
        created_at=r["created_at"],
        last_login_at=r["last_login_at"],
    )


def is_username(name: str) -> bool:
    """Whether some user could have this name (a sign-in form's name is checked with it
    before it reaches the database)."""
    return _USERNAME.fullmatch(name or "") is not None


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

    def __init__(self, db: Engine) -> None:
        self.db = db

    def create(self, username: str, password: str, role: str, now: datetime) -> User:
        username = check_username(username)
        check_password(password)
        check_role(role)
        with write_transaction(self.db) as conn:  # InvalidInput when the name is taken
            q.add_user(conn, username, _hasher.hash(password), role, now)
        got = self.get_by_name(username)
        assert got is not None
        return got

    def count(self) -> int:
        with self.db.connect() as conn:
            return q.count_users(conn)

    def get(self, uid: int) -> User | None:
        with self.db.connect() as conn:
            r = q.user_by_id(conn, uid)
        return _user(r) if r is not None else None

    def get_by_name(self, username: str) -> User | None:
        with self.db.connect() as conn:
            r = q.user_by_name(conn, username)
        return _user(r) if r is not None else None

    def list(self) -> list[User]:
        with self.db.connect() as conn:
            rows = q.users_by_name(conn)
        return [_user(r) for r in rows]

    def authenticate(self, username: str, password: str, now: datetime) -> User | None:
        """The user when the password is right, else None (same cost either way)."""
        with self.db.connect() as conn:
            r = q.user_by_name(conn, (username or "").strip())
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
            q.record_sign_in(conn, r["id"], values)
        return self.get(r["id"])

    def set_password(self, username: str, password: str, now: datetime) -> User:
        """Change the password and end every session of the user."""
        check_password(password)
        return self._update(username, now, end_sessions=True, password_hash=_hasher.hash(password))

    def set_role(
        self, username: str, role: str, now: datetime, *, keep_admin: bool = False
    ) -> User:
        """Change the role and end every session of the user (they sign in again). With
        ``keep_admin``, refused (InvalidInput, field ``role``) when it would leave no admin
        (the UI asks it; the CLI, the way back in, does not)."""
        return self._update(
            username, now, end_sessions=True, keep_admin=keep_admin, role=check_role(role)
        )

    def set_timezone(self, username: str, tz: str | None, now: datetime) -> User:
        return self._update(username, now, timezone=check_timezone(tz))

    def delete(self, username: str, *, keep_admin: bool = False, must_exist: bool = False) -> bool:
        """Delete the user and their sessions. With ``keep_admin``, refused (InvalidInput,
        field ``username``) when it would leave no admin; with ``must_exist``, InvalidInput
        when there is no such user (either way inside the transaction, so nothing an action
        attached to it commits)."""
        with write_transaction(self.db) as conn:
            if keep_admin:
                q.count_admins(conn, lock=True)  # the admins' rows, until this ends
            gone = q.delete_user(conn, username)
            if not gone and must_exist:
                raise InvalidInput(f"no user {username!r}", field="username")
            if gone and keep_admin and q.count_admins(conn) == 0:
                raise InvalidInput(
                    f"{username} is the last admin: make another user an admin first",
                    field="username",
                )
            return gone

    def _update(
        self,
        username: str,
        now: datetime,
        *,
        end_sessions: bool = False,
        keep_admin: bool = False,
        **values: object,
    ) -> User:
        with write_transaction(self.db) as conn:  # raising inside: nothing commits
            if keep_admin:
                q.count_admins(conn, lock=True)  # the admins' rows, until this ends
            if not q.update_user(conn, username, now, end_sessions=end_sessions, **values):
                raise InvalidInput(f"no user {username!r}", field="username")
            if keep_admin and q.count_admins(conn) == 0:
                raise InvalidInput(
                    f"{username} is the last admin: make another user an admin first",
                    field="role",
                )
        got = self.get_by_name(username)
        assert got is not None
        return got


# --------------------------------------------------------------------------- sessions


def _token_id(token: str) -> str:
    """A session's row id: the SHA-256 of the cookie's token (the token is not stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Signed-in sessions of the web UI, one row each, found by the token a cookie holds.

    A session ends when its row is deleted: on sign-out, when the user's password or role
    changes or the user is deleted (:class:`UserStore` does it in the same transaction),
    and after ``max_age`` seconds without a request.
    """

    # how stale ``last_seen_at`` may get before a request writes it again: a write per
    # page would serialise every page view on SQLite
    TOUCH_EVERY = timedelta(minutes=1)
    PER_USER = 50  # sessions a user keeps (each browser, each script signing in)

    def __init__(self, db: Engine) -> None:
        self.db = db

    def start(self, user_id: int, now: datetime, max_age: float) -> str:
        """A new session of the user; returns the token for the cookie. Sessions idle for
        ``max_age`` seconds are deleted on the way, and a user keeps at most
        ``PER_USER`` (the least recently used end first)."""
        token = secrets.token_urlsafe(32)
        with write_transaction(self.db) as conn:
            q.start_session(
                conn,
                _token_id(token),
                user_id,
                now,
                idle_cut=now - timedelta(seconds=max_age),
                per_user=self.PER_USER,
            )
        return token

    def user(self, token: str, now: datetime, max_age: float) -> User | None:
        """The user of a live session (and the session marked as seen), else None."""
        if not token or len(token) > 100:
            return None
        sid = _token_id(token)
        with self.db.connect() as conn:
            found = q.session_user(conn, sid)
        if found is None:
            return None
        r, seen = found
        if seen <= now - timedelta(seconds=max_age):
            self.end(token)
            return None
        if seen <= now - self.TOUCH_EVERY:
            with write_transaction(self.db) as conn:
                q.touch_session(conn, sid, now)
        return _user(r)

    def end(self, token: str) -> None:
        if token and len(token) <= 100:
            with write_transaction(self.db) as conn:
                q.end_session(conn, _token_id(token))

    def expire(self, now: datetime, max_age: float) -> int:
        """Delete the sessions idle for ``max_age`` seconds; returns how many."""
        with write_transaction(self.db) as conn:
            return q.expire_sessions(conn, now - timedelta(seconds=max_age))

    def count(self) -> int:
        with self.db.connect() as conn:
            return q.count_sessions(conn)


# --------------------------------------------------------------------------- sign-in limits


@dataclass(frozen=True)
class Attempt:
    """A sign-in attempt as counted: ``ids`` of its rows when allowed, else how many
    seconds until the key that refused it allows one again."""

    ids: list[int] = field(default_factory=list)
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0


class SignInLimits:
    """At most ``limit`` attempts per key within a sliding ``window``, counted in the database
    before the password is checked, so attempts made at the same moment (other threads,
    other server processes) cannot get past the limit together.

    ``begin`` counts the key's rows of the window and, when every key is under its limit,
    writes one row per key — atomically: one write transaction that on SQLite holds the
    database's write lock (``BEGIN IMMEDIATE``) and on PostgreSQL first takes a
    transaction-scoped advisory lock per key (attempts on other keys are not held up).
    ``finish`` deletes the rows of an attempt whose password was right, so the rows
    left are failures and attempts still being checked. A refused attempt writes nothing:
    the window ends ``window`` after the oldest failure, however long someone keeps trying.
    """

    def __init__(self, db: Engine, window: timedelta = timedelta(minutes=15)) -> None:
        self.db, self.window = db, window

    def begin(self, keys: Sequence[tuple[str, int]], now: datetime) -> Attempt:
        """Count an attempt against each ``(key, limit)``, or refuse it if a key is at its
        limit."""
        with write_transaction(self.db) as conn:
            ids, wait = q.count_sign_in_attempt(conn, keys, now, now - self.window)
        return Attempt(ids=ids) if wait <= 0 else Attempt(retry_after=wait)

    def finish(self, attempt: Attempt, *, ok: bool, now: datetime) -> None:
        """The password was checked: a right one (``ok``) is not a failure, so its rows go;
        a wrong one's stay for the window. Either way attempts older than the window are
        forgotten (housekeeping: the table holds one window's attempts)."""
        with write_transaction(self.db) as conn:
            q.forget_sign_in_attempts(conn, attempt.ids if ok else [], now - self.window)
