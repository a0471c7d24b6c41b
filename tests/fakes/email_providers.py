"""Local stand-ins for four email providers' send APIs: SendGrid, Postmark, Mailgun and
Amazon SES v2 — the subset the email-API channels (duly.delivery.channels.sendgrid … ses) use.

The providers cannot run here, so these fakes sit at the network edge: real HTTP servers
(:class:`fakes.local_server.LocalServer`, on 127.0.0.1) that the channels reach over a real
socket. Each checks what its provider documents it checks (authentication, the path, the
required fields) and answers with the provider's documented status codes and bodies; each
class's docstring names the document it follows.

Every fake records each request, parsed, in ``requests``, and offers the same scripting
for the tests that are common to the four (:meth:`FakeEmailProvider.script`): the next
answer can be ``"busy"`` (429), ``"server"`` (5xx), ``"invalid_recipient"`` (the provider's
refusal of the recipient's address), ``"bad_request"`` (a 4xx that is not about the
address), ``"echo_key"`` (a refusal quoting the credentials back, to check they are not
passed on), or an accepted answer after ``delay`` seconds (to make the client time out).
:meth:`FakeEmailProvider.view` reads a recorded request into the same :class:`Sent` shape
whatever the provider, so a parametrised test can check what was sent.

    with FakeSendGrid() as sendgrid:
        channel = build_channel(ChannelConfig("email", "sendgrid", sendgrid.options()))
        sendgrid.script("busy")
        ...
        assert sendgrid.view(sendgrid.requests[0]).to == "alice@example.test"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any, ClassVar
from urllib.parse import parse_qs

from fakes.local_server import Incoming, LocalServer, Reply

__all__ = [
    "FAKES",
    "FakeEmailProvider",
    "FakeMailgun",
    "FakePostmark",
    "FakeSendGrid",
    "FakeSes",
    "Recorded",
    "Sent",
    "ses_error",
]


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    raw: bytes
    json: Any = None  # the parsed JSON body (SendGrid, Postmark, SES)
    form: dict[str, str] = field(default_factory=dict)  # each field's last value (Mailgun)


@dataclass(frozen=True)
class Sent:
    """What a request asked the provider to send, the same shape for every provider."""

    to: str  # the bare address
    subject: str | None
    text: str | None
    html: str | None
    headers: dict[str, str]  # the custom headers, names in lower case
    duly_message_id: str | None  # duly's id, from the provider's metadata


@dataclass
class _Scripted:
    kind: str
    delay: float = 0.0
    reply: Reply | None = None


class FakeEmailProvider(LocalServer):
    """What the four fakes share: recording, scripting, a key of their own."""

    type: ClassVar[str] = ""
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST")
    KINDS: ClassVar[tuple[str, ...]] = (
        "accept",
        "busy",
        "server",
        "invalid_recipient",
        "bad_request",
        "echo_key",
    )

    def __init__(self) -> None:
        self.key = "key-" + secrets.token_hex(16)
        self.requests: list[Recorded] = []
        self.issued: list[str] = []  # the ids of the messages accepted, in order
        self._script: list[_Scripted] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ for tests

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The options of a channel of this type that sends to this fake."""
        base = {
            "from": "Acme Billing <billing@acme.test>",
            "api_key": self.key,
            "base_url": self.url,
            "allow_private": True,  # the fake listens on 127.0.0.1
        }
        return {k: v for k, v in {**base, **overrides}.items() if v is not None}

    def script(self, kind: str, *, delay: float = 0.0) -> None:
        """Answer the next request (after recording it) with ``kind`` (see the module)."""
        assert kind in self.KINDS, kind
        with self._lock:
            self._script.append(_Scripted(kind, delay))

    def reply_next(self, reply: Reply) -> None:
        """Answer the next request (after recording it) with ``reply`` as it is."""
        with self._lock:
            self._script.append(_Scripted("reply", reply=reply))

    def view(self, r: Recorded) -> Sent:
        raise NotImplementedError

    def issue(self, provider_id: str) -> str:
        with self._lock:
            self.issued.append(provider_id)
        return provider_id

    # ------------------------------------------------------------------ the server

    def respond(self, request: Incoming) -> Reply:
        if request.method != "POST":
            return self.error("bad_request")
        recorded = self.parse(request)
        with self._lock:
            self.requests.append(recorded)
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            if scripted.reply is not None:
                return scripted.reply
            if scripted.kind != "accept":
                return self.error(scripted.kind)
        return self.check(recorded)

    def parse(self, request: Incoming) -> Recorded:
        try:
            document = json.loads(request.body) if request.body else None
        except ValueError:
            document = None
        return Recorded(request.method, request.path, request.headers, request.body, document)

    def check(self, r: Recorded) -> Reply:
        """The provider's own checks, then its answer to an accepted message."""
        raise NotImplementedError

    def error(self, kind: str) -> Reply:
        """The provider's answer for a scripted ``kind``."""
        raise NotImplementedError


