"""What every page of the web UI shares: the Jinja2 environment, sign-in and roles, flash
messages, times in the viewer's timezone, and small helpers for forms and paging.

A page module (``duly.web.views.<name>``) defines ``router = APIRouter()`` and handlers like::

    @router.get("/things")
    def things(request: Request, user: CurrentUser) -> HTMLResponse:
        return render(request, "things/list.html", {"items": ...})

    @router.post("/things/{tid}/poke")
    async def poke(tid: int, request: Request, user: AdminUser) -> Response:
        form = await request.form()   # the CSRF token was checked before this runs
        ...
        flash(request, "Poked.")
        return redirect(f"/things/{tid}")

``CurrentUser`` sends anyone not signed in to /login (and back afterwards); ``OperatorUser``
also answers 403 to a viewer, ``AdminUser`` to a viewer and an operator. Templates get ``user``, ``csrf_token``, ``now``, ``tz`` (the
viewer's zone) and the helpers below as globals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from duly.core.model import LATE_AFTER, held_until_cleared
from duly.core.validation import instant_problem, readable, text_problem
from duly.engine.service import Engine
from duly.web import words
from duly.web.users import SessionStore, User, UserStore

__all__ = [
    "AdminUser",
    "CurrentUser",
    "EngineDep",
    "Forbidden",
    "LoginRequired",
    "OperatorUser",
    "TEMPLATES_DIR",
    "env",
    "flash",
    "parse_local_datetime",
    "redirect",
    "render",
    "viewer_tz",
]

# what signed-in people did through the UI, one line each
audit = logging.getLogger("duly.audit")

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

# Session keys (the cookie is signed; the session itself is a row: SessionStore)
SESSION_ID = "sid"  # the token naming the session's row
SESSION_FLASH = "flash"
TZ_COOKIE = "duly_tz"
SESSION_MAX_AGE = 12 * 3600  # idle seconds before a session ends (cookie and row)


class LoginRequired(Exception):
    """Not signed in: answered with a redirect to /login."""


class Forbidden(Exception):
    """Signed in, but the role does not allow it: answered 403 with a page."""

    def __init__(self, message: str = "Only an admin can do this.") -> None:
        super().__init__(message)


# --------------------------------------------------------------------------- who is asking


def users_of(request: Request) -> UserStore:
    return request.app.state.users  # type: ignore[no-any-return]


def sessions_of(request: Request) -> SessionStore:
    return request.app.state.sessions  # type: ignore[no-any-return]


def parse_day(value: str) -> date:
    """A date typed into a filter (``YYYY-MM-DD``), in the years duly supports
    (duly.core.validation; the day after the last is still a date). Raises ValueError with
    the words a form shows."""
    try:
        d = date.fromisoformat(value)
    except ValueError:
        raise ValueError("enter a date as YYYY-MM-DD") from None
    if not 1900 <= d.year <= 9998:
        raise ValueError("enter a date in the years 1900 to 9998")
    return d


def wall_now() -> datetime:
    """The real time, for sessions and sign-in limits (never a simulated clock)."""
    return datetime.now(UTC)


def runtime_of(request: Request) -> Any:
    return request.app.state.runtime


def engine_of(request: Request) -> Engine:
    return request.app.state.runtime.engine  # type: ignore[no-any-return]


def session_user(request: Request) -> User | None:
    """The signed-in user, or None: the cookie's session is looked up on every request, so
    one ended server-side (sign-out, password or role change, user deleted, idle too
    long) is gone at once, copied cookies included; its cookie is then emptied."""
    cached = request.scope.get("duly.user")
    if cached is not None:
        return cached if isinstance(cached, User) else None
    token = request.session.get(SESSION_ID)
    user = None
    if isinstance(token, str):
        user = sessions_of(request).user(token, wall_now(), SESSION_MAX_AGE)
    if user is None and token is not None:
        request.session.clear()
    request.scope["duly.user"] = user if user is not None else False
    return user


def current_user(request: Request) -> User:
    user = session_user(request)
    if user is None:
        raise LoginRequired()
    return user


def admin_user(request: Request) -> User:
    user = current_user(request)
    if not user.is_admin:
        raise Forbidden()
    return user


def operator_user(request: Request) -> User:
    user = current_user(request)
    if not user.can_operate:
        raise Forbidden("Only an operator or an admin can do this.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
OperatorUser = Annotated[User, Depends(operator_user)]
EngineDep = Annotated[Engine, Depends(engine_of)]


def sign_in(request: Request, user: User) -> None:
    """Start a new session for ``user`` (a new token: no fixation of one made before),
    ending the one this browser had."""
    sign_out(request)
    request.session[SESSION_ID] = sessions_of(request).start(user.id, wall_now(), SESSION_MAX_AGE)
    request.scope["duly.user"] = user


def sign_out(request: Request) -> None:
    """End this browser's session: its row goes, so a copy of the cookie stops working."""
    token = request.session.get(SESSION_ID)
    if isinstance(token, str):
        sessions_of(request).end(token)
    request.session.clear()
    request.scope.pop("duly.user", None)


