"""SMTP: each message as one email through a relay, over connections kept open between sends.

URL forms (user and password are percent-decoded; the password never appears in a repr,
a log line or an error)::

    smtp://[USER:PASS@]HOST[:PORT]            plain, no TLS at all (port 25)
    smtp+starttls://[USER:PASS@]HOST[:PORT]   STARTTLS required, never falls back (port 587)
    smtps://[USER:PASS@]HOST[:PORT]           implicit TLS (port 465)

Query options: ``verify=false`` skips certificate checks (self-signed test servers only),
``ca_file=PATH`` trusts that CA bundle, ``local_hostname=NAME`` is what EHLO says.

Message-ID: RFC 5322 (§3.6.4) wants ``<id-left@id-right>``. A message id without ``@`` (the
dispatcher's: 32 hex digits, see :mod:`duly.delivery.ids`) is written ``<id@DOMAIN>``, DOMAIN being
the ``message_id_domain`` option, by default the domain of the ``from`` address (an
internationalised one in its ASCII form); an id that has its ``@`` already is written as it
is.

Building: the usual message (ASCII headers, one text part with short lines) is written by
:mod:`duly.delivery.channels._smtp_fast`, byte for byte what the email package writes for it
and some eighty times cheaper; everything else is built with the email package.

Errors: the server's reply code decides. 5xx is permanent (550 unknown mailbox, 535 bad
login, 552 too big), 4xx temporary (451, 421). Failing to connect, timeouts, TLS failures
(including a certificate that doesn't verify), a dropped connection and a server that
doesn't offer STARTTLS are temporary: they are about the relay, not this message, and the
dispatcher's retries and circuit breaker wait for someone to fix them. A connection lost
after the message's data went out may have delivered it: the retry carries the same
Message-ID, so the duplicate can be recognised.

Connections: up to ``max_connections`` are open at once, each used by one send at a time, and
kept for the next. A server closes idle connections (typically after a few minutes); when the
first command on a kept connection finds it closed, nothing of the message has been sent
yet, so the channel reconnects once and carries on. MAIL, RCPT and DATA go out in one write
when the server offers PIPELINING (:mod:`duly.delivery.channels._smtp_wire`).
"""

from __future__ import annotations

import io
import logging
import queue
import re
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.errors import MessageError
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import cache
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from duly.delivery.channels import _smtp_fast, _smtp_wire
from duly.delivery.channels.base import DeliveryError, Message, Receipt

__all__ = ["SmtpChannel", "SmtpUrl", "redact_url"]

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_QUERY_OPTIONS = ("verify", "ca_file", "local_hostname")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# Headers of URIs in angle brackets (RFC 2369, RFC 8058): written as they are, since a long
# URL must never become encoded words.
_URI_LIST_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})

# Headers the channel writes itself; Message.headers may add others, not replace these.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
# The email package silently truncates a Message-ID it cannot parse (at a space, say); the
# dispatcher relies on it arriving exactly as given, so anything else is refused.
MESSAGE_ID_RE = re.compile(r"[^\s<>\"]+")
# The id-right of a Message-ID: a domain name's labels (RFC 5322 dot-atom, kept to what a
# host name holds).
_DOMAIN_LITERAL = re.compile(r"\[(?:ipv6:)?[0-9a-f:.]{2,45}\]")
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|[a-z0-9_][a-z0-9_-]{0,62}")


def message_id_domain_of(value: str) -> str:
    """``value`` as the id-right of a Message-ID: lower case, an internationalised name in
    its ASCII (IDNA) form. Raises ValueError saying what is wrong."""
    domain = str(value).strip().rstrip(".").lower()
    if not domain:
        raise ValueError("empty")
    if _DOMAIN_LITERAL.fullmatch(domain):  # an address literal, as in billing@[192.0.2.1]
        return domain
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} is not a domain name") from None
    if len(domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(p) for p in domain.split(".")):
        raise ValueError(f"{value!r} is not a domain name (letters, digits, - and dots)")
    return domain


