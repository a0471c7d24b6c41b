"""The smtp channel's pipelined path (RFC 2920): MAIL, RCPT and DATA in one write when the
server offers PIPELINING, each after the previous reply when it does not.

Two real servers: aiosmtpd (which reads pipelined commands correctly and is made to offer
PIPELINING through its EHLO hook), and for what aiosmtpd cannot be made to do (hold its
replies until the whole group has arrived, accept DATA after refusing every recipient,
hang up after the end of data) a small scripted SMTP server on a socket, in a thread.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.smtp import SmtpChannel
from fakes.smtp_server import free_port, smtp_server  # tests/ is on sys.path (conftest.py)

FROM = "Acme Billing <billing@acme.test>"


def message(n: int | str = 1, **changes: Any) -> Message:
    fields: dict[str, Any] = {
        "to": "ada@example.test",
        "title": f"Invoice INV-{n} is due",
        "text": f"Hello Ada,\n.a line with a leading dot\nplease pay {n}.\n",
        "html": None,
        "message_id": f"m{n}@duly.test",
        "recipient_id": "r1",
        "recipient_name": "Ada Lovelace",
    }
    fields.update(changes)
    return Message(**fields)


@dataclass
class Handler:
    """aiosmtpd handler: offers PIPELINING when ``pipelining``; keeps what it receives
    (peer, MAIL FROM with its options, recipients, the content as received); answers RCPT
    and DATA with ``rcpt_replies`` / ``data_replies`` while there are any."""

    pipelining: bool = True
    received: list[tuple[Any, str, list[str], list[str], bytes]] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(
            (
                session.peer,
                str(envelope.mail_from),
                list(envelope.mail_options),
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"


@contextmanager
def channel_to(handler: Handler, **options: Any) -> Iterator[SmtpChannel]:
    with smtp_server(handler, **options) as (_, port):
        smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_=FROM, timeout=5)
        try:
            yield smtp
        finally:
            smtp.close()


# --------------------------------------------------------------------------- aiosmtpd


def test_the_same_message_arrives_with_and_without_pipelining() -> None:
    got = {}
    for pipelining in (False, True):
        handler = Handler(pipelining=pipelining)
        with channel_to(handler) as smtp:
            receipt = smtp.send(message(7))
            assert receipt.provider_id == "2.0.0 Ok: queued as Q1"
        [(_, mail_from, options, rcpt_tos, content)] = handler.received
        assert mail_from == "billing@acme.test"
        assert rcpt_tos == ["ada@example.test"]
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert parsed["Message-ID"] == "<m7@duly.test>"
        assert ".a line with a leading dot" in parsed.get_content()  # dot-stuffing undone
        assert options == [f"SIZE={len(content)}"]
        del parsed["Date"]
        got[pipelining] = parsed.as_bytes()
    assert got[True] == got[False]


def test_many_messages_on_kept_connections() -> None:
    handler = Handler()
    with channel_to(handler) as smtp:
        threads = [
            threading.Thread(target=lambda k=k: [smtp.send(message(f"{k}-{i}")) for i in range(10)])
            for k in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ids = sorted(
        email.message_from_bytes(r[4], policy=email.policy.default)["Message-ID"]
        for r in handler.received
    )
    assert ids == sorted(f"<m{k}-{i}@duly.test>" for k in range(6) for i in range(10))
    assert len({r[0] for r in handler.received}) <= 4  # max_connections


@pytest.mark.parametrize(
    ("rcpt", "data", "step", "code", "permanent"),
    [
        ("550 5.1.1 No such user here", None, "RCPT TO", "550", True),
        ("451 4.3.0 Try again later", None, "RCPT TO", "451", False),
        (None, "554 5.6.0 Message rejected", "DATA", "554", True),
        (None, "451 4.3.0 Local problem", "DATA", "451", False),
    ],
)
def test_a_refusal_inside_a_pipelined_group(
    rcpt: str | None, data: str | None, step: str, code: str, permanent: bool
) -> None:
    handler = Handler(rcpt_replies=[rcpt] if rcpt else [], data_replies=[data] if data else [])
    with channel_to(handler) as smtp:
        with pytest.raises(DeliveryError) as info:
            smtp.send(message(1))
        assert f"refused {step}: {code}" in str(info.value)
        assert info.value.code == code
        assert info.value.permanent is permanent
        assert info.value.address is (step == "RCPT TO")
        smtp.send(message(2))  # the connection was reset and kept
        smtp.send(message(3))
    assert [r[3] for r in handler.received] == [["ada@example.test"]] * 2
    assert len({r[0] for r in handler.received}) == 1


def test_a_421_inside_a_pipelined_group_closes_the_connection() -> None:
    handler = Handler(rcpt_replies=["421 4.7.0 Too busy, closing"])
    with channel_to(handler) as smtp:
        with pytest.raises(DeliveryError) as info:
            smtp.send(message(1))
        assert info.value.code == "421"
        assert not info.value.permanent
        smtp.send(message(2))
    assert len(handler.received) == 1


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_connection_dropped_between_messages_is_replaced_once(pipelining: bool) -> None:
    # aiosmtpd closes a connection idle for `timeout` seconds, as real servers do.
    handler = Handler(pipelining=pipelining)
    with channel_to(handler, timeout=0.1) as smtp:
        smtp.send(message(1))
        time.sleep(0.3)
        smtp.send(message(2))
    first, second = handler.received
    assert first[0] != second[0]
    assert [b"m2@duly.test" in second[4], b"m1@duly.test" in first[4]] == [True, True]


# --------------------------------------------------------------------------- scripted server


@dataclass
class Script:
    """How the scripted server behaves (per connection, the same for every connection)."""

    pipelining: bool = True
    hold_group: bool = False  # answer MAIL only once RCPT and DATA have arrived too
    rcpt: bytes = b"250 2.1.5 Ok"
    data: bytes = b"354 go ahead"  # even when every recipient was refused
    hang_up_after_dot: bool = False  # close without answering the end of data
    hang_up_when_idle: bool = False  # close the first connection after its first message
    connections: int = 0
    messages: list[bytes] = field(default_factory=list)  # contents whose dot was answered
    dots: int = 0  # end-of-data lines received, answered or not
    commands: list[bytes] = field(default_factory=list)


@contextmanager
def scripted(script: Script) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket, n: int) -> None:
        with conn, conn.makefile("rb") as r:
            conn.sendall(b"220 scripted ESMTP\r\n")
            held: list[bytes] = []
            while line := r.readline():
                verb = line[:4].upper()
                script.commands.append(line.rstrip(b"\r\n"))
                if verb == b"EHLO":
                    ext = b"250-PIPELINING\r\n" if script.pipelining else b""
                    conn.sendall(b"250-scripted\r\n" + ext + b"250 SIZE 1000000\r\n")
                elif verb in (b"MAIL", b"RCPT") and script.hold_group:
                    held.append(b"250 2.1.0 Ok" if verb == b"MAIL" else script.rcpt)
                elif verb == b"MAIL":
                    conn.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    conn.sendall(script.rcpt + b"\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"".join(x + b"\r\n" for x in [*held, script.data]))
                    held = []
                    if not script.data.startswith(b"354"):
                        continue
                    body = []
                    while (part := r.readline()) not in (b".\r\n", b""):
                        body.append(part)
                    script.dots += 1
                    if script.hang_up_after_dot:
                        return
                    script.messages.append(b"".join(body))
                    conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                    if script.hang_up_when_idle and n == 1:
                        return  # silently, as after an idle timeout
                elif verb == b"RSET":
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")

    def accept() -> None:
        workers = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            script.connections += 1
            t = threading.Thread(target=serve, args=(conn, script.connections), daemon=True)
            t.start()
            workers.append(t)
        for t in workers:
            t.join(5)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()


def scripted_channel(port: int, timeout: float = 5) -> SmtpChannel:
    return SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_=FROM, timeout=timeout)


def test_the_group_goes_out_before_any_reply() -> None:
    # The server answers MAIL only after RCPT and DATA arrived: a client waiting for
    # MAIL's reply before sending RCPT would time out.
    script = Script(hold_group=True)
    with scripted(script) as port:
        smtp = scripted_channel(port, timeout=2)
        smtp.send(message(1))
        smtp.send(message(2))
        smtp.close()
    assert len(script.messages) == 2
    assert script.commands[1:4] == [
        b"mail FROM:<billing@acme.test> SIZE=" + script.commands[1].split(b"SIZE=")[1],
        b"rcpt TO:<ada@example.test>",
        b"data",
    ]


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    script = Script(pipelining=False, hold_group=True)
    with scripted(script) as port:
        smtp = scripted_channel(port, timeout=0.5)
        with pytest.raises(DeliveryError, match="lost at MAIL FROM") as info:
            smtp.send(message(1))
        assert not info.value.permanent
        smtp.close()
    assert script.messages == []
    assert script.dots == 0


def test_data_accepted_after_every_recipient_was_refused_gets_an_empty_message() -> None:
    script = Script(rcpt=b"550 5.1.1 No such user", data=b"354 go ahead anyway")
    with scripted(script) as port:
        smtp = scripted_channel(port)
        with pytest.raises(DeliveryError, match="refused RCPT TO: 550") as info:
            smtp.send(message(1))
        assert info.value.permanent and info.value.address
        smtp.close()
    assert script.messages == [b""]  # the end-of-data line alone: no content went out
    assert script.commands[-2:] == [b"rset", b"quit"]


def test_a_connection_lost_after_the_content_is_not_sent_again() -> None:
    # Ambiguous: the server may have delivered it. Temporary, and no second copy now.
    script = Script(hang_up_after_dot=True)
    with scripted(script) as port:
        smtp = scripted_channel(port)
        with pytest.raises(DeliveryError, match="lost at DATA") as info:
            smtp.send(message(1))
        assert not info.value.permanent
        smtp.close()
    assert script.dots == 1
    assert script.connections == 1


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_kept_connection_closed_silently_is_replaced_before_anything_is_sent(
    pipelining: bool,
) -> None:
    script = Script(pipelining=pipelining, hang_up_when_idle=True)
    with scripted(script) as port:
        smtp = scripted_channel(port)
        smtp.send(message(1))
        time.sleep(0.1)  # the server has closed the kept connection by now
        smtp.send(message(2))  # found closed at MAIL's reply: sent on a new one, once
        smtp.close()
    assert script.connections == 2
    assert len(script.messages) == 2
    assert script.dots == 2


def test_server_down_is_temporary() -> None:
    smtp = scripted_channel(free_port(), timeout=2)
    with pytest.raises(DeliveryError, match="cannot connect"):
        smtp.send(message(1))


# --------------------------------------------------------------------------- TLS and AUTH


def test_pipelining_over_starttls_with_login(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any):  # noqa: ANN202
        return AuthResult(success=data == LoginPassword(b"alice", b"pw"), handled=False)

    handler = Handler()
    options = {"tls_context": context, "require_starttls": True, "auth_required": True}
    with smtp_server(handler, authenticator=login, **options) as (_, port):
        url = f"smtp+starttls://alice:pw@127.0.0.1:{port}?ca_file={cert}"
        smtp = SmtpChannel("email", url=url, from_=FROM, timeout=5)
        for i in range(3):
            smtp.send(message(i))
        handler.rcpt_replies = ["550 5.1.1 No such user here"]
        with pytest.raises(DeliveryError, match="refused RCPT TO: 550"):
            smtp.send(message(3))
        smtp.send(message(4))
        [conn] = smtp._idle
        assert conn.has_extn("pipelining") and conn.sock.version()  # pipelined, over TLS
        smtp.close()
    assert len(handler.received) == 4
    assert len({r[0] for r in handler.received}) == 1
