"""Recording what signed-in people do in the UI in the audit trail (duly.store.audit).

A view that changes something wraps the change::

    with audited(request, user, "cancel", "delivery", str(did), f"Cancelled delivery {did}"):
        engine.cancel_delivery(did)

The entry (actor: the username; the request's id) commits in the same transaction as the
change, or is not written when the change raises. The ``duly.audit`` log line the view's
flash message writes then names the object ("ops: delivery 12: Delivery 12 was
cancelled.").

Pages show the trail through two template globals registered here: ``audit_history`` (an
object's latest entries) and ``audit_changes`` (a before/after in words), used by
``audit/_history.html``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from duly.store import audit as q
from duly.web.core import engine_of, env, wall_now
from duly.web.users import User

__all__ = ["audited", "record_now", "request_id", "text_sizes"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(request: Request) -> str:
    """The request's id: the ``X-Request-ID`` header a proxy set (when it is 1 to 64 safe
    characters), else a random one made for this request."""
    rid = request.scope.get("duly.request_id")
    if isinstance(rid, str):
        return rid
    given = request.headers.get("x-request-id", "")
    rid = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    request.scope["duly.request_id"] = rid
    return rid


def _entry(
    request: Request,
    user: User,
    action: str,
    kind: str,
    oid: str,
    summary: str,
    **more: Any,
) -> q.Entry:
    request.scope["duly.audit_object"] = f"{kind} {oid}"
    return q.Entry(
        user.username, action, kind, oid, summary, request_id=request_id(request), **more
    )


@contextmanager
def audited(
    request: Request,
    user: User,
    action: str,
    kind: str,
    oid: str,
    summary: str,
    **more: Any,
) -> Iterator[None]:
    """Record the action the block does (``more``: ``subject``, ``before``, ``after``) in
    the transaction that does it; nothing when the block raises."""
    entry = _entry(request, user, action, kind, oid, summary, **more)
    with q.recorded(engine_of(request).db, entry, wall_now):
        yield


def record_now(
    request: Request, user: User, action: str, kind: str, oid: str, summary: str, **more: Any
) -> None:
    """Record an action already done (one whose id is known only once it committed, e.g. a
    new reminder), in a transaction of its own."""
    entry = _entry(request, user, action, kind, oid, summary, **more)
    q.record(engine_of(request).db, entry, wall_now())


def text_sizes(texts: dict[tuple[str, str], str], only: Any = None) -> dict[str, Any]:
    """A template's parts as the audit trail keeps them: per ``CHANNEL.EXT``, the size and
    the SHA-256 of the text (never the text). With ``only`` (parts with ``channel`` and
    ``ext``), just those parts."""
    keys = {(p.channel, p.ext) for p in only} if only is not None else set(texts)
    return {
        f"{c}.{e}": {
            "chars": len(texts[(c, e)]),
            "sha256": hashlib.sha256(texts[(c, e)].encode("utf-8", "replace")).hexdigest(),
        }
        for c, e in sorted(keys)
        if (c, e) in texts
    }


# --------------------------------------------------------------------------- shown on pages

HISTORY_ROWS = 50  # entries an object's page shows


@dataclass(frozen=True)
class History:
    items: list[dict[str, Any]]
    more: bool


def audit_history(request: Request, kind: str, oid: str) -> History:
    """The latest entries about an object (a subject's: also those on its deliveries and
    reminders), for the "Action history" section of its page (audit/_history.html)."""
    with engine_of(request).db.connect() as conn:
        if kind == "subject":
            rows = q.entries_of_subject(conn, oid, HISTORY_ROWS + 1)
        else:
            rows = q.entries_of_object(conn, kind, oid, HISTORY_ROWS + 1)
    return History(rows[:HISTORY_ROWS], len(rows) > HISTORY_ROWS)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1] or "value": value}


def _word(value: Any) -> str:
    if value is None:
        return "none"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)


def audit_changes(before: Any, after: Any) -> list[tuple[str, str, str]]:
    """What changed between a before and an after, as (key, old, new) words: nested keys
    joined by dots ("channels.sms: yes → no"), unchanged ones left out, at most 20."""
    if before is None and after is None:
        return []
    old, new = _flat(before or {}), _flat(after or {})
    keys = sorted(set(old) | set(new))
    out = [(k, _word(old.get(k)), _word(new.get(k))) for k in keys if old.get(k) != new.get(k)]
    return out[:20]


env.globals.update(audit_history=audit_history, audit_changes=audit_changes)