# --------------------------------------------------------------------------- SendGrid


class FakeSendGrid(FakeEmailProvider):
    """SendGrid v3 Mail Send (``POST /v3/mail/send``), as its API reference "Mail Send"
    (v3, https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send) and "Mail
    Send errors" describe it: ``Authorization: Bearer KEY`` (else 401); a JSON body with
    ``personalizations[].to[].email``, ``from.email``, ``subject`` and ``content`` (text/plain
    first) unless a ``template_id`` is given (else 400); 202 with an empty body and the
    ``X-Message-Id`` header when accepted. Errors are ``{"errors": [{"message", "field",
    "help"}]}``."""

    type = "sendgrid"

    def check(self, r: Recorded) -> Reply:
        if r.path != "/v3/mail/send":
            return _sendgrid_error(404, "Not Found", None)
        if r.headers.get("authorization") != f"Bearer {self.key}":
            return self.error("auth")
        d = r.json if isinstance(r.json, dict) else {}
        try:
            to = d["personalizations"][0]["to"][0]["email"]
        except (KeyError, IndexError, TypeError):
            return _sendgrid_error(
                400, "The personalizations field is required.", "personalizations"
            )
        if "@" not in str(to):
            return self.error("invalid_recipient")
        if "@" not in str((d.get("from") or {}).get("email", "")):
            return self.error("bad_request")
        if "template_id" not in d:
            if not d.get("subject"):
                return _sendgrid_error(400, "The subject is required.", "subject")
            content = d.get("content") or []
            if not content:
                return _sendgrid_error(
                    400,
                    "Unless a valid template_id is provided, the content parameter is required.",
                    "content",
                )  # noqa: E501
            if len(content) > 1 and content[0].get("type") != "text/plain":
                return _sendgrid_error(
                    400, "The text/plain content type must be first.", "content.0.type"
                )
        return Reply(202, b"", {"X-Message-Id": self.issue(secrets.token_urlsafe(16)[:22])})

    def error(self, kind: str) -> Reply:
        if kind == "auth":
            return _sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked", None
            )
        if kind == "busy":
            return _sendgrid_error(429, "too many requests", None)
        if kind == "server":
            return _sendgrid_error(500, "An internal server error occurred.", None)
        if kind == "invalid_recipient":
            return _sendgrid_error(
                400, "Does not contain a valid address.", "personalizations.0.to.0.email"
            )
        if kind == "echo_key":
            return _sendgrid_error(401, f"Invalid API key {self.key}", None)
        return _sendgrid_error(
            400, "The from email does not contain a valid address.", "from.email"
        )

    def view(self, r: Recorded) -> Sent:
        d = r.json
        content = {c["type"]: c["value"] for c in d.get("content", [])}
        return Sent(
            to=d["personalizations"][0]["to"][0]["email"],
            subject=d.get("subject"),
            text=content.get("text/plain"),
            html=content.get("text/html"),
            headers={k.lower(): v for k, v in d.get("headers", {}).items()},
            duly_message_id=d.get("custom_args", {}).get("duly_message_id"),
        )


def _sendgrid_error(status: int, message: str, where: str | None) -> Reply:
    help_ = "https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors"
    return Reply.json(status, {"errors": [{"message": message, "field": where, "help": help_}]})


# --------------------------------------------------------------------------- Postmark


