"""The webhook outbox: what an event holds, and the named operations on it.

Writers (:func:`emit`, :func:`emit_action`) run inside the caller's transaction, so an event
exists exactly when the change it reports was committed. The sender's queries
(:func:`claim_due`, :func:`record`, :func:`next_due`) and the operator's (:func:`list_events`,
:func:`get_event`, :func:`retry`, :func:`prune`) each state their guarantee. The same SQL runs
on SQLite and PostgreSQL. The statements themselves are in :mod:`duly.store.webhooks`.
"""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from duly.core.model import RenderLimits, RuleFile, WebhookTarget
from duly.delivery.rendering.webhook_body import BodyTemplateError, render_body
from duly.store import webhooks as store
from duly.store.db import Connection
from duly.store.webhooks import Attempt, Claimed

__all__ = [
    "ACTION_SECRET_ENV",
    "ACTION_TYPE",
    "Attempt",
    "BodyTemplateError",
    "Claimed",
    "action_secret_env",
    "attempts_of",
    "claim_due",
    "delivery_data",
    "emit",
    "emit_action",
    "get_event",
    "list_events",
    "next_due",
    "prune",
    "record",
    "redact_url",
    "render_body",
    "render_body_bounded",
    "retry",
    "subscribed",
]

# The type recorded for a rule's or step's `webhook:` action (its body is the rule's own).
ACTION_TYPE = "action"
# Signs `webhook:` actions whose URL has no `webhooks:` target on the same origin.
ACTION_SECRET_ENV = "DULY_WEBHOOK_SECRET"
_ERROR_MAX = store.ERROR_MAX


# --------------------------------------------------------------------------- writing


def subscribed(target: WebhookTarget, type: str) -> bool:
    """A target with no ``events`` gets every type; patterns like ``delivery.*`` match."""
    return not target.events or any(fnmatch.fnmatchcase(type, p) for p in target.events)


def emit(
    conn: Connection, rules: RuleFile, type: str, data: Mapping[str, Any], now: datetime
) -> int:
    """Queue event ``type`` for every ``webhooks:`` target subscribed to it, inside the
    caller's transaction. The body is the Standard Webhooks envelope ``{type, timestamp,
    data}``; targets of one event share its ``webhook-id``. Returns the number of rows (0,
    without touching the database, when nobody listens)."""
    targets = [t for t in rules.webhooks if subscribed(t, type)]
    if not targets:
        return 0
    payload = {"type": type, "timestamp": _iso(now), "data": _jsonable(data)}
    msg_id = _new_msg_id()
    store.add_events(
        conn, [_new_row(msg_id, type, payload, t.url, t.secret_env, now) for t in targets]
    )
    return len(targets)


def emit_action(
    conn: Connection,
    url: str,
    body: Mapping[str, Any],
    secret_env: str | None,
    now: datetime,
    *,
    context: Mapping[str, Any] | None = None,
    type: str = ACTION_TYPE,
    limits: RenderLimits | None = None,
) -> int:
    """Queue a rule's or step's ``webhook: {url, body}`` action inside the caller's
    transaction; returns the event's id. The body is sent as it is (not in an envelope),
    its string values rendered as templates with ``context`` (``subject``, ``event``,
    ``rule``; ``now`` is added) in a render process within ``limits`` (the rule file's
    ``render:``; :func:`render_body_bounded`). A template that fails leaves the event
    ``failed`` at once, with the error naming the field — the dispatcher's transaction is
    never broken by it, nor held longer than ``limits.timeout``."""
    ctx = {"subject": None, "event": None, "rule": None, **(context or {}), "now": _iso(now)}
    row = _new_row(_new_msg_id(), type, {}, url, secret_env, now)
    try:
        row["payload"] = _jsonable(render_body_bounded(body, ctx, limits))
    except BodyTemplateError as exc:
        row.update(payload=_jsonable(body), state="failed", last_error=str(exc)[:_ERROR_MAX])
    return store.add_action_event(conn, row)


def action_secret_env(rules: RuleFile, url: str) -> str:
    """The variable whose secret signs a ``webhook:`` action to ``url``: that of a
    ``webhooks:`` target on the same origin (scheme, host and port), else
    ``DULY_WEBHOOK_SECRET``."""
    origin = _origin(url)
    for t in rules.webhooks:
        if t.secret_env and _origin(t.url) == origin:
            return t.secret_env
    return ACTION_SECRET_ENV


def delivery_data(
    delivery_id: int, identity: Any, outcome: Mapping[str, Any], attempts: int | None = None
) -> dict[str, Any]:
    """The ``data`` of ``delivery.sent`` / ``delivery.failed``: a delivery's identity
    (``duly.core.planner.Identity``) and its outcome (the dispatcher's row update; ``attempts``
    when the update does not say)."""
    return {
        "delivery": delivery_id,
        "rule": identity.rule,
        "step": identity.step,
        "occurrence": identity.occurrence,
        "subject": identity.subject,
        "recipient": identity.recipient,
        "channel": identity.channel,
        "outcome": outcome.get("state"),
        "reason": outcome.get("reason"),
        "attempts": outcome.get("attempts", attempts),
        "error": outcome.get("last_error"),
        "sent_at": _iso(outcome["sent_at"]) if outcome.get("sent_at") else None,
    }


