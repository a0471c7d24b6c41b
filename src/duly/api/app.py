"""The HTTP application served by ``duly serve``: the /v1 API (API key required),
liveness and readiness, and the OpenAPI document at /openapi.json (docs at /docs and /redoc,
served from the package: duly.api.docs). :func:`duly.app.create_app` adds the web UI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duly import __version__
from duly.api import errors
from duly.api.audit import ApiAudit
from duly.api.docs import install_docs
from duly.api.edge import checked_input
from duly.api.errors import ApiError, error_response
from duly.api.keys import KeyStore
from duly.api.openapi import install_openapi
from duly.api.schemas import ErrorOut
from duly.asgi import CatchAll
from duly.store.liveness import ping

log = logging.getLogger("duly.api")

DEFAULT_MAX_BODY = 1_000_000


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length
    says so (a chunked body is counted as it streams)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    # an HTTPException passes FastAPI's body parsing untouched and is
                    # answered by the JSON error handler
                    raise HTTPException(413, f"the body is over {self.limit} bytes")
            return msg

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(413, "too_large", f"the body is over {self.limit} bytes", None)
        await resp(scope, receive, send)


def _cached(app: Any, header: str) -> Any:
    """The key info of a ``Bearer`` key :meth:`KeyStore.verify` vouched for moments ago
    (no database read: safe on the event loop), else None (then ask :func:`_check`)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return app.state.keys.cached(token.strip())


