"""``_smtp_wire`` writes what smtplib writes: the same MAIL, RCPT and DATA bytes, compared
with what ``smtplib.SMTP.mail``/``rcpt``/``data`` really send over a socket pair, for
ordinary and hostile addresses and payloads."""

from __future__ import annotations

import random
import smtplib
import socket
import threading
from collections.abc import Iterator

import pytest

from duly.delivery.channels import _smtp_wire

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
HOSTILE = ATEXT + '. "()<>@,;:\\[]\tédž'


def addresses(rng: random.Random, n: int) -> list[str]:
    out = [
        "ada@example.test",
        "a.b.c@d.e",
        ".a@b",
        "a.@b",
        "a..b@c",
        "a@b..c",
        "a@-b",
        "a@b.",
        "@b",
        "a@",
        "",
        '"a b"@c',
        "Ada <ada@example.test>",
        "ada@[192.0.2.1]",
        "a(comment)@b",
    ]
    for _ in range(n):
        alphabet = ATEXT + "." if rng.random() < 0.7 else HOSTILE
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        domain = ".".join(
            "".join(rng.choice("abz09-" if rng.random() < 0.9 else HOSTILE) for _ in range(3))
            for _ in range(rng.randint(1, 3))
        )
        out.append(f"{local}@{domain}")
    return out


@pytest.fixture
def wire() -> Iterator[tuple[smtplib.SMTP, socket.socket]]:
    """An smtplib connection whose socket's other end is the test's."""
    ours, theirs = socket.socketpair()
    conn = smtplib.SMTP()
    conn.sock = ours
    conn.ehlo_resp = b"x"
    conn.does_esmtp = True
    conn.esmtp_features = {"size": "1000000", "smtputf8": "", "pipelining": ""}
    theirs.settimeout(5)
    yield conn, theirs
    conn.close()
    theirs.close()


def sent(theirs: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += theirs.recv(65536)
    return got


def test_addresses_are_quoted_as_smtplib_quotes_them() -> None:
    rng = random.Random()
    for address in addresses(rng, 3000):
        assert _smtp_wire.quote_address(address) == smtplib.quoteaddr(address), address


def test_mail_and_rcpt_are_the_bytes_smtplib_sends(
    wire: tuple[smtplib.SMTP, socket.socket],
) -> None:
    conn, theirs = wire
    rng = random.Random()
    for address in addresses(rng, 300):
        if not address.isascii():
            continue
        for options in ([], ["SIZE=123"]):
            theirs.sendall(b"250 ok\r\n250 ok\r\n")
            conn.mail(address, options)
            conn.rcpt(address)
            ours = _smtp_wire.mail_command(address, options, esmtp=True, utf8=False)
            ours += _smtp_wire.rcpt_command(address, utf8=False)
            assert sent(theirs, len(ours)) == ours
    # SMTPUTF8: the commands as UTF-8
    theirs.sendall(b"250 ok\r\n250 ok\r\n")
    conn.mail("bücher@exämple.test", ["SMTPUTF8", "BODY=8BITMIME"])
    conn.rcpt("jürgen@exämple.test")
    ours = _smtp_wire.mail_command(
        "bücher@exämple.test", ["SMTPUTF8", "BODY=8BITMIME"], esmtp=True, utf8=True
    )
    ours += _smtp_wire.rcpt_command("jürgen@exämple.test", utf8=True)
    assert sent(theirs, len(ours)) == ours
    # no options to a server that is not ESMTP
    conn.does_esmtp = False
    theirs.sendall(b"250 ok\r\n")
    conn.mail("a@b", ["SIZE=1"])
    ours = _smtp_wire.mail_command("a@b", ["SIZE=1"], esmtp=False, utf8=False)
    assert ours == b"mail FROM:<a@b>\r\n"
    assert sent(theirs, len(ours)) == ours


@pytest.mark.parametrize(
    "payload",
    [
        b"Subject: x\r\n\r\nhello\r\n",
        b"Subject: x\r\n\r\nno final line end",
        b".starts with a dot\r\n.\r\n..\r\nmid . dot\r\n.",
        b"",
        b"\r\n",
        "Subject: ü\r\n\r\nnon-ASCII bödy\r\n".encode(),
        b"a\r\n" * 5000 + b".end\r\n",
    ],
)
def test_the_content_is_what_smtplib_sends_after_354(
    wire: tuple[smtplib.SMTP, socket.socket], payload: bytes
) -> None:
    conn, theirs = wire
    theirs.sendall(b"354 go\r\n250 ok\r\n")
    t = threading.Thread(target=conn.data, args=(payload,))
    t.start()
    ours = _smtp_wire.DATA + _smtp_wire.content(payload)
    assert sent(theirs, len(ours)) == ours
    t.join(5)


@pytest.mark.parametrize("to", ["0@[", "a@[x", "bü@[x"])
def test_an_address_the_email_package_trips_on_cannot_be_built(to: str) -> None:
    # CPython's header parser raises AttributeError on an unclosed domain literal; the
    # channel reports what it cannot build as permanent, like any other bad address.
    from duly.delivery.channels.base import DeliveryError, Message
    from duly.delivery.channels.smtp import SmtpChannel

    smtp = SmtpChannel("email", url="smtp://127.0.0.1:1", from_="a@b.test")
    m = Message(to=to, title="t", text="x\n", html=None, message_id="m1", recipient_id="r")
    with pytest.raises(DeliveryError, match="cannot build the email") as info:
        smtp.send(m)
    assert info.value.permanent


def test_the_date_made_once_a_second_is_the_current_one() -> None:
    import time
    from datetime import UTC, datetime
    from email.utils import format_datetime

    from duly.delivery.channels import _smtp_fast

    for _ in range(12):
        before = format_datetime(datetime.now(UTC))
        got = _smtp_fast.date_now()
        assert got in (before, format_datetime(datetime.now(UTC)))
        time.sleep(0.1)
