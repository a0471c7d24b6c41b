"""The audit trail's entries for what API keys do (duly.store.audit): the operator actions
of the /v1 API — send now, cancel, retry; one-off reminders made, changed, deleted; a
recipient's preferences replaced; a suppression cleared; a template saved or restored —
recorded with the key's name as the actor ("api key billing").

An app's own data (subjects, recipients and events it upserts, batches) is not an action
of a person and is not recorded; an app that holds a subject through ``PUT /v1/subjects``
changes its data like any other upsert.

``ApiAudit`` sits inside ``ApiKeyAuth`` (the key is known) and records an action once its
answer is a success (2xx), in a transaction of its own right after it: the API's handlers
decide and commit inside the engine, and a refused call (404, 409, 422) leaves no entry.
The id of a new reminder is read from the answer's body.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duly.store import audit

__all__ = ["ApiAudit", "ROUTES"]

# (method, path pattern, action, object kind, summary); the pattern's group is the object id
ROUTES: tuple[tuple[str, re.Pattern[str], str, str, str], ...] = tuple(
    (m, re.compile(p), a, k, s)
    for m, p, a, k, s in (
        ("POST", r"/v1/deliveries/(\d+)/send-now", "send-now", "delivery", "Send now: made due now"),
        ("POST", r"/v1/deliveries/(\d+)/cancel", "cancel", "delivery", "Cancelled by hand"),
        ("POST", r"/v1/deliveries/(\d+)/retry", "retry", "delivery", "Retry: pending again, due now"),
        ("POST", r"/v1/reminders()", "create", "reminder", "Reminder planned"),
        ("PATCH", r"/v1/reminders/(\d+)", "edit", "reminder", "Reminder changed"),
        ("DELETE", r"/v1/reminders/(\d+)", "delete", "reminder", "Reminder deleted"),
        ("PUT", r"/v1/recipients/([^/]+)/preferences", "consent", "recipient", "Consent replaced"),
        ("DELETE", r"/v1/suppressions/(.+)", "unsuppress", "address", "Suppression cleared"),
        ("PUT", r"/v1/templates/([^/]+)", "save", "template", "Template saved"),
        ("POST", r"/v1/templates/([^/]+)/restore", "restore", "template", "Template restored"),
    )
)  # fmt: skip

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_BODY = 65_536  # bytes of an answer read for a new reminder's id


def _match(method: str, path: str) -> tuple[str, str, str, str] | None:
    for m, pattern, action, kind, summary in ROUTES:
        if m == method:
            found = pattern.fullmatch(path)
            if found:
                return action, kind, found.group(1), summary
    return None


class ApiAudit:
    """Record the operator actions API keys take (see the module's docstring)."""

    def __init__(self, app: ASGIApp, db: Any) -> None:
        self.app, self.db = app, db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            _match(scope.get("method", ""), scope.get("path", ""))
            if scope["type"] == "http"
            else None
        )
        key = (scope.get("state") or {}).get("key")
        if found is None or key is None:
            await self.app(scope, receive, send)
            return
        action, kind, oid, summary = found
        status = 0
        body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not oid and len(body) < _BODY:
                body.extend(message.get("body", b"")[: _BODY - len(body)])
            await send(message)

        await self.app(scope, receive, watch)
        if not 200 <= status < 300:
            return
        if not oid:  # a new reminder: its id is in the answer
            try:
                oid = str(json.loads(bytes(body)).get("id", ""))
            except (ValueError, AttributeError):
                oid = ""
        given = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), ""
        )
        entry = audit.Entry(
            f"api key {key.name}",
            action,
            kind,
            oid or "?",
            summary,
            request_id=given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8),
        )
        await run_in_threadpool(audit.record, self.db, entry, datetime.now(UTC))
