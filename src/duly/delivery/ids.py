"""Message ids: one per delivery identity, the same on every attempt (a resend after a crash
carries the id of the first try, so a receiver can drop the duplicate), and different
between installations (two duly installations sending for the same rule, subject and
recipient must not produce the same email Message-ID or webhook id).

The id is 32 hex digits of an HMAC-SHA256 of the identity, keyed with the installation's
secret: ``DULY_SECRET_KEY`` when set, else the one generated once and kept in the database
(:func:`duly.delivery.ack.load_secret`, shared with acknowledge and preference links; the key is
derived from it for this use alone). The stored form is unchanged (32 hex digits, no
domain); a channel that needs more adds it: email writes ``<id@domain>`` (see
:mod:`duly.delivery.channels.smtp`).
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from duly.core.planner import Identity
from duly.delivery.ack import load_secret
from duly.store.db import Engine

__all__ = ["MessageIds", "installation_key", "message_id_for"]

# Separates this use of the installation's secret from its others (ack and preference links).
_PURPOSE = b"duly.message-id.v1"


def installation_key(secret: str | bytes) -> bytes:
    """The key for message ids, derived from the installation's secret."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, _PURPOSE, hashlib.sha256).digest()


def message_id_for(identity: Identity, key: bytes) -> str:
    """32 hex digits: stable for ``identity`` under ``key``, unguessable without it."""
    mac = hmac.new(key, "\x1f".join(identity.db_key()).encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


class MessageIds:
    """Message ids of one installation: call it with an identity. The secret is read (or
    generated in the database) on first use, then kept; thread-safe.

    Give ``secret`` (simulations, tests) or ``db`` (the secret comes from
    :func:`duly.delivery.ack.load_secret`: ``DULY_SECRET_KEY``, else the database's)."""

    def __init__(self, *, db: Engine | None = None, secret: str | None = None) -> None:
        self.db = db
        self._key = installation_key(secret) if secret is not None else None
        self._lock = threading.Lock()

    @property
    def key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = installation_key(load_secret(self.db))
            return self._key

    def __call__(self, identity: Identity) -> str:
        return message_id_for(identity, self.key)
