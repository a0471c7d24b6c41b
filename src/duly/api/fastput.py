"""A lean route for the call apps make most: ``PUT /v1/subjects/{kind}/{key}``.

FastAPI's generic request handling (routing over every route, solving the dependencies,
validating the answer again) costs about as much CPU as the upsert itself. :class:`FastPut`
sits inside the API's own middleware (the key check, the body limit and the catch-all run
first, as for every /v1 call) and answers this one operation itself **only when the request
is plainly valid**: a JSON body that the operation's own schema (``SubjectIn``) accepts,
path and body text that :mod:`duly.api.edge` would pass, no query string. It then does what
:func:`duly.api.v1.subjects.put_subject` does, with the same code for the answer, and
serialises it as FastAPI does (``Response`` with the model's JSON). Anything else — a
bad body, odd headers, a ``root_path`` — is handed to FastAPI unchanged (the body it read is
replayed), so every refusal is FastAPI's own answer. An exception raised while upserting
is answered by the app's exception handler for it, as FastAPI's exception middleware would.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duly.api import schemas as S
from duly.api.edge import MAX_BODY_DEPTH
from duly.api.v1.subjects import subject_answer
from duly.core.validation import json_problem, text_problem
from duly.engine.service import SubjectInput

__all__ = ["FastPut"]

# Starlette's pattern for "/v1/subjects/{kind}/{key:path}"
_PATH = re.compile(r"^/v1/subjects/(?P<kind>[^/]+)/(?P<key>.*)$")


def _json_content_type(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


class FastPut:
    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app, self.fastapi_app = app, fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "PUT"
            or scope.get("root_path")
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        m = _PATH.match(scope.get("path", ""))
        if m is None or not _json_content_type(scope.get("headers", [])):
            await self.app(scope, receive, send)
            return
        kind, key = m["kind"], m["key"]
        try:
            body = await _read_body(receive)
        except Exception as exc:  # the body limit's 413, a disconnect
            await self._answer_error(scope, receive, send, exc)
            return
        item = _plainly_valid(kind, key, body)
        if item is None:
            await self.app(scope, _replay(body, receive), send)
            return
        eng = self.fastapi_app.state.runtime.engine
        try:
            res, rows = await run_in_threadpool(eng.upsert_subject_for_answer, item)
            out = subject_answer(kind, key, res, rows)
        except Exception as exc:
            await self._answer_error(scope, receive, send, exc)
            return
        resp = Response(content=out.model_dump_json(by_alias=True), media_type="application/json")
        await resp(scope, receive, send)

    async def _answer_error(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception
    ) -> None:
        """What FastAPI's exception middleware would answer: the handler registered for the
        exception's class (or a base), else the exception goes on up (the catch-all)."""
        handlers = self.fastapi_app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            handler = handlers.get(cls)
            if handler is not None:
                resp = await handler(Request(scope, receive), exc)
                await resp(scope, receive, send)
                return
        raise exc


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ConnectionError("the client went away")
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def _plainly_valid(kind: str, key: str, body: bytes) -> SubjectInput | None:
    """The upsert this request asks for, when FastAPI and duly.api.edge would let it
    through; None otherwise (FastAPI then answers, refusals included)."""
    if not (0 < len(kind) <= 100 and 0 < len(key) <= 200):
        return None
    if text_problem(kind) or text_problem(key):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if json_problem(data, max_depth=MAX_BODY_DEPTH) is not None:
        return None
    try:
        parsed = S.SubjectIn.model_validate(data)
    except ValidationError:
        return None
    return SubjectInput(kind, key, parsed.attributes, parsed.recipients, parsed.hold_until)