# --------------------------------------------------------------------------- responses


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """A message shown once on the next page (kind: ok, error, info). Every action of the
    UI ends with one, saying what it did; each is also logged to ``duly.audit`` with who
    did it and, for a recorded action, the object ("ops: delivery 12: Delivery 12 was
    cancelled.")."""
    user = session_user(request)
    # the object the action was on, when it was recorded (duly.web.auditing.audited)
    obj = request.scope.get("duly.audit_object")
    audit.info(
        "%s: %s%s%s",
        user.username if user else "-",
        "" if kind == "ok" else "[not done] " if kind == "error" else "",
        f"{obj}: " if obj else "",
        message,
    )
    msgs = list(request.session.get(SESSION_FLASH, []))
    msgs.append([kind, message])
    request.session[SESSION_FLASH] = msgs[-5:]


def redirect(url: str) -> RedirectResponse:
    """303 See Other: after a form POST the browser GETs ``url``."""
    return RedirectResponse(url, status_code=303)


def safe_next(url: str | None) -> str:
    """A place to return to after signing in: only a path on this site."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    if len(url) > 2000 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "/"  # control characters (a NUL, a line break) make no place to go back to
    return url


def viewer_tz(request: Request) -> ZoneInfo:
    """The viewer's zone: their saved one, else the browser's (a cookie set by duly.js),
    else the rule file's."""
    user = session_user(request)
    for name in (
        user.timezone if user else None,
        unquote(request.cookies.get(TZ_COOKIE) or "") or None,  # duly.js encodes it
        getattr(runtime_of(request).rules, "timezone", None),
    ):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    user = session_user(request)
    token_fn = request.scope.get("csrftoken")
    ctx: dict[str, Any] = {
        "request": request,
        "user": user,
        "csrf_token": token_fn() if token_fn else "",
        "now": engine_of(request).clock.now(),
        "tz": viewer_tz(request),
        "path": request.url.path,
        "flashes": request.session.pop(SESSION_FLASH, []) if "session" in request.scope else [],
    }
    ctx.update(context or {})
    html = env.get_template(template).render(ctx)
    # readable(): text older versions stored (a lone surrogate) is shown as U+FFFD, not a 500
    return HTMLResponse(readable(html), status_code=status)


# --------------------------------------------------------------------------- links


def _quote(text: str) -> str:
    """A path segment; text an older version stored with a lone surrogate still makes a link
    (to U+FFFD, which finds nothing) instead of a 500."""
    return quote(readable(text), safe="")


def recipient_path(rid: str) -> str:
    """The page of recipient ``rid`` (quoted; a stored lone surrogate still makes a link)."""
    return f"/recipients/{_quote(rid)}"


def subject_path(kind: str, key: str) -> str:
    """The page of subject KIND/KEY (both quoted: keys may hold slashes and anything)."""
    return f"/subjects/{_quote(kind)}/{_quote(key)}"


def subject_url(ref: str | None) -> str | None:
    """The page of a ``KIND/KEY`` reference as stored on deliveries and reminders; None
    when there is no subject ("")."""
    kind, _, key = (ref or "").partition("/")
    return subject_path(kind, key) if kind and key else None


