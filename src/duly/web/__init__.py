"""The web UI: server-rendered pages in the same process as the API.

``build_ui(runtime)`` builds a second ASGI app for the pages; ``UiDispatch``, a middleware
of the API app (put there by duly.app.create_app), sends it the requests it serves: paths of the UI (``/``, ``/login``, ``/subjects`` …,
``/static/``) go to it, everything else (``/v1``, health, metrics, the recipients' link pages
``/a/…`` and ``/u/…``) to the API unchanged — so the API keeps its JSON errors and pays
nothing for sessions.

``ClientAddress`` (wrapped around both by ``duly serve``) decides the client address the
sign-in limits may count: the one a trusted proxy forwards, else the peer's own.

The UI app's middleware, outermost first:

- security headers (a strict Content-Security-Policy: no inline script or style, frames
  only from this site, no framing of ours) and a ``Server-Timing`` header;
- Starlette's ``SessionMiddleware``: a signed cookie (HttpOnly, SameSite=Lax, Secure
  with ``duly serve --cookie-secure``) holding the token of a session row (and flash
  messages); the row is looked up on every request (duly.web.core.session_user), so a
  session ended on the server ends for every copy of its cookie;
- ``duly.web.csrf.CsrfMiddleware``: a signed double-submit token checked on every POST, read
  from the form field ``csrftoken`` (forms work without JavaScript) or the
  ``x-csrftoken`` header (the few fetches our script makes).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duly.asgi import CatchAll
from duly.core.errors import DulyError
from duly.web import core
from duly.web.csrf import CsrfMiddleware
from duly.web.users import SessionStore, UserStore

__all__ = [
    "PAGES",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE",
    "ClientAddress",
    "UiDispatch",
    "build_ui",
    "is_ui_path",
]

log = logging.getLogger("duly.web")

# Page modules, each with a ``router``; a missing one is skipped.
PAGES = (
    "auth",
    "dashboard",
    "upcoming",
    "subjects",
    "reminders",
    "deliveries",
    "templates",
    "rules",
    "recipients",
    "outbox",
    "search",
    "audit",
    "users_admin",
)

# First path segments served by the UI (plus "/" itself).
UI_SEGMENTS = frozenset(
    {
        "login",
        "logout",
        "account",
        "upcoming",
        "subjects",
        "reminders",
        "deliveries",
        "templates",
        "rules",
        "recipients",
        "outbox",
        "search",
        "audit",
        "users",
        "static",
        "favicon.ico",
    }
)

SESSION_COOKIE = "duly_session"
SESSION_MAX_AGE = core.SESSION_MAX_AGE  # sliding: renewed by every page the user opens

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)


def is_ui_path(path: str) -> bool:
    if path == "/":
        return True
    first = path.lstrip("/").split("/", 1)[0]
    return first in UI_SEGMENTS


class UiDispatch:
    """UI paths to the UI app, everything else on to the API."""

    def __init__(self, app: ASGIApp, ui: ASGIApp) -> None:
        self.api, self.ui = app, ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_ui_path(scope.get("path", "")):
            await self.ui(scope, receive, send)
        else:
            await self.api(scope, receive, send)


class ClientAddress:
    """The client's address, and whether the sign-in limits may count attempts by it.

    uvicorn's ``ProxyHeadersMiddleware`` makes the address a trusted proxy forwards (the
    first untrusted one from the right of ``X-Forwarded-For``) the request's client, as
    ``duly serve --forwarded-allow-ips`` configures. Then ``scope["duly.client_trusted"]``
    says whether that address is one client's own:

    - from a peer that is not a trusted proxy: its own address (yes, even when it sends
      ``X-Forwarded-For``: a forged header must not escape the address limit; a proxy
      missing from the list is warned about once);
    - from a trusted proxy with ``X-Forwarded-For``: the forwarded address (yes);
    - from a trusted proxy without it: the proxy's own address, shared by every client
      behind it (no: counting by it would let anyone lock everyone out).
    """

    def __init__(self, app: ASGIApp, trusted: str | list[str] = "127.0.0.1,::1") -> None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        self.app = app
        self.proxy = ProxyHeadersMiddleware(self._after, trusted_hosts=trusted)  # type: ignore[arg-type]
        self.trusted = self.proxy.trusted_hosts
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["duly.peer"] = (scope.get("client") or ("",))[0]
        await self.proxy(scope, receive, send)  # type: ignore[arg-type]

    async def _after(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.pop("duly.peer", "")
            host = (scope.get("client") or ("",))[0]
            forwarded = any(k == b"x-forwarded-for" for k, _ in scope.get("headers", ()))
            if peer not in self.trusted:
                scope["duly.client_trusted"] = True
                if forwarded and not self._warned:
                    self._warned = True
                    log.warning(
                        "requests from %s carry X-Forwarded-For, but %s is not a trusted proxy "
                        "(duly serve --forwarded-allow-ips): the sign-in limits count every "
                        "client behind it as one address",
                        peer,
                        peer,
                    )
            else:
                scope["duly.client_trusted"] = bool(
                    forwarded and host and (self.trusted.always_trust or host not in self.trusted)
                )
        await self.app(scope, receive, send)


class Headers:
    """Security headers on every UI answer (a page may set its own CSP, e.g. the frame
    that shows an email's HTML), and Server-Timing with the time the server took."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        static = scope.get("path", "").startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                    # pages hold private data: never kept; our static files change only
                    # with an upgrade (and carry an ETag)
                    (b"cache-control", b"max-age=3600" if static else b"no-store"),
                ]
                for k, v in extra:
                    if k not in names:
                        headers.append((k, v))
                ms = (time.perf_counter() - start) * 1000
                headers.append((b"server-timing", f"app;dur={ms:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


def _derive(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


async def _csrf_failed(scope: Scope, send: Send, _reason: str) -> None:
    body = core.env.get_template("error.html").render(
        title="This form has expired",
        message="The page was open too long, or cookies are blocked. Go back, reload the "
        "page and try again.",
        user=None,
        path=scope.get("path", ""),
        flashes=[],
        csrf_token="",
    )
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-security-policy", CSP.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def build_ui(runtime: Any, *, secret: str | None = None, cookie_secure: bool = False) -> ASGIApp:
    """The UI's ASGI app (pages, static files, sign-in) with its middleware. With
    ``cookie_secure`` the session and CSRF cookies are sent over HTTPS only (set it when a
    TLS proxy fronts duly: ``duly serve --cookie-secure``)."""
    from duly.delivery.ack import load_secret

    ui = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(core.checked_input)],  # no NUL in any parameter or form field
    )
    ui.state.runtime = runtime
    ui.state.users = UserStore(runtime.db)
    ui.state.sessions = SessionStore(runtime.db)
    for name in PAGES:
        try:
            mod = importlib.import_module(f"duly.web.views.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"duly.web.views.{name}":
                raise
            continue
        ui.include_router(mod.router)
    ui.mount("/static", StaticFiles(directory=str(core.STATIC_DIR)), name="static")
    _install_errors(ui)
    ui.add_middleware(CatchAll, respond=_bug_page, logger=log)

    secret = secret or load_secret(runtime.db)
    secure = cookie_secure
    ui.state.cookie_secure = secure
    ui.state.device_secret = _derive(secret, "duly.web.device")
    app: ASGIApp = CsrfMiddleware(
        ui,
        signing_secret=_derive(secret, "duly.web.csrf"),
        cookie_name="duly_csrf",
        always_protect={"/login"},
        cookie_secure=secure,
        send_failed=_csrf_failed,
    )
    app = SessionMiddleware(
        app,
        secret_key=_derive(secret, "duly.web.session"),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=secure,
    )
    return Headers(app)


def _page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return core.render(request, "error.html", {"title": title, "message": message}, status)


def _install_errors(ui: FastAPI) -> None:
    @ui.exception_handler(core.LoginRequired)
    async def _login(request: Request, _: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return core.redirect(f"/login?next={quote(target, safe='')}")

    @ui.exception_handler(core.BadInput)
    async def _bad_input(request: Request, exc: Exception) -> Response:
        return _page(request, 400, "Bad request", str(exc))

    @ui.exception_handler(core.Forbidden)
    async def _forbidden(request: Request, exc: Exception) -> Response:
        return _page(request, 403, "Not allowed", str(exc))

    @ui.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not found", 405: "Not allowed", 413: "Too large"}
        detail = str(exc.detail) if exc.status_code != 404 else "There is no such page or record."
        return _page(request, exc.status_code, titles.get(exc.status_code, "Error"), detail)

    @ui.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return _page(request, 400, "Bad request", f"{where or 'request'}: {first.get('msg')}")

    @ui.exception_handler(DulyError)
    async def _duly(request: Request, exc: DulyError) -> Response:
        status = {"not_found": 404, "conflict": 409}.get(exc.code, 400)
        return _page(request, status, "Cannot do that", str(exc))


def _bug_page() -> Response:
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Error · duly</title>"
        "<h1>Something went wrong</h1><p>The error was logged; this is a bug in duly. "
        '<a href="/">Back to the dashboard</a></p>',
        status_code=500,
    )
