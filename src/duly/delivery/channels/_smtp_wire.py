"""The bytes of one SMTP transaction, as ``smtplib`` writes them, made without its layers.

``SmtpChannel`` keeps ``smtplib`` for connecting (greeting, EHLO, STARTTLS, AUTH), for
reading replies (``getreply``) and for writing (``send``: its errors are the channel's
rules), but writes MAIL, RCPT and DATA itself so that, when the server offers PIPELINING
(RFC 2920), the three go out in one write and their replies are read after; the message
content follows the 354 in a second write. Without PIPELINING each command waits for its
reply, as before. What goes on the wire is byte for byte what ``smtplib.SMTP.mail``,
``rcpt`` and ``data`` send (``tests/unit/test_smtp_wire.py`` compares them).

``smtplib.quoteaddr`` parses every address with ``email.utils.parseaddr`` (tens of
microseconds); a plain dot-atom address, which that parser returns unchanged, is written
directly.
"""

from __future__ import annotations

import re
import smtplib

__all__ = [
    "Refused",
    "Lost",
    "content",
    "first_reply",
    "mail_command",
    "quote_address",
    "rcpt_command",
    "read_pipelined",
]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_LEADING_DOT = re.compile(rb"(?m)^\.")

DATA = b"data\r\n"


def quote_address(address: str) -> str:
    """``smtplib.quoteaddr(address)``: ``<address>`` for a dot-atom address."""
    if _DOT_ATOM_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def mail_command(sender: str, options: list[str], *, esmtp: bool, utf8: bool) -> bytes:
    """The MAIL command ``smtplib.SMTP.mail(sender, options)`` sends (options only to an
    ESMTP server, encoded as UTF-8 once SMTPUTF8 is among them). Raises
    UnicodeEncodeError for a non-ASCII address without ``utf8``."""
    optionlist = " " + " ".join(options) if options and esmtp else ""
    line = f"mail FROM:{quote_address(sender)}{optionlist}\r\n"
    return line.encode("utf-8" if utf8 else "ascii")


def rcpt_command(recipient: str, *, utf8: bool) -> bytes:
    """The RCPT command ``smtplib.SMTP.rcpt(recipient)`` sends."""
    return f"rcpt TO:{quote_address(recipient)}\r\n".encode("utf-8" if utf8 else "ascii")


def content(payload: bytes) -> bytes:
    """What ``smtplib.SMTP.data(payload)`` sends after the 354: leading dots doubled, a
    final CRLF ensured, then the end-of-data line."""
    q = _LEADING_DOT.sub(b"..", payload)
    if q[-2:] != b"\r\n":
        q += b"\r\n"
    return q + b".\r\n"


class Refused(Exception):
    """A pipelined command was refused: ``step`` says which, ``exc`` carries the reply."""

    def __init__(self, step: str, exc: smtplib.SMTPResponseException) -> None:
        super().__init__(step)
        self.step = step
        self.exc = exc


def first_reply(conn: smtplib.SMTP, reused: bool) -> tuple[int, bytes]:
    """The reply to MAIL; on a kept connection a 421 means the server said goodbye to it
    while it was idle, before our command: SMTPServerDisconnected, as for a closed one."""
    code, reply = conn.getreply()
    if code == 421 and reused:
        raise smtplib.SMTPServerDisconnected(" ".join(reply.decode("utf-8", "replace").split()))
    return code, reply


class Lost(smtplib.SMTPServerDisconnected):
    """The connection closed while the replies to a pipelined group were read: ``step``
    says whose reply was missing."""

    def __init__(self, step: str, text: str) -> None:
        super().__init__(text)
        self.step = step


_STEPS = (("MAIL FROM", (250,)), ("RCPT TO", (250, 251)), ("DATA", (354,)))


def read_pipelined(conn: smtplib.SMTP, reused: bool) -> None:
    """Reads the replies to MAIL, RCPT, DATA sent in one write. Returns once DATA got its
    354; else raises :class:`Refused` for the first refusal (a server that hangs up after
    a refusal, or after a 421, is not asked for more), or :class:`Lost` when the connection
    closed before any refusal. A server that accepted DATA after refusing MAIL or RCPT is
    sent the end-of-data line alone (an empty message to no one), as RFC 2920 (3.1) says."""
    refused: Refused | None = None
    code = 0
    for step, accepted in _STEPS:
        try:
            code, reply = first_reply(conn, reused) if step == "MAIL FROM" else conn.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            if refused is not None:
                break
            raise Lost(step, str(exc)) from exc
        except smtplib.SMTPResponseException as exc:  # a reply line too long
            raise refused or Refused(step, exc) from exc
        if refused is None and code not in accepted:
            refused = Refused(step, smtplib.SMTPResponseException(code, reply))
            if code == 421:  # the server is closing the connection
                break
    if refused is None:
        return
    if code == 354:
        try:
            conn.send(b".\r\n")
            conn.getreply()
        except (OSError, smtplib.SMTPException):
            pass  # the refusal is the outcome; the connection is found closed after it
    raise refused
