"""A local stand-in for Meta's WhatsApp Cloud API: the ``/messages`` subset the
``whatsapp-cloud`` channel uses.

Written from Meta's WhatsApp Cloud API reference, Graph API v21.0: "Messages" (send a
message: ``POST /{Version}/{Phone-Number-ID}/messages``, the text and template message
objects, the answer ``{"messaging_product", "contacts": [{"input", "wa_id"}], "messages":
[{"id": "wamid…", "message_status"}]}``) and "Error codes" (the Graph error body ``{"error":
{"message", "type", "code", "error_data": {"messaging_product", "details"}, "fbtrace_id"}}``
and the HTTP status of each code). Meta cannot run here, so this fake sits at the network
edge: a real HTTP server (:class:`fakes.local_server.LocalServer`, on 127.0.0.1) reached over
a real socket.

It answers as the Cloud API does:

- a missing or wrong ``Authorization: Bearer`` token → 401, code 190;
- another phone number ID or path → 400, code 100 (unsupported post request);
- a body that is not JSON, or without ``"messaging_product": "whatsapp"`` → 400, code 100;
  no ``to``, or a text message without ``text.body`` → 400, code 131008;
- a template not in :attr:`FakeWhatsAppCloud.templates` (name and language) → 400, code
  132001; the wrong number of body parameters → 400, code 132000;
- free-form text to a number not in :attr:`FakeWhatsAppCloud.inside_window` → 400, code
  131047, and anything to a number in :attr:`FakeWhatsAppCloud.undeliverable` → 400, code
  131026. The real API mostly reports these two later, in the status webhook, after
  accepting the message; the fake answers at once so the channel's handling can be tested;
- otherwise 200 with ``messages[0].id`` a new ``wamid.…`` and ``message_status`` accepted.

Webhooks (what Meta sends back), written from Meta's "Webhooks" guide for the Cloud API,
Graph API v21.0 ("Set up webhooks": the ``GET`` verification request with ``hub.mode``,
``hub.verify_token`` and ``hub.challenge``, and ``X-Hub-Signature-256: sha256=`` + the hex
HMAC-SHA256 of the payload keyed with the app secret) and its ``messages`` webhook reference
(the ``whatsapp_business_account`` envelope, ``statuses[]`` with ``id``, ``status``,
``timestamp``, ``recipient_id`` and ``errors[]``; ``messages[]`` with ``from``, ``id``,
``timestamp``, ``type`` and ``text.body``): :func:`status_payload`,
:func:`message_payload`, :func:`meta_signature`, and :attr:`FakeWhatsAppCloud.on_accept`, a
hook called with each accepted message's wamid before the answer leaves (Meta's status
webhooks can reach duly before the send's answer does).

Numbers in the two sets are digits only (no ``+``), as WhatsApp IDs are. Tests script other
answers with :meth:`FakeWhatsAppCloud.answer` (used in order, one per request, before the
checks above). Every request is recorded in :attr:`FakeWhatsAppCloud.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakes.local_server import Incoming, LocalServer, Reply

__all__ = [
    "Answer",
    "FakeWhatsAppCloud",
    "Recorded",
    "message_payload",
    "meta_signature",
    "status_payload",
]

VERSION = "v21.0"

# code → (HTTP status, title), from Meta's error-code table.
ERRORS = {
    4: (429, "Application request limit reached"),
    100: (400, "Invalid parameter"),
    190: (401, "Access token has expired"),
    130429: (429, "Rate limit hit"),
    131000: (500, "Something went wrong"),
    131008: (400, "Required parameter is missing"),
    131026: (400, "Message Undeliverable"),
    131047: (400, "Re-engagement message"),
    131056: (400, "(Business Account, Consumer Account) pair rate limit hit"),
    132000: (400, "Number of parameters does not match the expected number of params"),
    132001: (400, "Template does not exist"),
}
DETAILS = {
    131047: "Message failed to send because more than 24 hours have passed since the "
    "customer last replied to this number.",
    131026: "Message Undeliverable.",
}


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw: bytes


@dataclass
class Answer:
    """A scripted answer: ``code`` makes a Graph error body; ``body`` replaces the body."""

    status: int
    code: int | None = None
    message: str | None = None
    body: bytes | None = None
    delay: float = 0.0


@dataclass
class FakeWhatsAppCloud(LocalServer):
    phone_number_id: str = field(
        default_factory=lambda: str(100000000000000 + secrets.randbelow(10**14))
    )
    token: str = field(default_factory=lambda: "EAAG" + secrets.token_urlsafe(24))
    # (name, language) → number of body parameters
    templates: dict[tuple[str, str], int] = field(
        default_factory=lambda: {("appointment_reminder", "en_US"): 2}
    )
    inside_window: set[str] = field(default_factory=set)
    undeliverable: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    # called with (wamid, request body) for each accepted message, before the answer
    on_accept: Callable[[str, Any], None] | None = None
    _script: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    methods = ("POST",)

    @property
    def base_url(self) -> str:
        return self.url

    def answer(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        body: bytes | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next request not yet scripted this way (it is still recorded)."""
        with self._lock:
            self._script.append(Answer(status, code, message, body, delay))

    # ------------------------------------------------------------------ the server

    def respond(self, request: Incoming) -> Reply:
        try:
            parsed = json.loads(request.body)
        except ValueError:
            parsed = None
        recorded = Recorded(request.method, request.path, request.headers, parsed, request.body)
        with self._lock:
            self.requests.append(recorded)
            scripted = self._script.pop(0) if self._script else None
        if scripted is None:
            return self._reply_as_meta(recorded)
        if scripted.delay:
            time.sleep(scripted.delay)
        if scripted.body is not None:
            return Reply(scripted.status, scripted.body)
        if scripted.code is not None:
            return self._error(scripted.code, scripted.message, scripted.status)
        if 200 <= scripted.status < 300:
            return Reply.json(scripted.status, self._accepted(recorded.body or {}))
        return Reply.json(scripted.status, {})

    def _reply_as_meta(self, r: Recorded) -> Reply:
        if r.headers.get("authorization") != f"Bearer {self.token}":
            return self._error(190, "Error validating access token: Session has expired.")
        if r.path != f"/{VERSION}/{self.phone_number_id}/messages":
            return self._error(
                100,
                f"Unsupported post request. Object with ID in {r.path} "
                "does not exist, cannot be loaded due to missing permissions, "
                "or does not support this operation.",
            )
        body = r.body
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return self._error(100, "The parameter messaging_product is required.")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            return self._error(131008, "The parameter to is required.")
        number = to.lstrip("+")
        kind = body.get("type", "text")
        if kind == "text":
            text = body.get("text")
            if not isinstance(text, dict) or not text.get("body"):
                return self._error(131008, "The parameter text['body'] is required.")
            if number not in self.inside_window:
                return self._error(131047)
        elif kind == "template":
            problem = self._template_problem(body.get("template"))
            if problem is not None:
                return problem
        else:
            return self._error(100, f"Unsupported message type {kind!r} in this fake.")
        if number in self.undeliverable:
            return self._error(131026)
        accepted = self._accepted(body)
        if self.on_accept is not None:
            self.on_accept(accepted["messages"][0]["id"], body)
        return Reply.json(200, accepted)

    def _template_problem(self, template: Any) -> Reply | None:
        if not isinstance(template, dict):
            return self._error(131008, "The parameter template is required.")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        key = (template.get("name"), code)
        if key not in self.templates:
            return self._error(132001, f"template name ({key[0]}) does not exist in {code}")
        given = 0
        for component in template.get("components") or []:
            if component.get("type") == "body":
                for p in component.get("parameters") or []:
                    if p.get("type") != "text" or not p.get("text"):
                        return self._error(131008, "Parameter text is missing or empty.")
                    given += 1
        expected = self.templates[key]  # type: ignore[index]
        if given != expected:
            return self._error(
                132000,
                f"number of localizable_params ({given}) does not match the expected "
                f"number of params ({expected})",
            )
        return None

    def _accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        to = str(body.get("to", ""))
        wamid = "wamid." + base64.b64encode(secrets.token_bytes(24)).decode()
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
            "messages": [{"id": wamid, "message_status": "accepted"}],
        }

    def _error(self, code: int, message: str | None = None, status: int | None = None) -> Reply:
        default_status, title = ERRORS.get(code, (400, "Error"))
        return Reply.json(
            status or default_status,
            {
                "error": {
                    "message": f"(#{code}) {message or title}",
                    "type": "OAuthException",
                    "code": code,
                    "error_data": {
                        "messaging_product": "whatsapp",
                        "details": DETAILS.get(code, message or title),
                    },
                    "fbtrace_id": secrets.token_urlsafe(12),
                }
            },
        )


