"""What the email-API channels (``sendgrid``, ``postmark``, ``mailgun``, ``ses``) share: the
email a :class:`~duly.delivery.channels.base.Message` becomes, the secret options, one send, and the
mapping of a provider's answer to :class:`DeliveryError`.

The email. The same as the smtp channel writes: ``From`` (the ``from`` option), ``To`` (the
recipient's name and address), ``Subject`` (the message's title), a text and/or an HTML
body, a ``Message-ID`` built as smtp.py builds it (``<message_id@domain>``, the domain being
``message_id_domain`` or that of ``from``), and the message's own headers (the
``X-Duly-*`` identity headers, ``List-Unsubscribe`` and ``List-Unsubscribe-Post``; one
with an empty value is left out, where SMTP writes it empty). A
header the channel writes itself (From, To, Subject, Message-ID, Content-Type …) cannot be
given by the caller, and a header value must be one line: both fail the message
permanently, as an email that cannot be built does on smtp.

Idempotency. None of the four providers documents an idempotency key for its send endpoint
(SendGrid v3 mail send, Postmark /email, Mailgun /v3/{domain}/messages, SES v2
outbound-emails), so a retry after a timeout may send the message twice. What the channel
can do it does: every request for a message carries the message's stable ``message_id`` —
the same on a resend after a crash — as the ``Message-ID`` header and in the provider's own
metadata (SendGrid ``custom_args``, Postmark ``Metadata``, Mailgun ``v:`` variables, SES
``EmailTags``), so a duplicate is recognisable and the provider's webhook events name it.

Secrets. The API key (or SES secret key) comes from an option (a ``${VAR}``) or a
``*_file`` option (read once, when the channel is built; surrounding whitespace dropped).
It never appears in a repr, a log line or an error: an error quoting the provider's answer
has any occurrence of it replaced by ``***``.

Errors (:meth:`EmailApiChannel.refusal`), the same rule for every provider and the same as
SMTP's temporary/permanent split:

- 2xx: sent; the receipt is the provider's message id.
- 401, 403: permanent — the key is wrong or lacks the permission, until someone fixes it.
- 408, 429, 5xx (and the few provider codes that mean "not now"): temporary.
- any other 4xx: permanent; when the provider says the recipient's address is invalid or
  suppressed, ``DeliveryError.address`` is set so duly suppresses the address too.
- timeouts and network failures (see :func:`duly.delivery.channels._http.post`): temporary.

``DeliveryError.code`` is the provider's error code when its answer has one, else the
HTTP status.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from email.errors import MessageError
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Any

import httpx

from duly.delivery.channels import _http, smtp
from duly.delivery.channels._http import http_url, json_object, read_secret
from duly.delivery.channels.base import DeliveryError, Message, Receipt
from duly.delivery.channels.smtp import message_id_domain_of

__all__ = ["Email", "EmailApiChannel", "http_url", "json_object", "read_secret"]

log = logging.getLogger(__name__)

# Headers the channel writes itself (those of SMTP, and Reply-To, a field of the APIs);
# Message.headers may add others, not replace these.
RESERVED_HEADERS = smtp.RESERVED_HEADERS | {"reply-to"}
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable, no colon


@dataclass(frozen=True, slots=True)
class Email:
    """One message as the email the providers are asked to send."""

    from_: str  # the From header as configured ("Acme <billing@acme.test>")
    from_name: str
    from_address: str
    to: str  # "Name <address>" (quoted as needed), or the bare address
    to_name: str
    to_address: str
    subject: str
    text: str | None
    html: str | None
    message_id: str  # duly's id, as the dispatcher gave it
    message_id_header: str  # "<id@domain>"
    # Message-ID first, then the message's own headers, in order
    headers: dict[str, str] = field(default_factory=dict)


class EmailApiChannel:
    """The part of an email-API channel that is not about one provider. A subclass sets
    ``type``/``provider``, calls :meth:`_setup` from its ``__init__`` (whose keyword-only
    parameters are the channel's options), and implements :meth:`request` and
    :meth:`outcome`. Safe to share between threads."""

    type = "email-api"
    provider = "the provider"

    name: str
    where: str
    from_: str
    base_url: str
    allow_private: bool
    message_id_domain: str
    _client: httpx.Client
    _secrets: tuple[str, ...]

    def _setup(
        self,
        name: str,
        *,
        from_: str,
        base_url: str,
        message_id_domain: str | None,
        timeout: Any,
        allow_private: Any,
        secrets: tuple[str, ...],
        **client: Any,
    ) -> None:
        self.name = name
        self.where = f"{self.type} channel {name!r}"
        self._secrets = tuple(s for s in secrets if s)
        self.from_ = str(from_ or "").strip()
        self._from_name, self._from_address = parseaddr(self.from_)
        if "@" not in self._from_address:
            raise ValueError(f"from: {from_!r} is not an email address")
        try:
            _address(self._from_name, self._from_address)
        except (ValueError, IndexError, MessageError) as exc:
            raise ValueError(f"from: {from_!r} is not a valid address: {exc}") from None
        domain = message_id_domain or self._from_address.rpartition("@")[2]
        option = "message_id_domain" if message_id_domain else "from"
        try:
            self.message_id_domain = message_id_domain_of(domain)
        except ValueError as exc:
            raise ValueError(
                f"{option}: cannot end a Message-ID ({exc})"
                + ("; set message_id_domain" if option == "from" else "")
            ) from None
        self.base_url = http_url("base_url", base_url).rstrip("/")
        self.allow_private = _http.bool_option("allow_private", allow_private)
        headers = client.pop("headers", {})
        self._client = _http.make_client(_http.timeout_option(timeout), **client)
        self._client.headers.update(headers)  # the key's header, on every request

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, from_={self.from_!r}, "
            f"base_url={self.base_url!r})"
        )

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        email = self.compose(message)
        url, kwargs = self.request(email)
        response, body = _http.post(
            self._client, url, where=self.where, allow_private=self.allow_private, **kwargs
        )
        receipt = self.outcome(email, response, body)
        log.debug("%s: sent %s as %s", self.where, email.message_id_header, receipt.provider_id)
        return receipt

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ per provider

    def request(self, email: Email) -> tuple[str, dict[str, Any]]:
        """The URL and the httpx keyword arguments (``json``/``data``/``content``,
        ``headers``) of the one POST that sends ``email``."""
        raise NotImplementedError

    def outcome(self, email: Email, response: httpx.Response, body: bytes) -> Receipt:
        """The receipt of an accepted message; raises :meth:`refusal` otherwise."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    def message_id_header(self, message_id: str) -> str:
        """``<id@domain>``, or ``<id>`` when the id has its ``@`` already (as smtp.py)."""
        mid = message_id.strip()
        if mid.startswith("<") and mid.endswith(">"):
            mid = mid[1:-1]
        if not smtp.MESSAGE_ID_RE.fullmatch(mid):
            raise ValueError(f"Message-ID {message_id!r} has spaces, quotes or brackets")
        return f"<{mid}>" if "@" in mid else f"<{mid}@{self.message_id_domain}>"

    def compose(self, message: Message) -> Email:
        """The email ``message`` becomes. Raises a permanent DeliveryError when it cannot be
        built (the same message would fail the same way next time)."""
        to = message.to.strip()
        if "@" not in to or to.startswith("@") or to.endswith("@"):
            raise DeliveryError(
                f"{self.where}: {to!r} is not an email address",
                permanent=True,
                code="invalid_address",
                address=True,
            )
        try:
            to_header = str(_address(message.recipient_name, to))
        except (ValueError, IndexError, MessageError) as exc:
            raise DeliveryError(
                f"{self.where}: {to!r} is not an email address: {exc}",
                permanent=True,
                code="invalid_address",
                address=True,
            ) from exc
        try:
            header = self.message_id_header(message.message_id)
            headers = {"Message-ID": header}
            for name, value in message.headers.items():
                if not _HEADER_NAME_RE.fullmatch(name):
                    raise ValueError(f"header name {name!r} is not valid")
                if name.lower() in RESERVED_HEADERS:
                    raise ValueError(f"header {name!r} is written by the channel, not the caller")
                if "\r" in value or "\n" in value:
                    raise ValueError(f"header {name!r} must be one line")
                if value.strip():  # an empty one (X-Duly-Step of a rule without steps) says
                    headers[name] = value  # nothing, and some APIs refuse empty values
            self.check_content(message)
        except (ValueError, IndexError, MessageError) as exc:
            raise DeliveryError(
                f"{self.where}: cannot build the email: {exc}", permanent=True
            ) from exc
        return Email(
            from_=self.from_,
            from_name=self._from_name,
            from_address=self._from_address,
            to=to_header,
            to_name=message.recipient_name or "",
            to_address=to,
            subject=message.title or "",
            text=message.text,
            html=message.html,
            message_id=message.message_id,
            message_id_header=header,
            headers=headers,
        )

    def check_content(self, message: Message) -> None:
        """Raises ValueError when there is nothing to send (a template channel overrides)."""
        if message.text is None and message.html is None:
            raise ValueError("the message has neither text nor HTML")

    def scrub(self, text: str) -> str:
        """``text`` with every secret of the channel replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def refusal(
        self,
        status: int,
        *,
        reason: str,
        code: str | int | None = None,
        address: bool = False,
        temporary: bool = False,
    ) -> DeliveryError:
        """The DeliveryError of a non-2xx answer (see the module's docstring): 401/403
        permanent, 408/429/5xx or ``temporary`` temporary, other statuses permanent;
        ``address`` only counts on a permanent one. ``reason`` is scrubbed of secrets."""
        what = f"HTTP {status}" + (f", error {code}" if code not in (None, "") else "")
        if status in (401, 403):
            problem, permanent = f"{self.provider} refused the credentials", True
        elif temporary or status in (408, 429) or status >= 500:
            problem, permanent = f"{self.provider} could not take the message now", False
        else:
            problem, permanent = f"{self.provider} refused the message", True
        return DeliveryError(
            f"{self.where}: {problem} ({what}): {self.scrub(reason) or '(no message)'}",
            permanent=permanent,
            code=str(code if code not in (None, "") else status),
            address=permanent and address,
        )

    def accepted(self, email: Email, provider_id: Any) -> Receipt:
        """The receipt of an accepted message. An answer without an id still counts as
        sent: retrying could send the message twice."""
        if not isinstance(provider_id, str) or not provider_id.strip():
            log.warning("%s: %s accepted the message without an id", self.where, self.provider)
            pid = None
        else:
            pid = provider_id.strip()
        return Receipt(provider_id=pid, detail=f"Message-ID {email.message_id_header}")


def _address(name: str | None, addr: str) -> Address:
    try:
        return _parsed_address(name, addr)
    except AttributeError:  # the email package fails so on some bad domains ("x@[bad")
        raise ValueError("invalid domain") from None


def _parsed_address(name: str | None, addr: str) -> Address:
    if addr.isascii():
        return Address(display_name=name or "", addr_spec=addr)  # raises on bad syntax
    # as smtp.py: a non-ASCII local part (SMTPUTF8) checked with stand-ins, then built
    Address(addr_spec="".join(c if c.isascii() else "x" for c in addr))
    user, _, domain = addr.rpartition("@")
    return Address(display_name=name or "", username=user, domain=domain)