# --------------------------------------------------------------------------- message frames

# A message's HTML is shown in <iframe sandbox src=…> from a URL of ours answered with this
# policy: no script, nothing fetched but inline styles and images, a sandbox of its own.
FRAME_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; sandbox"


def frame_response(html: str) -> HTMLResponse:
    """An email's HTML for a sandboxed frame of our own pages."""
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": FRAME_CSP,
            # our own page frames it; the page's CSP allows frame-src 'self'
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


class FrameStore:
    """Rendered previews kept for a few minutes so a sandboxed frame can load them by a
    random token (the editor's live preview; a frame's srcdoc would inherit the page's
    policy, which blocks the inline styles emails are made of). Only the user who asked
    may load one; the oldest are dropped past ``size``."""

    def __init__(self, size: int = 500, ttl: float = 600.0) -> None:
        import threading
        from collections import OrderedDict

        self.size, self.ttl = size, ttl
        self._items: OrderedDict[str, tuple[float, int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, user_id: int, html: str) -> str:
        import secrets
        import time

        token = secrets.token_urlsafe(16)
        with self._lock:
            self._items[token] = (time.monotonic() + self.ttl, user_id, html)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return token

    def get(self, user_id: int, token: str) -> str | None:
        import time

        with self._lock:
            item = self._items.get(token)
        if item is None or item[1] != user_id or item[0] < time.monotonic():
            return None
        return item[2]


# --------------------------------------------------------------------------- input


class BadInput(Exception):
    """A parameter or form field no page accepts: answered 400 with a page naming it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"The field “{field}” {problem}. Remove it and try again.")
        self.field = field


async def checked_input(request: Request) -> None:
    """Every page's path and query parameters and form fields are text without NUL or lone
    surrogates (duly.core.validation): a dependency of the whole UI app, run before any view
    parses a value, so no search box or form reaches the database with one. The sign-in
    page is the exception: it answers such a name or password as a failed sign-in, and
    ignores such a ``next`` (duly.web.views.auth), as it must not tell what it refuses."""
    if request.url.path == "/login":
        return
    fields: list[tuple[str, Any]] = [*request.path_params.items()]
    fields += request.query_params.multi_items()
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and ctype.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        # parsed once: Starlette keeps the form for the view's own request.form()
        fields += (await request.form()).multi_items()
    for name, value in fields:
        problem = text_problem(name) or (text_problem(value) if isinstance(value, str) else None)
        if problem:
            raise BadInput(name, problem)


# --------------------------------------------------------------------------- time


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# What a page shows for the end of an indefinite hold (duly.core.model.HOLD_INDEFINITE)
HELD_UNTIL_CLEARED = "until the hold is cleared"


def fmt_time(t: datetime | None, tz: ZoneInfo | str | None = None, *, seconds: bool = False) -> str:
    """``Thu 26 Nov 2026, 14:05 GMT`` in ``tz``."""
    t = _aware(t)
    if t is None:
        return "—"
    if held_until_cleared(t):  # spec: Hold: the end of an indefinite hold is no date
        return HELD_UNTIL_CLEARED
    zone = _zone(tz)
    local = t.astimezone(zone)
    fmt = "%a %d %b %Y, %H:%M:%S" if seconds else "%a %d %b %Y, %H:%M"
    return f"{local.strftime(fmt)} {local.tzname()}"


def _zone(tz: ZoneInfo | str | None) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    try:
        return ZoneInfo(tz) if tz else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def relative(t: datetime | None, now: datetime) -> str:
    """``in 3 h``, ``5 min ago``, ``now``."""
    t = _aware(t)
    if t is None or held_until_cleared(t):
        return ""
    secs = (t - now).total_seconds()
    a = abs(secs)
    if a < 45:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if a >= size:
            n = math.floor(a / size + 0.5) if unit != "d" else math.floor(a / size)
            text = f"{n} {unit}"
            break
    else:  # 45 to 59 seconds
        text = "1 min"
    return f"in {text}" if secs > 0 else f"{text} ago"


def when(ctx_tz: ZoneInfo, t: datetime | None, now: datetime, *, seconds: bool = False) -> Markup:
    """A <time> element: the instant in the viewer's zone, relative time as its title."""
    t = _aware(t)
    if t is None:
        return Markup('<span class="muted">—</span>')
    if held_until_cleared(t):
        return Markup('<span class="held-until-cleared">{}</span>').format(HELD_UNTIL_CLEARED)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        t.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        relative(t, now),
        fmt_time(t, ctx_tz, seconds=seconds),
    )