# --------------------------------------------------------------------------- webhooks


def meta_signature(app_secret: str, raw: bytes) -> str:
    """``X-Hub-Signature-256`` as Meta computes it over the payload it posts."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


def _envelope(phone_number_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",  # the WhatsApp Business Account ID
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550100000",
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def status_payload(
    phone_number_id: str,
    wamid: str,
    status: str,
    recipient: str,
    *,
    timestamp: int = 1772442000,
    error: int | None = None,
) -> dict[str, Any]:
    """A status webhook (sent, delivered, read, failed) for message ``wamid``; ``error``: a
    failed status's error code, with Meta's title and details."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(timestamp),
        "recipient_id": recipient.lstrip("+"),
    }
    if status != "failed":
        item["conversation"] = {
            "id": secrets.token_hex(16),
            "origin": {"type": "utility"},
        }
        item["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "utility"}
    if error is not None:
        _, title = ERRORS.get(error, (400, "Error"))
        item["errors"] = [
            {
                "code": error,
                "title": title,
                "message": title,
                "error_data": {"details": DETAILS.get(error, title)},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ]
    return _envelope(phone_number_id, {"statuses": [item]})


def message_payload(
    phone_number_id: str,
    sender: str,
    text: str,
    *,
    wamid: str | None = None,
    timestamp: int = 1772442000,
) -> dict[str, Any]:
    """An inbound text message webhook from ``sender`` (E.164; Meta sends the wa_id, digits
    only)."""
    number = sender.lstrip("+")
    return _envelope(
        phone_number_id,
        {
            "contacts": [{"profile": {"name": "Customer"}, "wa_id": number}],
            "messages": [
                {
                    "from": number,
                    "id": wamid or "wamid." + base64.b64encode(secrets.token_bytes(24)).decode(),
                    "timestamp": str(timestamp),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        },
    )