def _check(app: Any, header: str) -> tuple[Any, str | None]:
    """(key info, None) for a valid ``Bearer`` key, else (None, the reason)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "send an API key: Authorization: Bearer <key>"
    info = app.state.keys.verify(token.strip(), app.state.runtime.engine.clock.now())
    if info is None:
        return None, "the API key is not valid (unknown or revoked)"
    return info, None


class ApiKeyAuth:
    """Checks the API key of every /v1 request before anything else reads it (its body
    included: a malformed body without a key is a 401, not a 400)."""

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app, self.fastapi_app = app, fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        # a key seen valid moments ago is answered here; else a thread reads the table
        info, why = _cached(self.fastapi_app, header), None
        if info is None:
            info, why = await run_in_threadpool(_check, self.fastapi_app, header)
        if info is None:
            resp = error_response(
                401,
                "unauthorized",
                why or "unauthorized",
                None,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await resp(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = info
        await self.app(scope, receive, send)


# Declares the scheme in /openapi.json; require_key does the checking (and answers 401 in
# the API's error shape, which HTTPBearer's own errors are not).
_bearer = HTTPBearer(auto_error=False, description="an API key from `duly keys create`")


async def require_key(
    request: Request,
    _: Any = Depends(_bearer),  # noqa: B008
) -> None:
    """Every /v1 call needs ``Authorization: Bearer <api key>`` (checked by ApiKeyAuth; this
    dependency also documents it in the OpenAPI schema and guards apps built without it).
    async: a plain ``def`` dependency would cost every request a hop to the thread pool."""
    if getattr(request.state, "key", None) is not None:
        return
    header = request.headers.get("authorization", "")
    info, why = await run_in_threadpool(_check, request.app, header)
    if info is None:
        raise ApiError(401, "unauthorized", why or "unauthorized")
    request.state.key = info


def _bug() -> ASGIApp:
    return error_response(500, "internal", "internal error (logged); this is a bug")


def create_api(
    runtime: Any,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    inner: Sequence[tuple[Any, dict[str, Any]]] = (),
    fast_put: bool = True,
) -> FastAPI:
    """The API app. ``inner``: middleware (class, options) added innermost of ours, inside
    the body limit, the key check and the catch-all (duly.app adds the web UI's
    dispatch so). ``fast_put``: answer plainly valid single upserts without FastAPI's
    generic handling (duly.api.fastput; the same answers)."""
    from duly.api.v1 import router

    app = FastAPI(
        title="duly",
        version=__version__,
        docs_url=None,  # served from the package by install_docs, not from a CDN
        redoc_url=None,
        description="Reminders and notifications from rules in a file: the HTTP API. "
        "Every /v1 call needs `Authorization: Bearer <api key>` (`duly keys create`).",
    )
    app.state.runtime = runtime
    app.state.keys = KeyStore(runtime.db)
    errors.install(app)
    # the key first, then the input checks every operation shares (duly.api.edge)
    v1_checks = [Depends(require_key), Depends(checked_input)]
    app.include_router(router, dependencies=v1_checks)
    for extra in _extra_routers():
        # the same key check, so the same 401 (v1's router declares its own)
        app.include_router(
            extra,
            dependencies=v1_checks,
            responses={401: {"model": ErrorOut, "description": "no API key, or not a valid one"}},
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "the database or the dispatcher is not ready"}},
    )
    def readyz() -> JSONResponse:
        """Readiness: the database answers and the dispatcher thread is alive."""
        checks: dict[str, str] = {}
        try:
            with runtime.db.connect() as conn:
                ping(conn)
            checks["database"] = "ok"
        except Exception as exc:  # report, never 500
            checks["database"] = f"error: {type(exc).__name__}"
        alive = runtime.dispatcher_alive()
        checks["dispatcher"] = "ok" if alive else "stopped"
        ok = all(v == "ok" for v in checks.values())
        detail: dict[str, Any] = {}
        disp_ = getattr(runtime, "dispatcher", None)
        last = getattr(disp_, "last_error", None)
        if last is not None:  # the latest failure it recovered from, for operators
            detail["dispatcher_last_error"] = {"at": last[0].isoformat(), "stage": last[1]}
        if getattr(runtime, "restarts", 0):
            detail["dispatcher_restarts"] = runtime.restarts
        sched = getattr(runtime.engine, "schedule_errors", None)
        if sched:  # schedule rules that cannot be planned: the others go on
            detail["schedule_errors"] = {
                name: {"at": at.isoformat(), "error": err} for name, (at, err) in sched.items()
            }
        # channel breakers: reported, not a reason to take the process out of service
        # (deliveries wait while a provider is down; the API keeps accepting work)
        now = runtime.engine.clock.now()
        disp = getattr(runtime, "dispatcher", None)
        channels = {n: b.state(now) for n, b in sorted(getattr(disp, "breakers", {}).items())}
        return JSONResponse(
            {
                "status": "ok" if ok else "unavailable",
                "checks": checks,
                "channels": channels,
                **detail,
            },
            status_code=200 if ok else 503,
        )

    for extra in _public_routers():
        app.include_router(extra)
    install_docs(app)
    install_openapi(app)  # every error answer of every route listed, in one place
    for cls, options in inner:
        # innermost of ours: the web UI's paths leave here for the pages' own app (its
        # sessions, CSRF and HTML errors); the body limit and the catch-all below still
        # cover them
        app.add_middleware(cls, **options)
    if fast_put:  # innermost of ours: after the key check and inside the body limit
        from duly.api.fastput import FastPut

        app.add_middleware(FastPut, fastapi_app=app)
    app.add_middleware(ApiAudit, db=runtime.db)  # inside the key check: the key is known
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(ApiKeyAuth, fastapi_app=app)  # outermost: before the body is read
    # outside everything of ours, inside Starlette's own
    app.add_middleware(CatchAll, respond=_bug, logger=log)
    return app


def _extra_routers() -> list[Any]:
    """Routers added by other modules (templates, stats) when present."""
    out = []
    for mod in (
        "duly.api.templates",
        "duly.api.stats",
        "duly.api.ack",
        "duly.api.inbox",
        "duly.api.preferences",
        "duly.api.webhooks",
    ):
        try:
            m = __import__(mod, fromlist=["router"])
        except ModuleNotFoundError:
            continue
        out.append(m.router)
    return out


def _public_routers() -> list[Any]:
    """Routers without the API key: /metrics, and the pages acknowledge and preference links
    open (their signed token is the permission)."""
    out = []
    for mod, name in (
        ("duly.api.metrics", "router"),
        ("duly.api.ack", "public_router"),
        ("duly.api.preferences", "public_router"),
        ("duly.api.inbound", "router"),  # provider callbacks: their signature is the permission
        ("duly.api.inbound_email", "router"),  # SendGrid, Mailgun, SES (through SNS)
    ):
        try:
            m = __import__(mod, fromlist=[name])
        except ModuleNotFoundError:
            continue
        out.append(getattr(m, name))
    return out
