"""CSRF protection for the web UI: a signed double-submit token.

``CsrfMiddleware`` (our own; it replaced Datasette's ``asgi-csrf``, which needed a run-time
patch for today's python-multipart) behaves as that package did, so cookies issued before
the change stay valid:

- the cookie (``duly_csrf``) holds a random value signed with itsdangerous
  (``URLSafeSerializer``, salt ``csrftoken``); a cookie whose signature does not verify is
  ignored and a new token is made;
- pages get the token from ``scope["csrftoken"]()`` (duly.web.core.render puts it in every
  form); calling it sets the cookie if the request had no valid one, and adds
  ``Vary: Cookie``;
- GET, HEAD, OPTIONS and TRACE pass. Any other method passes when the ``x-csrftoken`` header
  equals the token; else a request that carries no cookie at all passes (there is no session
  to ride on) unless its path is in ``always_protect`` (``/login``: login CSRF); a request
  with ``Authorization: Bearer`` passes; else the token must be the ``csrftoken`` field of
  a urlencoded body, or of a multipart body *before any file part* (the body is read only
  that far, then replayed to the app). Anything else gets ``send_failed``'s answer (a 403).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from itsdangerous import BadSignature
from itsdangerous.url_safe import URLSafeSerializer
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FORM_FIELD", "HEADER", "SCOPE_KEY", "CsrfMiddleware"]

SCOPE_KEY = "csrftoken"  # scope[SCOPE_KEY]() -> the token for this response's forms
FORM_FIELD = "csrftoken"
HEADER = b"x-csrftoken"
_SALT = "csrftoken"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

FailedSender = Callable[[Scope, Send, str], Awaitable[None]]


class _TokenFound(Exception):
    pass


class _FileBeforeToken(Exception):
    pass


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    raw = headers.get(b"cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def _same(given: str, token: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8", "replace"), token.encode())


class _Body:
    """Reads the request body message by message and can replay what it read."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._read: list[Message] = []

    async def chunks(self):  # type: ignore[no-untyped-def]
        more = True
        while more:
            message = await self._receive()
            self._read.append(message)
            if message["type"] != "http.request":
                return
            yield message.get("body", b"")
            more = message.get("more_body", False)

    async def replay(self) -> Message:
        if self._read:
            return self._read.pop(0)
        return await self._receive()


async def _urlencoded_token(body: _Body) -> str:
    data = b""
    async for chunk in body.chunks():
        data += chunk
    fields = dict(parse_qsl(data.decode("utf-8", "replace")))
    return fields.get(FORM_FIELD, "")


async def _multipart_token(body: _Body, boundary: bytes) -> str | None:
    """The ``csrftoken`` field of a multipart body, read only up to it; None when absent.
    Raises _FileBeforeToken when a file part comes first."""
    header_name = bytearray()
    header_value = bytearray()
    part: dict[str, Any] = {"disposition": b"", "value": bytearray(), "is_token": False}

    def on_part_begin() -> None:
        part.update(disposition=b"", value=bytearray(), is_token=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_name).lower() == b"content-disposition":
            part["disposition"] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["disposition"])
        if b"filename" in options:
            raise _FileBeforeToken
        part["is_token"] = options.get(b"name") == FORM_FIELD.encode()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part["is_token"]:
            part["value"].extend(data[start:end])

    def on_part_end() -> None:
        if part["is_token"]:
            raise _TokenFound(bytes(part["value"]).decode("utf-8", "replace"))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body.chunks():
            parser.write(chunk)
    except _TokenFound as found:
        return str(found.args[0])
    return None


class CsrfMiddleware:
    """The signed double-submit check around the UI app (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        signing_secret: str,
        cookie_name: str,
        send_failed: FailedSender,
        always_protect: Iterable[str] = (),
        cookie_secure: bool = False,
    ) -> None:
        self.app = app
        self.signer = URLSafeSerializer(signing_secret)
        self.cookie_name = cookie_name
        self.send_failed = send_failed
        self.always_protect = frozenset(always_protect)
        self.cookie_secure = cookie_secure

    def _valid(self, value: str | None) -> bool:
        if value is None:
            return False
        try:
            self.signer.loads(value, salt=_SALT)
        except BadSignature:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        from_cookie = _cookies(headers).get(self.cookie_name)
        has_cookie = self._valid(from_cookie)
        token: str = from_cookie if has_cookie else self.signer.dumps(_random(16), salt=_SALT)  # type: ignore[assignment]
        used = False

        def get_token() -> str:
            nonlocal used
            used = True
            return token

        scope = {**scope, SCOPE_KEY: get_token}

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and used:
                out = [(k, v) for k, v in message.get("headers") or [] if k.lower() != b"vary"]
                vary = [
                    p.strip()
                    for k, v in message.get("headers") or []
                    if k.lower() == b"vary"
                    for p in v.split(b",")
                ]
                if b"Cookie" not in vary:
                    vary.append(b"Cookie")
                out.append((b"vary", b", ".join(vary)))
                if not has_cookie:
                    attrs = [f"{self.cookie_name}={token}", "Path=/", "SameSite=Lax"]
                    if self.cookie_secure:
                        attrs.append("Secure")
                    out.append((b"set-cookie", "; ".join(attrs).encode()))
                message = {**message, "headers": out}
            await send(message)

        if scope["method"] in _SAFE_METHODS or _same(
            headers.get(HEADER, b"").decode("latin-1"), token
        ):
            await self.app(scope, receive, send_with_cookie)
            return
        if not headers.get(b"cookie") and scope["path"] not in self.always_protect:
            await self.app(scope, receive, send_with_cookie)
            return
        if headers.get(b"authorization", b"").decode("latin-1").startswith("Bearer "):
            await self.app(scope, receive, send_with_cookie)
            return

        body = _Body(receive)
        content_type, options = parse_options_header(headers.get(b"content-type", b""))
        if content_type == b"application/x-www-form-urlencoded":
            given, reason = await _urlencoded_token(body), "form field did not match cookie"
        elif content_type == b"multipart/form-data" and options.get(b"boundary"):
            try:
                given = await _multipart_token(body, options[b"boundary"]) or ""
                reason = "multipart field did not match cookie"
            except _FileBeforeToken:
                given, reason = "", "file part before the token"
            except ParseError:
                given, reason = "", "malformed multipart body"
        else:
            given, reason = "", "unknown content type"
        if given and _same(given, token):
            await self.app(scope, body.replay, send_with_cookie)
        else:
            await self.send_failed(scope, send_with_cookie, reason)