def redact_url(url: str) -> str:
    """``url`` with the password replaced by ``***``; works on URLs that don't parse."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{scheme}://{user}:***@{hostport}{rest[end:]}"
    return url


@dataclass(frozen=True, slots=True)
class SmtpUrl:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool = True
    ca_file: str | None = None
    local_hostname: str | None = None

    @classmethod
    def parse(cls, url: str) -> SmtpUrl:
        """Raises ValueError (whose message never contains the password)."""
        shown = redact_url(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"SMTP URL {shown}: the scheme must be smtp, smtp+starttls or smtps")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"SMTP URL {shown}: the port is not a number from 1 to 65535"
            ) from None
        if not parts.hostname:
            raise ValueError(f"SMTP URL {shown}: no host")
        if parts.password and not parts.username:
            raise ValueError(f"SMTP URL {shown}: a password without a user")
        if parts.path not in ("", "/"):
            raise ValueError(f"SMTP URL {shown}: unexpected path {parts.path!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - set(_QUERY_OPTIONS))
        if unknown:
            raise ValueError(
                f"SMTP URL {shown}: unknown option {', '.join(unknown)} "
                f"(accepted: {', '.join(_QUERY_OPTIONS)})"
            )
        verify = query.get("verify", "true").strip().lower()
        if verify not in _TRUE | _FALSE:
            raise ValueError(f"SMTP URL {shown}: verify must be true or false")
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=port or _DEFAULT_PORTS[scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            verify=verify in _TRUE,
            ca_file=query.get("ca_file") or None,
            local_hostname=query.get("local_hostname") or None,
        )

    def redacted(self) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = {
            "verify": None if self.verify else "false",
            "ca_file": self.ca_file,
            "local_hostname": self.local_hostname,
        }
        shown_query = urlencode({k: v for k, v in query.items() if v is not None})
        return f"{self.scheme}://{auth}{host}:{self.port}" + (
            f"?{shown_query}" if shown_query else ""
        )


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A message ready for the wire: envelope plus flattened bytes."""

    sender: str
    recipient: str
    payload: bytes
    international: bool  # a non-ASCII address: needs the server's SMTPUTF8
    content: bytes  # what follows DATA's 354: the payload dot-stuffed, then "."


class _StaleConnection(Exception):
    """A kept connection turned out closed before any of the message was sent."""


@cache
def _fqdn() -> str:
    # smtplib would look this up on every connection; a slow resolver makes that costly.
    return socket.getfqdn()


def _close_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except OSError:
        pass


def _quit_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        _close_quietly(conn)


def _address(name: str | None, addr: str) -> Address:
    try:
        if addr.isascii():
            return Address(display_name=name or "", addr_spec=addr)  # raises on bad syntax
        # Address() refuses a non-ASCII local part, which SMTPUTF8 allows: check the syntax
        # with those characters stood in for, then build the address from its parts.
        Address(addr_spec="".join(c if c.isascii() else "x" for c in addr))
    except AttributeError:  # CPython's parser trips on some (an unclosed "a@[x")
        raise ValueError(f"invalid address {addr!r}") from None
    user, _, domain = addr.rpartition("@")
    return Address(display_name=name or "", username=user, domain=domain)


def _expect(code: int, reply: bytes, *accepted: int) -> None:
    if code not in accepted:
        raise smtplib.SMTPResponseException(code, reply)


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


