"""The common email written directly, byte for byte as the ``email`` package writes it.

Building a message with ``EmailMessage`` and flattening it with ``BytesGenerator`` parses
every header into a tree and folds it back: most of the CPU an SMTP send costs. For the
usual message none of that changes anything: ASCII header values of single-spaced printable
words, each header line within 78 characters, a plain display name, a dot-atom address, and
one text part (plain or HTML) whose lines fit in 78 bytes (so ``7bit``, or ``8bit`` for
UTF-8 text, with no quoted-printable or base64). :func:`flatten` writes exactly those and
returns None for anything else, which the channel then builds with the ``email`` package.

That the bytes are the same is not assumed: tests/unit/test_smtp_fast.py generates messages
(ordinary and awkward ones) and compares this writer's output with the package's, and the
channel's integration tests parse what a real SMTP server (aiosmtpd) received.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

__all__ = ["date_now", "flatten"]

MAX_LINE = 78  # email.policy.SMTP.max_line_length
CRLF = b"\r\n"
# An unstructured value left as it is by the header parser and folder: printable ASCII
# words separated by single spaces, no encoded-word opener.
_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")
_NAME = re.compile(r"[A-Za-z0-9-]+")
# A display name of atoms only: never quoted.
_DISPLAY = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
_MSGID = re.compile(rf"<[A-Za-z0-9._-]+@{_LABEL}(?:\.{_LABEL})*>")


_date: tuple[int, str] = (0, "")


def date_now() -> str:
    """The Date header's value, ``format_datetime(datetime.now(UTC))``, made once a second
    (it costs ~10 us)."""
    global _date
    if _date[0] != (second := int(time.time())):
        _date = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date[1]


def _plain(value: str) -> bool:
    return _VALUE.fullmatch(value) is not None and "=?" not in value


def _line(name: str, value: str) -> bytes | None:
    line = f"{name}: {value}"
    if len(line) > MAX_LINE:
        return None
    return line.encode("ascii") + CRLF


def flatten(
    *,
    from_line: bytes,
    to: str,
    recipient_name: str | None,
    title: str | None,
    date: str,
    message_id: str,
    headers: Mapping[str, str],
    raw_headers: frozenset[str],
    text: str | None,
    html: str | None,
) -> bytes | None:
    """The message's bytes (CRLF line ends, for ``email.policy.SMTP``), or None when it is
    not one this writer is sure to write exactly as the ``email`` package would.
    ``from_line`` is the From header as the package writes it; ``headers`` the caller's
    (checked by the channel), those named in ``raw_headers`` (lower case) written as
    given; ``message_id`` the header's value, brackets included."""
    if (text is None) == (html is None):  # both (multipart) or neither: the package's
        return None
    out = [from_line]
    if not _ADDR.fullmatch(to):
        return None
    if recipient_name:
        if not _DISPLAY.fullmatch(recipient_name):
            return None
        to_value = f"{recipient_name} <{to}>"
    else:
        to_value = to
    lines = [("To", to_value)]
    if title:
        if not _plain(title):
            return None
        lines.append(("Subject", title))
    lines.append(("Date", date))
    if not _MSGID.fullmatch(message_id):
        return None
    lines.append(("Message-ID", message_id))
    for name, value in lines:
        b = _line(name, value)
        if b is None:
            return None
        out.append(b)
    for name, value in headers.items():
        if not _NAME.fullmatch(name):
            return None
        if name.lower() in raw_headers:
            # set_raw, refold_source="none": the value's lines joined by CRLF
            out.append(f"{name}: ".encode("ascii"))
            out.append("\r\n".join(value.splitlines()).encode("ascii") + CRLF)
            continue
        if value == "":
            out.append(f"{name}:".encode("ascii") + CRLF)
            continue
        if not _plain(value):
            return None
        b = _line(name, value)
        if b is None:
            return None
        out.append(b)
    body = text if text is not None else html
    assert body is not None
    body_lines = body.encode("utf-8", "surrogatepass").splitlines()
    if any(len(x) > MAX_LINE for x in body_lines):
        return None  # quoted-printable or base64: the package's
    if any(b"\r" in x for x in body_lines):  # pragma: no cover - splitlines took them
        return None
    try:
        body.encode("ascii")
        cte = b"7bit"
    except UnicodeEncodeError:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in body):
            return None
        cte = b"8bit"
    subtype = b"plain" if text is not None else b"html"
    out.append(b"Content-Type: text/" + subtype + b'; charset="utf-8"' + CRLF)
    out.append(b"Content-Transfer-Encoding: " + cte + CRLF)
    out.append(b"MIME-Version: 1.0" + CRLF)
    out.append(CRLF)
    out.append(CRLF.join(body_lines) + CRLF)
    return b"".join(out)
