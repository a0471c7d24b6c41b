"""A local stand-in for Twilio's REST API: the Messages.json subset the twilio channels use.

Twilio cannot run here, so this fake sits at the network edge: a real HTTP server
(:class:`fakes.local_server.LocalServer`, on 127.0.0.1) that the channel reaches over a real
socket.

It answers as Twilio does:

- wrong or missing basic auth → 401 ``{"code": 20003, ...}``;
- another account's URL → 404 ``{"code": 20404, ...}``;
- missing ``To`` / ``From`` and ``MessagingServiceSid`` / ``Body`` → 400 with 21604 / 21603
  / 21602; a ``To`` that is not E.164 (after any ``whatsapp:``) → 400 with 21211;
- WhatsApp templates (Content API, as in Twilio's "Send templates created with the Content
  Template Builder" and its error pages, Messages API 2010-04-01): ``ContentSid`` stands in
  for ``Body``; it must be ``HX`` + 32 hex digits (else 21655), ``ContentVariables`` must be
  a JSON object (else 21656) and needs a ``ContentSid`` (else 21654);
- a free-form ``Body`` to a ``whatsapp:`` number listed in :attr:`FakeTwilio.outside_window`
  → 400 with 63016 (real Twilio often reports 63016 later, through the status callback; the
  fake answers at once so the channel's handling can be tested);
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
from typing import Any
from urllib.parse import parse_qs

from fakes.local_server import Incoming, LocalServer, Reply

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
    21654: (400, "ContentSid Required"),
    21655: (400, "The ContentSid is Invalid"),
    21656: (400, "The ContentVariables Parameter is invalid"),
    63003: (400, "Channel could not find To address"),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
}
_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")


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
class FakeTwilio(LocalServer):
    account: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    requests: list[Recorded] = field(default_factory=list)
    # WhatsApp numbers (E.164) whose customer-service window is closed: free-form text fails
    outside_window: set[str] = field(default_factory=set)
    _script: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return self.url

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

    def respond(self, request: Incoming) -> Reply:
        if request.method == "GET":
            return Reply.json(405, {"code": 20004, "message": "Method not allowed"})
        raw = request.body
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        recorded = Recorded(
            method=request.method,
            path=request.path,
            headers=request.headers,
            auth=_basic_auth(request.headers.get("authorization")),
            form=form,
            raw=raw,
        )
        with self._lock:
            self.requests.append(recorded)
            scripted = self._script.pop(0) if self._script else None
        if scripted is None:
            return self._reply_as_twilio(recorded)
        if scripted.delay:
            time.sleep(scripted.delay)
        if scripted.body is not None:
            return Reply(scripted.status, scripted.body)
        if scripted.code is not None:
            return self._error(scripted.code, scripted.message, scripted.status)
        if 200 <= scripted.status < 300:
            return Reply.json(scripted.status, self._created(recorded))
        return Reply.json(scripted.status, {"status": scripted.status})

    def _reply_as_twilio(self, r: Recorded) -> Reply:
        if r.auth != (self.account, self.token):
            return self._error(20003)
        m = _MESSAGES_PATH.fullmatch(r.path)
        if m is None or m.group(1) != self.account:
            return self._error(20404)
        to = r.form.get("To", "")
        if not to:
            return self._error(21604)
        if not (r.form.get("From") or r.form.get("MessagingServiceSid")):
            return self._error(21603)
        content_sid = r.form.get("ContentSid")
        if "ContentVariables" in r.form and not content_sid:
            return self._error(21654)
        if content_sid is not None and not _CONTENT_SID.fullmatch(content_sid):
            return self._error(21655)
        if "ContentVariables" in r.form and not _json_object(r.form["ContentVariables"]):
            return self._error(21656)
        if not (r.form.get("Body") or content_sid):
            return self._error(21602)
        number = to.removeprefix("whatsapp:")
        if not _E164.fullmatch(number):
            return self._error(21211, f"The 'To' number {to} is not a valid phone number.")
        if to.startswith("whatsapp:") and not content_sid and number in self.outside_window:
            return self._error(63016)
        return Reply.json(201, self._created(r))

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

    def _error(self, code: int, message: str | None = None, status: int | None = None) -> Reply:
        default_status, default_message = ERRORS.get(code, (400, "Error"))
        status = status or default_status
        return Reply.json(
            status,
            {
                "code": code,
                "message": message or default_message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
        )


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except ValueError:
        return None
    return user, password