def _new_row(
    msg_id: str, type: str, payload: Any, url: str, secret_env: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "msg_id": msg_id,
        "type": type,
        "payload": payload,
        "url": url,
        "secret_env": secret_env,
        "state": "pending",
        "attempts": 0,
        "next_at": now,
        "created_at": now,
    }


def _new_msg_id() -> str:
    # no "." (it delimits the signed content) and unique across databases
    return "msg_" + uuid.uuid4().hex


# --------------------------------------------------------------------------- body templates


def _has_templates(body: Any) -> bool:
    if isinstance(body, str):
        return "{{" in body or "{%" in body
    if isinstance(body, Mapping):
        return any(_has_templates(v) for v in body.values())
    if isinstance(body, list | tuple):
        return any(_has_templates(v) for v in body)
    return False


def render_body_bounded(
    body: Any, context: Mapping[str, Any], limits: RenderLimits | None = None
) -> Any:
    """:func:`render_body` in a render process (:mod:`duly.delivery.rendering.pool`), killed after
    ``limits.timeout`` or over ``limits.max_memory``; a body without templates is returned
    as it is, without one. Raises :class:`BodyTemplateError` naming the limit or the field."""
    if not _has_templates(body):
        return body
    from duly.delivery.rendering import RenderError
    from duly.delivery.rendering.pool import shared_pool

    limits = limits or RenderLimits()
    request = {
        "body": body,
        "context": dict(context),
        "limits": {
            "timeout": limits.timeout,
            "max_output": limits.max_output,
            "max_memory": limits.max_memory,
            "workers": limits.workers,
        },
    }
    try:
        return shared_pool().run("webhook_body", request, None, "body")
    except RenderError as exc:
        raise BodyTemplateError(exc.reason) from None
    except Exception as exc:  # never the dispatcher's transaction: the event fails instead
        raise BodyTemplateError(f"body: cannot render: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- the sender's


def claim_due(
    conn: Connection, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[Claimed]:
    """Take up to ``limit`` pending events due by ``now``, oldest first, for ``lease``
    (:func:`duly.store.webhooks.claim_due_events`: a conditional UPDATE, so two senders
    never hold one event)."""
    return store.claim_due_events(conn, now, owner, lease, limit)


def record(conn: Connection, event: Claimed, result: Attempt, owner: str, now: datetime) -> bool:
    """Append the attempt and move the event on (sent, failed, or pending until
    ``result.next_at``). The attempt is always kept; the event is updated only while
    ``owner`` still holds it — False means its lease ran out and another sender took it."""
    return store.record_attempt(conn, event, result, owner, now)


def next_due(conn: Connection) -> datetime | None:
    """When the earliest pending event is due (or its lease runs out); None if none."""
    return store.next_pending_due(conn)


# --------------------------------------------------------------------------- the operator's


def list_events(
    conn: Connection,
    *,
    state: str | None = None,
    type: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Events newest first (by id), optionally of one state or type, with ids below
    ``before_id`` (a cursor). URLs are redacted (a query string may carry a token)."""
    rows = store.events_page(conn, state=state, type=type, before_id=before_id, limit=limit)
    return [_event_out(r) for r in rows]


def get_event(conn: Connection, event_id: int) -> dict[str, Any] | None:
    """One event (URL redacted) with its attempts, or None."""
    row = store.event_by_id(conn, event_id)
    if row is None:
        return None
    out = _event_out(row)
    out["attempt_log"] = attempts_of(conn, [event_id]).get(event_id, [])
    return out


def attempts_of(conn: Connection, event_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The attempts of some events, oldest first."""
    return store.attempts_of_events(conn, event_ids)


def retry(conn: Connection, event_id: int, now: datetime) -> bool:
    """Make a failed event pending and due now (its attempts so far are kept and it gets a
    full set of retries again). False if there is no failed event with that id."""
    return store.retry_failed_event(conn, event_id, now)


def prune(conn: Connection, before: datetime) -> int:
    """Delete sent and failed events created before ``before`` (their attempts go with
    them). Pending ones are kept whatever their age. Returns how many were deleted."""
    return store.delete_finished_events_before(conn, before)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``, with any user:password and query string hidden."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username or parts.password:
        netloc = "***@" + netloc
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?***" if parts.query else "")


def _event_out(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "msg_id": r["msg_id"],
        "type": r["type"],
        "url": redact_url(r["url"]),
        "state": r["state"],
        "attempts": r["attempts"],
        "next_at": r["next_at"] if r["state"] == "pending" else None,
        "last_status": r["last_status"],
        "last_error": r["last_error"],
        "created_at": r["created_at"],
        "sent_at": r["sent_at"],
        "payload": r["payload"],
    }


# --------------------------------------------------------------------------- helpers


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return (p.scheme, (p.hostname or "").lower(), port)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return _iso(o) if o.tzinfo is not None else o.isoformat()
    if isinstance(o, date):
        return o.isoformat()
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _jsonable(data: Any) -> Any:
    """Plain JSON data: instants as ISO 8601 UTC (``…Z``), sets and tuples as lists."""
    return json.loads(json.dumps(data, default=_default))
