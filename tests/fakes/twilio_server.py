"""A local stand-in for Twilio's REST API: the Messages.json subset the twilio channels use.

Twilio cannot run here, so this fake sits at the network edge: a real HTTP server
(``http.server`` in a thread, on 127.0.0.1) that the channel reaches over a real socket.

It answers as Twilio does:

- wrong or missing basic auth → 401 ``{"code": 20003, ...}``;
- another account's URL → 404 ``{"code": 20404, ...}``;
- missing ``To`` / ``From`` and ``MessagingServiceSid`` / ``Body`` → 400 with 21604 / 21603
  / 21602; a ``To`` that is not E.164 (after any ``whatsapp:``) → 400 with 21211;
- otherwise 201 with the new message (``sid`` ``SM`` + 32 hex digits, ``status`` queued).

Tests script other answers with :meth:`FakeTwilio.answer` (used in order, one per request,
before the checks above): a Twilio error (400 with code 21610, say), 429, 500, a delay to
make the client time out, or a raw body. Every request is recorded, parsed, in
:attr:`FakeTwilio.requests`.

    with FakeTwilio() as twilio:
        channel = TwilioSmsChannel("sms", account=twilio.account, token=twilio.token,
                                   from_="+15550100000", base_url=twilio.base_url,
                                   allow_private=True)
        twilio.answer(400, code=21211)
        ...
        assert twilio.requests[0].form["To"] == "+15550100001"
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Answer", "FakeTwilio", "Recorded"]

_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

# Twilio's wording for the errors the fake produces on its own.
ERRORS = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource was not found"),
    20429: (429, "Too Many Requests"),
    21211: (400, "Invalid 'To' Phone Number"),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21611: (400, "This 'From' number has exceeded the maximum number of queued messages"),
    21614: (400, "'To' number is not a valid mobile number"),
    63003: (400, "Channel could not find To address"),
}


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    auth: tuple[str, str] | None  # decoded basic auth
    form: dict[str, str]  # each field's (last) value
    raw: bytes


@dataclass
class Answer:
    """A scripted answer. ``code`` makes a Twilio error body; ``body`` replaces the body."""

    status: int
    code: int | None = None
    message: str | None = None
    body: bytes | None = None
    delay: float = 0.0


@dataclass
class FakeTwilio:
    account: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    requests: list[Recorded] = field(default_factory=list)
    _script: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._reply(self, 405, {"code": 20004, "message": "Method not allowed"})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-twilio",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ scripting

    def answer(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        body: bytes | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next request not yet scripted this way (requests are still recorded
        first)."""
        with self._lock:
            self._script.append(Answer(status, code, message, body, delay))

    # ------------------------------------------------------------------ the server

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length)
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        recorded = Recorded(
            method=h.command,
            path=h.path,
            headers={k.lower(): v for k, v in h.headers.items()},
            auth=_basic_auth(h.headers.get("authorization")),
            form=form,
            raw=raw,
        )
        with self._lock:
            self.requests.append(recorded)
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            if scripted.body is not None:
                self._reply_raw(h, scripted.status, scripted.body)
            elif scripted.code is not None:
                self._error(h, scripted.code, scripted.message, scripted.status)
            elif 200 <= scripted.status < 300:
                self._reply(h, scripted.status, self._created(recorded))
            else:
                self._reply(h, scripted.status, {"status": scripted.status})
            return
        self._reply_as_twilio(h, recorded)

    def _reply_as_twilio(self, h: BaseHTTPRequestHandler, r: Recorded) -> None:
        if r.auth != (self.account, self.token):
            return self._error(h, 20003)
        m = _MESSAGES_PATH.fullmatch(r.path)
        if m is None or m.group(1) != self.account:
            return self._error(h, 20404)
        to = r.form.get("To", "")
        if not to:
            return self._error(h, 21604)
        if not (r.form.get("From") or r.form.get("MessagingServiceSid")):
            return self._error(h, 21603)
        if not r.form.get("Body"):
            return self._error(h, 21602)
        number = to.removeprefix("whatsapp:")
        if not _E164.fullmatch(number):
            return self._error(h, 21211, f"The 'To' number {to} is not a valid phone number.")
        self._reply(h, 201, self._created(r))

    def _created(self, r: Recorded) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        return {
            "sid": sid,
            "account_sid": self.account,
            "to": r.form.get("To"),
            "from": r.form.get("From"),
            "messaging_service_sid": r.form.get("MessagingServiceSid"),
            "body": r.form.get("Body"),
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": formatdate(usegmt=True),
            "uri": f"/2010-04-01/Accounts/{self.account}/Messages/{sid}.json",
        }

    def _error(
        self,
        h: BaseHTTPRequestHandler,
        code: int,
        message: str | None = None,
        status: int | None = None,
    ) -> None:
        default_status, default_message = ERRORS.get(code, (400, "Error"))
        status = status or default_status
        self._reply(
            h,
            status,
            {
                "code": code,
                "message": message or default_message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
        )

    def _reply(self, h: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
        self._reply_raw(h, status, json.dumps(document).encode())

    def _reply_raw(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except ValueError:
        return None
    return user, password
