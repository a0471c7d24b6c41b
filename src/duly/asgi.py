"""Pieces the API (:mod:`duly.api`) and the web UI (:mod:`duly.web`) both use, kept apart
from either so that neither surface imports the other: the catch-all for bugs, and the
template store an app's requests edit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from duly.delivery.templates import TemplateStore

__all__ = ["CatchAll", "template_store_of"]


class CatchAll:
    """A bug is answered 500 here, not re-raised: past Starlette's ServerErrorMiddleware an
    exception reaches uvicorn, which drops the kept-alive connection without
    ``Connection: close``, so the client's next request on it fails with a reset (and the
    traceback is logged twice). ``respond`` makes the answer (the API: its JSON error shape;
    the UI: a page); the traceback goes to ``logger``."""

    def __init__(
        self, app: ASGIApp, respond: Callable[[], ASGIApp], logger: logging.Logger
    ) -> None:
        self.app, self.respond, self.log = app, respond, logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            if started:  # too late for an answer: let the server close the connection
                raise
            self.log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            await self.respond()(scope, receive, send)


def template_store_of(request: Request) -> TemplateStore:
    """The runtime's TemplateStore (the one its Renderer reads), or one of the app's own."""
    from duly.delivery.templates import TemplateStore

    rt = request.app.state.runtime
    ts = getattr(rt, "templates", None)
    if ts is None:
        ts = getattr(request.app.state, "templates", None)
        if ts is None:
            ts = TemplateStore(rt.db, rt.rules.templates_dir, rules=rt.rules)
            request.app.state.templates = ts
    return ts  # type: ignore[no-any-return]
