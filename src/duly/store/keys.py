"""The queries behind API keys (:mod:`duly.api.keys` makes, hashes and caches them).

Every function takes an open connection inside the caller's transaction and returns plain
data: a key is a dict of its ``api_keys`` columns. Only the SHA-256 digest of a key is
stored, with its first characters (the prefix) to name it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import api_keys

__all__ = ["add_key", "key_by_digest", "keys_in_order", "mark_key_used", "revoke_key"]


def add_key(conn: Connection, name: str, prefix: str, key_hash: str, now: datetime) -> int:
    """Insert a key created at ``now`` (never used, not revoked); returns its id."""
    kid = conn.execute(
        sa.insert(api_keys)
        .values(name=name, prefix=prefix, key_hash=key_hash, created_at=now)
        .returning(api_keys.c.id)
    ).scalar_one()
    return int(kid)


def key_by_digest(conn: Connection, digest: str) -> dict[str, Any] | None:
    """The key whose digest is ``digest`` (revoked or not: the caller checks), or None."""
    row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == digest)).mappings().first()
    return dict(row) if row is not None else None


def mark_key_used(conn: Connection, kid: int, now: datetime) -> None:
    """Record ``now`` as the last use of key ``kid`` (nothing when it is gone)."""
    conn.execute(sa.update(api_keys).where(api_keys.c.id == kid).values(last_used_at=now))


def keys_in_order(conn: Connection) -> list[dict[str, Any]]:
    """Every key, revoked ones included, by id (oldest first)."""
    return [dict(r) for r in conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).mappings()]


def revoke_key(conn: Connection, ident: str, now: datetime) -> dict[str, Any] | None:
    """Revoke the one unrevoked key whose name or prefix is ``ident`` (or whose id, when
    ``ident`` is all digits), marking it revoked at ``now``; returns that key as it now is.
    None, and nothing written, when no unrevoked key or more than one matches."""
    q = sa.select(api_keys).where(api_keys.c.revoked_at.is_(None))
    cond = [api_keys.c.name == ident, api_keys.c.prefix == ident]
    if ident.isdigit():
        cond.append(api_keys.c.id == int(ident))
    rows = conn.execute(q.where(sa.or_(*cond))).mappings().all()
    if len(rows) != 1:
        return None
    conn.execute(sa.update(api_keys).where(api_keys.c.id == rows[0]["id"]).values(revoked_at=now))
    return {**rows[0], "revoked_at": now}