class FakePostmark(FakeEmailProvider):
    """Postmark's Email API (``POST /email``), as its "Email API" reference and the "API
    overview → Error codes" page describe it (https://postmarkapp.com/developer/api/email-api,
    https://postmarkapp.com/developer/api/overview#error-codes): the
    ``X-Postmark-Server-Token`` header (else 401 with ``ErrorCode`` 10); ``From``, ``To`` and
    ``TextBody`` or ``HtmlBody`` (else 422 with ``ErrorCode`` 300); a ``MessageStream`` that
    exists on the server (else 422, ``ErrorCode`` 1235); 200 ``{"To", "SubmittedAt",
    "MessageID", "ErrorCode": 0, "Message": "OK"}`` when accepted. An inactive (suppressed)
    recipient is 422 with ``ErrorCode`` 406; the rate limit 429."""

    type = "postmark"

    def __init__(self) -> None:
        super().__init__()
        self.streams = {"outbound", "broadcast"}

    def check(self, r: Recorded) -> Reply:
        if r.path != "/email":
            return Reply(404, b"")
        if r.headers.get("x-postmark-server-token") != self.key:
            return self.error("auth")
        d = r.json if isinstance(r.json, dict) else {}
        if not d.get("From"):
            return _postmark_error(422, 300, "Invalid 'From' address: ''.")
        to = parseaddr(str(d.get("To") or ""))[1]
        if "@" not in to:
            return _postmark_error(
                422,
                300,
                f"Error parsing 'To': Illegal email address '{to}'. "
                "It must contain the '@' symbol.",
            )
        if not (d.get("TextBody") or d.get("HtmlBody")):
            return _postmark_error(422, 300, "Provide either email TextBody or HtmlBody or both.")
        if d.get("MessageStream", "outbound") not in self.streams:
            return _postmark_error(
                422, 1235, "The message stream for the provided 'ID' was not found."
            )
        return Reply.json(
            200,
            {
                "To": d["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": self.issue(str(uuid.uuid4())),
                "ErrorCode": 0,
                "Message": "OK",
            },
        )

    def error(self, kind: str) -> Reply:
        if kind == "auth":
            return _postmark_error(
                401,
                10,
                "The Server Token you provided in the X-Postmark-Server-Token request header "
                "was invalid. Please verify that you are using a valid token.",
            )
        if kind == "busy":
            return _postmark_error(429, 429, "Rate limit exceeded.")
        if kind == "server":
            return Reply(500, b"Internal Server Error")
        if kind == "invalid_recipient":
            return _postmark_error(
                422,
                406,
                "You tried to send to recipient(s) that have been marked as inactive. Found "
                "inactive addresses: alice@example.test. Inactive recipients are ones that have "
                "generated a hard bounce, a spam complaint, or a manual suppression.",
            )
        if kind == "echo_key":
            return _postmark_error(401, 10, f"Bad or missing Server API token {self.key}")
        return _postmark_error(
            422,
            400,
            "The 'From' address you supplied (billing@acme.test) is not a Sender Signature "
            "on your account.",
        )

    def view(self, r: Recorded) -> Sent:
        d = r.json
        return Sent(
            to=parseaddr(d["To"])[1],
            subject=d.get("Subject"),
            text=d.get("TextBody"),
            html=d.get("HtmlBody"),
            headers={h["Name"].lower(): h["Value"] for h in d.get("Headers", [])},
            duly_message_id=d.get("Metadata", {}).get("duly_message_id"),
        )


def _postmark_error(status: int, code: int, message: str) -> Reply:
    return Reply.json(status, {"ErrorCode": code, "Message": message})


# --------------------------------------------------------------------------- Mailgun

_MAILGUN_PATH = re.compile(r"/v3/([^/]+)/messages")


class FakeMailgun(FakeEmailProvider):
    """Mailgun's Messages API (``POST /v3/{domain}/messages``), as its API reference
    "Messages → Send an email" (v3, https://documentation.mailgun.com/docs/mailgun/
    api-reference/) describes it: form-encoded fields ``from``, ``to``, ``subject``,
    ``text``/``html``, ``h:`` headers and ``v:`` variables; basic auth ``api:KEY`` (else 401
    with the plain-text body ``Forbidden``); an unknown domain 404 ``{"message": "Domain not
    found: …"}``; a missing or invalid field 400 ``{"message": …}`` (``to parameter is not a
    valid address. please check documentation``); 200 ``{"id": "<…>", "message": "Queued.
    Thank you."}`` when accepted (the id is the given ``h:Message-Id`` when there is one)."""

    type = "mailgun"

    def __init__(self) -> None:
        super().__init__()
        self.domain = "mg.acme.test"

    def options(self, **overrides: Any) -> dict[str, Any]:
        return super().options(**{"domain": self.domain, **overrides})

    def parse(self, request: Incoming) -> Recorded:
        fields = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
        form = {k: v[-1] for k, v in fields.items()}
        return Recorded(request.method, request.path, request.headers, request.body, form=form)

    def check(self, r: Recorded) -> Reply:
        m = _MAILGUN_PATH.fullmatch(r.path)
        if m is None:
            return Reply(404, b"404 page not found")
        if _basic_auth(r.headers.get("authorization")) != ("api", self.key):
            return self.error("auth")
        if m.group(1) != self.domain:
            return Reply.json(404, {"message": f"Domain not found: {m.group(1)}"})
        f = r.form
        if "@" not in parseaddr(f.get("from", ""))[1]:
            return self.error("bad_request")
        if not f.get("to"):
            return Reply.json(400, {"message": "'to' parameter is missing"})
        if "@" not in parseaddr(f["to"])[1]:
            return self.error("invalid_recipient")
        if not (f.get("text") or f.get("html")):
            return Reply.json(
                400,
                {
                    "message": "Need at least one of 'text', 'html' or 'template' parameters specified"
                },
            )
        given = f.get("h:Message-Id", "").strip("<>")
        mid = given or f"{time.strftime('%Y%m%d%H%M%S')}.{secrets.token_hex(8)}@{self.domain}"
        return Reply.json(200, {"id": f"<{self.issue(mid)}>", "message": "Queued. Thank you."})

    def error(self, kind: str) -> Reply:
        if kind == "auth":
            return Reply(401, b"Forbidden")
        if kind == "busy":
            return Reply.json(429, {"message": "Too many requests"})
        if kind == "server":
            return Reply.json(500, {"message": "Internal Server Error"})
        if kind == "invalid_recipient":
            return Reply.json(
                400, {"message": "to parameter is not a valid address. please check documentation"}
            )
        if kind == "echo_key":
            return Reply.json(401, {"message": f"Invalid private key: {self.key}"})
        return Reply.json(
            400, {"message": "from parameter is not a valid address. please check documentation"}
        )

    def view(self, r: Recorded) -> Sent:
        f = r.form
        return Sent(
            to=parseaddr(f["to"])[1],
            subject=f.get("subject"),
            text=f.get("text"),
            html=f.get("html"),
            headers={k[2:].lower(): v for k, v in f.items() if k.startswith("h:")},
            duly_message_id=f.get("v:duly-message-id"),
        )


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except ValueError:
        return None
    return user, password


# --------------------------------------------------------------------------- Amazon SES


class FakeSes(FakeEmailProvider):
    """Amazon SES API v2 ``SendEmail`` (``POST /v2/email/outbound-emails``, API version
    2019-09-27), as the "Amazon Simple Email Service API Reference → SendEmail" and "Common
    Errors" pages describe it, authenticated with AWS Signature Version 4 as the IAM user
    guide's "Create a signed AWS API request" describes it. The fake recomputes the signature
    from :attr:`secret` — its own implementation, not the channel's — over the headers the
    request lists in ``SignedHeaders`` and refuses a mismatch (403 ``SignatureDoesNotMatch``),
    an unknown access key (403 ``UnrecognizedClientException``) or an ``x-amz-date`` more than
    5 minutes off (403 ``InvalidSignatureException``). Errors name their type in the
    ``x-amzn-ErrorType`` header, with ``{"message": …}``: a missing field or an invalid address
    is 400 ``BadRequestException``, an unverified sender 400 ``MessageRejected``, throttling
    429 ``TooManyRequestsException``. Accepted: 200 ``{"MessageId": …}``."""

    type = "ses"

    def __init__(self) -> None:
        super().__init__()
        self.access_key_id = "AKIA" + secrets.token_hex(8).upper()
        self.key = secrets.token_urlsafe(30)  # the secret access key
        self.region = "eu-west-1"

    def options(self, **overrides: Any) -> dict[str, Any]:
        base = {
            "from": "Acme Billing <billing@acme.test>",
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.key,
            "base_url": self.url,
            "allow_private": True,
        }
        return {k: v for k, v in {**base, **overrides}.items() if v is not None}

    def check(self, r: Recorded) -> Reply:
        if r.path != "/v2/email/outbound-emails":
            return ses_error(404, "NotFoundException", "Resource not found")
        refusal = self.verify_signature(r)
        if refusal is not None:
            return refusal
        d = r.json if isinstance(r.json, dict) else {}
        if not d.get("FromEmailAddress"):
            return ses_error(400, "BadRequestException", "FromEmailAddress is required")
        to = (d.get("Destination") or {}).get("ToAddresses") or []
        if not to:
            return ses_error(400, "BadRequestException", "Missing required header 'To'.")
        if "@" not in parseaddr(to[0])[1]:
            return self.error("invalid_recipient")
        simple = (d.get("Content") or {}).get("Simple") or {}
        if not (simple.get("Subject") or {}).get("Data") or not simple.get("Body"):
            return ses_error(400, "BadRequestException", "Subject and Body are required")
        if len(simple.get("Headers") or []) > 15:
            return ses_error(400, "BadRequestException", "Too many headers")
        mid = self.issue(f"0102018c{secrets.token_hex(12)}-000000")
        return Reply.json(200, {"MessageId": mid})

    def verify_signature(self, r: Recorded) -> Reply | None:
        """None when the request is signed with this fake's key, else SES's 403."""
        m = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            r.headers.get("authorization", ""),
        )
        if m is None:
            return ses_error(403, "IncompleteSignatureException", "Authorization header malformed")
        access_key, day, region, service, signed_headers, signature = m.groups()
        if access_key != self.access_key_id:
            return ses_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = r.headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return ses_error(403, "IncompleteSignatureException", "x-amz-date is missing")
        if abs(datetime.now(UTC) - when) > timedelta(minutes=5) or day != amz_date[:8]:
            return ses_error(403, "InvalidSignatureException", "Signature expired")
        names = signed_headers.split(";")
        if not {"host", "x-amz-date"} <= set(names):
            return ses_error(
                403, "IncompleteSignatureException", "host and x-amz-date must be signed"
            )
        canonical_headers = "".join(
            f"{n}:{' '.join(r.headers.get(n, '').split())}\n" for n in names
        )
        canonical_request = "\n".join(
            [
                r.method,
                r.path,
                "",
                canonical_headers,
                signed_headers,
                hashlib.sha256(r.raw).hexdigest(),
            ]
        )
        scope = f"{day}/{region}/{service}/aws4_request"
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )

        def sign(key: bytes, msg: str) -> bytes:
            return hmac.new(key, msg.encode(), hashlib.sha256).digest()

        k = sign(sign(sign(sign(f"AWS4{self.key}".encode(), day), region), service), "aws4_request")
        expected = hmac.new(k, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if (
            region != self.region
            or service != "ses"
            or not hmac.compare_digest(expected, signature)
        ):
            return self.error("auth")
        return None

    def error(self, kind: str) -> Reply:
        if kind == "auth":
            return ses_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details.",
            )
        if kind == "busy":
            return ses_error(429, "TooManyRequestsException", "Too Many Requests")
        if kind == "server":
            return ses_error(500, "InternalFailure", "The request processing has failed.")
        if kind == "invalid_recipient":
            return ses_error(400, "BadRequestException", "Missing final '@domain'")
        if kind == "echo_key":
            return ses_error(403, "SignatureDoesNotMatch", f"Bad signature with key {self.key}")
        return ses_error(
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check in "
            "region EU-WEST-1: billing@acme.test",
        )

    def view(self, r: Recorded) -> Sent:
        d = r.json
        simple = d["Content"]["Simple"]
        body = simple.get("Body", {})
        tags = {t["Name"]: t["Value"] for t in d.get("EmailTags", [])}
        return Sent(
            to=parseaddr(d["Destination"]["ToAddresses"][0])[1],
            subject=simple.get("Subject", {}).get("Data"),
            text=body.get("Text", {}).get("Data"),
            html=body.get("Html", {}).get("Data"),
            headers={h["Name"].lower(): h["Value"] for h in simple.get("Headers", [])},
            duly_message_id=tags.get("duly-message-id"),
        )


def ses_error(status: int, kind: str, message: str) -> Reply:
    return Reply(
        status,
        json.dumps({"message": message}).encode(),
        {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"},
    )


FAKES: dict[str, type[FakeEmailProvider]] = {
    "sendgrid": FakeSendGrid,
    "postmark": FakePostmark,
    "mailgun": FakeMailgun,
    "ses": FakeSes,
}