def parse_local_datetime(value: str, tz: ZoneInfo) -> datetime:
    """A form's ``YYYY-MM-DDTHH:MM`` (datetime-local) read in ``tz``, as aware UTC. An
    offset in the value wins over ``tz``. Raises ValueError with a message for people."""
    value = (value or "").strip()
    if not value:
        raise ValueError("enter a date and time")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("enter a date and time as YYYY-MM-DD HH:MM") from None
    out_of_range = "enter a date and time in the years 1900 to 9998"
    try:
        if t.tzinfo is None:
            # a wall time that does not exist (spring forward) moves forward by the gap; an
            # ambiguous one (fall back) is the earlier instant (docs/reference/rules.md)
            from duly.core.rules.timemath import resolve_local

            t = resolve_local(t, tz)
        t = t.astimezone(UTC)
    except OverflowError:
        raise ValueError(out_of_range) from None
    if instant_problem(t):
        raise ValueError(out_of_range)
    return t


def to_local_input(t: datetime | None, tz: ZoneInfo) -> str:
    """An instant as a datetime-local input's value in ``tz``."""
    t = _aware(t)
    return "" if t is None else t.astimezone(tz).strftime("%Y-%m-%dT%H:%M")


# --------------------------------------------------------------------------- paging


@dataclass(frozen=True)
class Page:
    """One page of a list: ``items`` and the query string of the next page, if any."""

    items: list[Any]
    next_query: str | None


def page_of(
    rows: list[Any], limit: int, request: Request, key: str = "id", param: str = "after"
) -> Page:
    """Rows fetched with ``limit + 1``: the first ``limit`` and, when there were more, the
    query string that asks for the ones after the last (keyset paging on ``key``)."""
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more and rows:
        last = rows[-1][key] if isinstance(rows[-1], dict) else getattr(rows[-1], key)
        q = {k: v for k, v in request.query_params.items() if k != param and v != ""}
        q[param] = str(last)
        nxt = "?" + urlencode(q)
    return Page(rows, nxt)


def query_with(request: Request, **changes: Any) -> str:
    """The current query string with some parameters changed (None removes one)."""
    q = {k: v for k, v in request.query_params.items() if v != ""}
    for k, v in changes.items():
        if v is None or v == "":
            q.pop(k, None)
        else:
            q[k] = str(v)
    return ("?" + urlencode(q)) if q else "?"


# --------------------------------------------------------------------------- the environment


def _json_pretty(value: Any) -> str:
    import json

    # readable(): stored data nested deeper than json.dumps recurses is cut, not a 500
    return json.dumps(readable(value), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _state_of(row: Any, now: datetime) -> str:
    """The state a list shows: ``overdue`` for a pending delivery past its due time."""
    state = row["state"]
    due = _aware(row.get("due_at") if isinstance(row, dict) else row["due_at"])
    if state == "pending" and due is not None and due < now - LATE_AFTER:
        return "overdue"
    return str(state)


def _make_env() -> Environment:
    e = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.globals.update(
        when=when,
        fmt_time=fmt_time,
        relative=relative,
        held_until_cleared=lambda t: held_until_cleared(_aware(t)),
        query_with=query_with,
        to_local_input=to_local_input,
        state_of=_state_of,
        subject_url=subject_url,
    )
    e.filters.update(json_pretty=_json_pretty, urlquote=lambda s: _quote(str(s)))
    e.filters.update(words.filters())  # plain words for the engine's codes
    return e


env = _make_env()
