"""API keys: made once, shown once, stored as a SHA-256 digest.

A key is ``duly_`` + 43 characters of URL-safe base64 (256 random bits), so a fast digest is
as safe as a slow password hash and checking a key costs microseconds. The first 12
characters (the prefix) name a key in lists and logs; the rest is never logged. The
queries are :mod:`duly.store.keys`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from duly.store import keys as q
from duly.store.db import Engine, write_transaction

__all__ = ["KeyInfo", "KeyStore"]

PREFIX_LEN = 12


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyStore:
    """Create, check, list and revoke keys. ``verify`` caches good keys for a few seconds
    so a busy API does not read the table on every request; revocation is seen within that
    time by every process."""

    CACHE_SECONDS = 5.0

    def __init__(self, db: Engine) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, KeyInfo]] = {}
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def create(self, name: str, now: datetime) -> tuple[str, KeyInfo]:
        if not name or not name.strip() or len(name) > 200:
            raise ValueError("a key needs a name of 1 to 200 characters")
        token = "duly_" + secrets.token_urlsafe(32)
        with write_transaction(self.db) as conn:
            kid = q.add_key(conn, name.strip(), token[:PREFIX_LEN], _digest(token), now)
        return token, KeyInfo(int(kid), name.strip(), token[:PREFIX_LEN], now, None, None)

    def verify(self, token: str, now: datetime) -> KeyInfo | None:
        """The key's record if the token is a valid, unrevoked key; else None."""
        if not token.startswith("duly_") or len(token) > 100:
            return None
        digest = _digest(token)
        mono = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None and mono - hit[0] < self.CACHE_SECONDS:
                return hit[1]
        with self.db.connect() as conn:
            row = q.key_by_digest(conn, digest)
        if row is None or row["revoked_at"] is not None:
            return None
        info = _info(row)
        with self._lock:
            self._cache[digest] = (mono, info)
            stale = mono - self._touched.get(info.id, -1e9) > 60
            if stale:
                self._touched[info.id] = mono
        if stale:  # last use, to the minute: one write a minute per key at most
            with write_transaction(self.db) as conn:
                q.mark_key_used(conn, info.id, now)
        return info

    def cached(self, token: str) -> KeyInfo | None:
        """The key's record when :meth:`verify` found the token valid less than
        ``CACHE_SECONDS`` ago, without touching the database (callers on an event loop ask
        this first); None means "ask :meth:`verify`", not "invalid"."""
        if not token.startswith("duly_") or len(token) > 100:
            return None
        digest = _digest(token)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        return None

    def list(self) -> list[KeyInfo]:
        with self.db.connect() as conn:
            rows = q.keys_in_order(conn)
        return [_info(r) for r in rows]

    def revoke(self, ident: str, now: datetime) -> KeyInfo | None:
        """Revoke by id, name or prefix. Returns the key, or None when no single key matches."""
        with write_transaction(self.db) as conn:
            row = q.revoke_key(conn, ident, now)
        if row is None:
            return None
        with self._lock:
            self._cache.clear()
        return _info(row)


def _info(r: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        int(r["id"]), r["name"], r["prefix"], r["created_at"], r["last_used_at"], r["revoked_at"]
    )