class SmtpChannel:
    """Sends email through an SMTP relay; safe to share between threads."""

    type = "smtp"

    def __init__(
        self,
        name: str,
        *,
        url: str,
        from_: str,
        timeout: float = 30.0,
        max_connections: int = 4,
        message_id_domain: str | None = None,
    ) -> None:
        self.name = name
        self.url = SmtpUrl.parse(url)
        self._shown = self.url.redacted()
        self.from_ = from_
        self._sender = parseaddr(from_)[1]
        if "@" not in self._sender:
            raise ValueError(f"from: {from_!r} is not an email address")
        try:
            EmailMessage()["From"] = from_
        except (ValueError, MessageError) as exc:
            raise ValueError(f"from: {from_!r} is not a valid From header: {exc}") from None
        if message_id_domain is None:
            try:
                self.message_id_domain = message_id_domain_of(self._sender.rpartition("@")[2])
            except ValueError as exc:
                raise ValueError(
                    f"from: its domain cannot end a Message-ID ({exc}); set message_id_domain"
                ) from None
        else:
            try:
                self.message_id_domain = message_id_domain_of(message_id_domain)
            except ValueError as exc:
                raise ValueError(f"message_id_domain: {exc}") from None
        # Options may arrive as strings (from ${VAR}); say which one is wrong.
        try:
            self.timeout = float(timeout)
        except (TypeError, ValueError):
            self.timeout = 0.0
        if not self.timeout > 0:  # also refuses NaN
            raise ValueError(f"timeout: expected a number of seconds above 0, not {timeout!r}")
        try:
            self.max_connections = int(max_connections)
        except (TypeError, ValueError):
            self.max_connections = 0
        if self.max_connections < 1:
            raise ValueError(
                f"max_connections: expected a whole number from 1, not {max_connections!r}"
            )
        self._tls = self._tls_context() if self.url.scheme != "smtp" else None
        # the From header as the email package writes it (the fast writer reuses it)
        head = EmailMessage()
        head["From"] = from_
        self._from_line = head.as_bytes(policy=email_policy.SMTP).split(b"\r\n\r\n", 1)[0]
        self._from_line += b"\r\n"

        self._lock = threading.Lock()
        self._idle: list[smtplib.SMTP] = []  # LIFO: the last used is the least likely stale
        # one token per connection allowed: a send holds one while it uses a connection (a
        # SimpleQueue waits in C; a threading.Semaphore's Condition costs ~60 us a send
        # when the dispatcher's 8 send threads share 4 connections)
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self.max_connections):
            self._slots.put(None)
        self._closed = False

    def __repr__(self) -> str:
        return f"SmtpChannel(name={self.name!r}, url={self._shown!r}, from_={self.from_!r})"

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        outgoing = self._prepare(message)
        self._slots.get()
        try:
            reply = self._send(outgoing)
        finally:
            self._slots.put(None)
        header = self.message_id_header(message.message_id)
        log.debug("smtp channel %r: sent %s: %s", self.name, header, reply)
        # The reply to DATA usually carries the relay's queue id ("Ok: queued as 4F2A1").
        return Receipt(provider_id=reply or message.message_id, detail=f"Message-ID {header}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _quit_quietly(conn)

    # ------------------------------------------------------------------ building

    def message_id_header(self, message_id: str) -> str:
        """The Message-ID header for a message id: ``<id@domain>``, or ``<id>`` when the id
        has its ``@`` already. Raises ValueError."""
        mid = message_id.strip()
        if mid.startswith("<") and mid.endswith(">"):
            mid = mid[1:-1]
        if not MESSAGE_ID_RE.fullmatch(mid):
            raise ValueError(f"Message-ID {message_id!r} has spaces, quotes or brackets")
        return f"<{mid}>" if "@" in mid else f"<{mid}@{self.message_id_domain}>"

    def _headers(self, message: Message) -> dict[str, str]:
        """The caller's headers, checked; List-Unsubscribe's folded between its URIs.
        Raises ValueError."""
        out = {}
        for header, value in message.headers.items():
            if header.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {header!r} is written by the channel, not the caller")
            if header.lower() in _URI_LIST_HEADERS:
                # RFC 2369: angle-bracketed URIs, never encoded words; folded only between
                # them (written as given: see the policy in _prepare)
                if not value.isascii() or "\r" in value or "\n" in value:
                    raise ValueError(f"header {header!r} must be one line of ASCII")
                value = value.replace(">, <", ">,\r\n <")
            out[header] = value
        return out

    def build_email(self, message: Message, date: str | None = None) -> EmailMessage:
        """The email ``message`` becomes. Raises ValueError or an email.errors exception."""
        message_id = self.message_id_header(message.message_id)
        headers = self._headers(message)
        email = EmailMessage()
        email["From"] = self.from_
        email["To"] = _address(message.recipient_name, message.to)
        if message.title:
            email["Subject"] = message.title
        email["Date"] = date or format_datetime(datetime.now(UTC))
        email["Message-ID"] = message_id
        for header, value in headers.items():
            if header.lower() in _URI_LIST_HEADERS:
                email.set_raw(header, value)
                continue
            email[header] = value
        if message.text is not None and message.html is not None:
            email.set_content(message.text)
            email.add_alternative(message.html, subtype="html")
        elif message.text is not None:
            email.set_content(message.text)
        elif message.html is not None:
            email.set_content(message.html, subtype="html")
        else:
            raise ValueError("the message has neither text nor HTML")
        return email

    def flatten_fast(self, message: Message, date: str) -> bytes | None:
        """The message's bytes from the fast writer (:mod:`._smtp_fast`), the same as the
        email package's; None when it is not one that writer handles. Raises ValueError."""
        if not (self._sender + message.to).isascii():
            return None
        return _smtp_fast.flatten(
            from_line=self._from_line,
            to=message.to,
            recipient_name=message.recipient_name,
            title=message.title,
            date=date,
            message_id=self.message_id_header(message.message_id),
            headers=self._headers(message),
            raw_headers=_URI_LIST_HEADERS,
            text=message.text,
            html=message.html,
        )

    def flatten(self, message: Message, date: str) -> bytes:
        """The message's bytes, built with the email package. Raises ValueError or an
        email.errors exception."""
        email = self.build_email(message, date)
        # SMTPUTF8 writes addresses and headers as UTF-8 rather than encoded words.
        international = not (self._sender + message.to).isascii()
        policy = email_policy.SMTPUTF8 if international else email_policy.SMTP
        # headers set raw (List-Unsubscribe) are written as they are, not re-encoded
        policy = policy.clone(refold_source="none")
        with io.BytesIO() as buffer:
            BytesGenerator(buffer, policy=policy).flatten(email, linesep="\r\n")
            return buffer.getvalue()

    def _prepare(self, message: Message) -> _Outgoing:
        international = not (self._sender + message.to).isascii()
        try:
            date = _smtp_fast.date_now()
            payload = self.flatten_fast(message, date)
            if payload is None:
                payload = self.flatten(message, date)
        except (ValueError, TypeError, MessageError) as exc:
            # The same message would fail the same way next time: don't retry.
            raise DeliveryError(
                f"smtp channel {self.name!r}: cannot build the email: {exc}", permanent=True
            ) from exc
        return _Outgoing(
            self._sender, message.to, payload, international, _smtp_wire.content(payload)
        )

    # ------------------------------------------------------------------ sending

    def _send(self, out: _Outgoing) -> str:
        conn = self._take_idle()
        if conn is not None:
            try:
                return self._transaction(conn, out, reused=True)
            except _StaleConnection:
                log.debug("smtp channel %r: kept connection was closed; reconnecting", self.name)
        return self._transaction(self._connect(), out, reused=False)

    def _transaction(self, conn: smtplib.SMTP, out: _Outgoing, *, reused: bool) -> str:
        """MAIL, RCPT, DATA on ``conn``; returns the server's reply to the end of data. The
        three commands go out in one write when the server offers PIPELINING (RFC 2920),
        each after the previous reply otherwise; the content follows the 354. The
        connection goes back to the pool if it is still usable, else it is closed."""
        step = "MAIL FROM"
        try:
            utf8 = out.international
            mail = _smtp_wire.mail_command(
                out.sender, self._mail_options(conn, out), esmtp=conn.does_esmtp, utf8=utf8
            )
            rcpt = _smtp_wire.rcpt_command(out.recipient, utf8=utf8)
            if conn.does_esmtp and conn.has_extn("pipelining"):
                conn.send(mail + rcpt + _smtp_wire.DATA)
                _smtp_wire.read_pipelined(conn, reused)
                step = "DATA"
            else:
                conn.send(mail)
                _expect(*_smtp_wire.first_reply(conn, reused), 250)
                step = "RCPT TO"
                conn.send(rcpt)
                _expect(*conn.getreply(), 250, 251)
                step = "DATA"
                conn.send(_smtp_wire.DATA)
                _expect(*conn.getreply(), 354)
            conn.send(out.content)
            code, reply = conn.getreply()
            _expect(code, reply, 250)
        except _smtp_wire.Refused as refused:
            step, exc = refused.step, refused.exc
            self._after_refusal(conn, exc.smtp_code)
            raise self._refusal(step, exc) from exc
        except smtplib.SMTPResponseException as exc:
            self._after_refusal(conn, exc.smtp_code)
            raise self._refusal(step, exc) from exc
        except smtplib.SMTPNotSupportedError as exc:
            self._release(conn)  # nothing was sent on it: still good for other messages
            raise DeliveryError(f"smtp channel {self.name!r}: {exc}", permanent=True) from exc
        except smtplib.SMTPServerDisconnected as exc:
            _close_quietly(conn)
            step = getattr(exc, "step", step)  # a pipelined group's (_smtp_wire.Lost)
            if reused and step == "MAIL FROM":
                raise _StaleConnection from exc
            raise DeliveryError(
                f"smtp channel {self.name!r}: connection to {self.url.host} lost at {step}: {exc}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            _close_quietly(conn)
            raise DeliveryError(
                f"smtp channel {self.name!r}: {step} to {self.url.host} failed: {exc!r}"
            ) from exc
        self._release(conn)
        return _text(reply)

    def _refusal(self, step: str, exc: smtplib.SMTPResponseException) -> DeliveryError:
        return DeliveryError(
            f"smtp channel {self.name!r}: {self.url.host} refused {step}: "
            f"{exc.smtp_code} {_text(exc.smtp_error)}",
            permanent=500 <= exc.smtp_code <= 599,
            code=str(exc.smtp_code),
            address=step == "RCPT TO",
        )

    def _mail_options(self, conn: smtplib.SMTP, out: _Outgoing) -> list[str]:
        options = []
        if conn.does_esmtp and conn.has_extn("size"):
            options.append(f"SIZE={len(out.payload)}")
        if out.international:
            if not conn.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError(
                    f"{self.url.host} does not offer SMTPUTF8, needed for a non-ASCII address"
                )
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        return options

    def _after_refusal(self, conn: smtplib.SMTP, code: int) -> None:
        if code == 421:  # "closing the connection"
            _close_quietly(conn)
            return
        try:
            conn.rset()  # the connection is fine; only this transaction was refused
        except (OSError, smtplib.SMTPException):
            _close_quietly(conn)
        else:
            self._release(conn)

    def _connect(self) -> smtplib.SMTP:
        url = self.url
        log.debug("smtp channel %r: connecting to %s", self.name, self._shown)
        local_hostname = url.local_hostname or _fqdn()
        conn: smtplib.SMTP | None = None
        try:
            if url.scheme == "smtps":
                conn = smtplib.SMTP_SSL(
                    url.host,
                    url.port,
                    local_hostname=local_hostname,
                    timeout=self.timeout,
                    context=self._tls,
                )
            else:
                conn = smtplib.SMTP(
                    url.host, url.port, local_hostname=local_hostname, timeout=self.timeout
                )
            conn.ehlo()
            if url.scheme == "smtp+starttls":
                if not conn.has_extn("starttls"):
                    raise DeliveryError(
                        f"smtp channel {self.name!r}: {url.host} does not offer STARTTLS, "
                        "which an smtp+starttls URL requires"
                    )
                conn.starttls(context=self._tls)
                conn.ehlo()
            if url.username is not None:
                conn.login(url.username, url.password or "")
        except DeliveryError:
            if conn is not None:
                _close_quietly(conn)
            raise
        except smtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH refused; 535 is a bad user or password.
            if conn is not None:
                _close_quietly(conn)
            what = (
                f"login as {url.username!r}"
                if isinstance(exc, smtplib.SMTPAuthenticationError)
                else "the connection"
            )
            raise DeliveryError(
                f"smtp channel {self.name!r}: {url.host} refused {what}: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                permanent=500 <= exc.smtp_code <= 599,
                code=str(exc.smtp_code),
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            # The URL has a user but the server offers no AUTH: only a configuration
            # change can fix that.
            if conn is not None:
                _close_quietly(conn)
            raise DeliveryError(
                f"smtp channel {self.name!r}: {url.host}: {exc} (check the URL's scheme)",
                permanent=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            if conn is not None:
                _close_quietly(conn)
            raise DeliveryError(
                f"smtp channel {self.name!r}: cannot connect to {url.host}:{url.port}: {exc}"
            ) from exc
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.url.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"SMTP URL {self._shown}: cannot load ca_file: {exc}") from None
        if not self.url.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # ------------------------------------------------------------------ the pool

    def _take_idle(self) -> smtplib.SMTP | None:
        with self._lock:
            if self._closed:
                raise DeliveryError(f"smtp channel {self.name!r} is closed")
            return self._idle.pop() if self._idle else None

    def _release(self, conn: smtplib.SMTP) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        _quit_quietly(conn)
