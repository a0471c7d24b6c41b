"""The smtp channel against a real SMTP server: aiosmtpd on 127.0.0.1, in a thread.

TLS tests use a throwaway self-signed certificate made with the openssl command line
(no Python package needed); they are skipped where openssl is missing.
"""

from __future__ import annotations

import email
import email.policy
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.smtp import SmtpChannel
from duly.delivery.rendering import Renderer

FROM = "Acme Billing <billing@acme.test>"
PASSWORD = "s3cr3t-Pa55"


# --------------------------------------------------------------------------- the server


@dataclass
class Received:
    peer: Any  # (host, port) of the client: the same for sends on one connection
    authenticated: bool
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives. ``rcpt_replies`` and
    ``data_replies`` are answers to give (one per message, in order) instead of accepting."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        # On the wire lines end in CRLF; a mailbox stores them as \n.
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                session.peer,
                bool(session.authenticated),
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                message,
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_server(handler: Recorder | None = None, **options: Any) -> Iterator[tuple[Recorder, int]]:
    """A running aiosmtpd server; ``options`` go to aiosmtpd's Controller/SMTP."""
    handler = handler or Recorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def check_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"alice", PASSWORD.encode())
    # handled=False: aiosmtpd answers the failure (535) itself.
    return AuthResult(success=ok, handled=False)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        + ["-keyout", str(files.key), "-out", str(files.cert)],
        check=True,
        capture_output=True,
    )
    return files


def message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "to": "ada@example.test",
        "title": "Invoice INV-7 is due",
        "text": "Hello Ada,\nplease pay.\n",
        "html": None,
        "message_id": "d-42.invoice-reminders.due-soon@duly.test",
        "recipient_id": "r1",
        "recipient_name": "Ada Lovelace",
        "headers": {"X-Duly-Delivery": "42", "X-Duly-Rule": "invoice-reminders"},
    }
    fields.update(changes)
    return Message(**fields)


@pytest.fixture
def server() -> Iterator[tuple[Recorder, int]]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def channel(server: tuple[Recorder, int]) -> Iterator[SmtpChannel]:
    smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{server[1]}", from_=FROM, timeout=5)
    yield smtp
    smtp.close()


# --------------------------------------------------------------------------- the email


def test_rendered_message_arrives_with_headers_and_both_parts(
    server: tuple[Recorder, int], channel: SmtpChannel, tmp_path: Path
) -> None:
    (tmp_path / "due.email.txt").write_text("Subject: Invoice {{ key }} is due\n\nPay {{ key }}.\n")
    (tmp_path / "due.email.html").write_text(
        "<html><head><style>p { color: red }</style></head><body><p>Pay {{ key }}.</p></body></html>"
    )
    rendered = Renderer(tmp_path).render("due", "email", {"key": "INV-7"})
    receipt = channel.send(message(title=rendered.title, text=rendered.text, html=rendered.html))

    recorder, _ = server
    [got] = recorder.received
    assert got.mail_from == "billing@acme.test"
    assert got.rcpt_tos == ["ada@example.test"]
    mail = got.message
    assert mail["Message-ID"] == "<d-42.invoice-reminders.due-soon@duly.test>"
    assert mail["From"] == FROM
    assert mail["To"] == "Ada Lovelace <ada@example.test>"
    assert mail["Subject"] == "Invoice INV-7 is due"
    assert mail["Date"].datetime is not None
    assert mail["X-Duly-Delivery"] == "42"
    assert mail["X-Duly-Rule"] == "invoice-reminders"
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = mail.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content() == "Pay INV-7.\n"
    assert html.get_content_type() == "text/html"
    assert '<p style="color: red;">Pay INV-7.</p>' in html.get_content()
    assert receipt.provider_id == "2.0.0 Ok: queued as Q1"
    assert receipt.detail == "Message-ID <d-42.invoice-reminders.due-soon@duly.test>"


BARE_ID = "2c9949f0a4b1c2d3e4f5061728394a5b"  # what the dispatcher stores: no @domain


def test_a_bare_id_gets_the_senders_domain(
    server: tuple[Recorder, int], channel: SmtpChannel
) -> None:
    """RFC 5322 §3.6.4: msg-id is id-left@id-right; Python's parser flags one without."""
    receipt = channel.send(message(message_id=BARE_ID))
    [got] = server[0].received
    header = got.message["Message-ID"]
    assert header == f"<{BARE_ID}@acme.test>"
    assert header.defects == ()
    assert receipt.detail == f"Message-ID <{BARE_ID}@acme.test>"


def test_the_message_id_domain_option(server: tuple[Recorder, int]) -> None:
    config = ChannelConfig(
        "email",
        "smtp",
        {
            "url": f"smtp://127.0.0.1:{server[1]}",
            "from": FROM,
            "message_id_domain": "Mail.Example.ORG",
        },
    )
    smtp = build_channel(config)
    smtp.send(message(message_id=BARE_ID))
    smtp.send(message(message_id="given@elsewhere.test"))  # a whole id is kept as it is
    smtp.close()
    first, second = (r.message["Message-ID"] for r in server[0].received)
    assert first == f"<{BARE_ID}@mail.example.org>" and first.defects == ()
    assert second == "<given@elsewhere.test>"


def test_an_international_senders_domain_is_written_in_ascii(
    server: tuple[Recorder, int],
) -> None:
    smtp = SmtpChannel(
        "email", url=f"smtp://127.0.0.1:{server[1]}", from_="billing@bücher.example", timeout=5
    )
    assert smtp.message_id_domain == "xn--bcher-kva.example"
    literal = SmtpChannel("email", url="smtp://h", from_="duly@[192.0.2.7]", timeout=5)
    assert literal.message_id_header("abc") == "<abc@[192.0.2.7]>"


@pytest.mark.parametrize(
    "domain", ["", "has space.test", "a@b.test", "<x>", "dot..dot", ".lead", "x" * 300]
)
def test_a_bad_message_id_domain_is_refused_at_load(domain: str) -> None:
    config = ChannelConfig(
        "email", "smtp", {"url": "smtp://h", "from": FROM, "message_id_domain": domain}
    )
    with pytest.raises(ChannelConfigError, match="message_id_domain: "):
        build_channel(config)


def test_text_only_and_html_only(server: tuple[Recorder, int], channel: SmtpChannel) -> None:
    channel.send(message(text="just text\n", html=None))
    channel.send(message(text=None, html="<p>just html</p>"))
    text_only, html_only = (r.message for r in server[0].received)
    assert text_only.get_content_type() == "text/plain"
    assert text_only.get_content() == "just text\n"
    assert html_only.get_content_type() == "text/html"
    assert html_only.get_content().strip() == "<p>just html</p>"


def test_non_ascii_names_subject_and_address(
    server: tuple[Recorder, int], channel: SmtpChannel
) -> None:
    channel.send(
        message(
            to="jürgen@exämple.test",
            recipient_name="Jürgen Groß",
            title="Zahlung fällig – 12 €",
            text="Grüße\n",
        )
    )
    [got] = server[0].received
    assert got.rcpt_tos == ["jürgen@exämple.test"]
    assert got.message["To"] == "Jürgen Groß <jürgen@exämple.test>"
    assert got.message["Subject"] == "Zahlung fällig – 12 €"
    assert got.message.get_content() == "Grüße\n"


def test_non_ascii_address_without_smtputf8_is_permanent() -> None:
    with smtp_server(enable_SMTPUTF8=False) as (recorder, port):
        smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_=FROM, timeout=5)
        with pytest.raises(DeliveryError, match="SMTPUTF8") as info:
            smtp.send(message(to="jürgen@exämple.test"))
        assert info.value.permanent
        smtp.send(message())  # the connection is still good for others
        smtp.close()
    assert len(recorder.received) == 1


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"to": "not an address"}, "cannot build the email"),
        ({"text": None, "html": None}, "neither text nor HTML"),
        ({"headers": {"Message-ID": "<other@x>"}}, "written by the channel"),
        ({"headers": {"X-Evil": "a\r\nBcc: someone@example.test"}}, "linefeed"),
        ({"message_id": "has space@duly.test"}, "Message-ID"),
    ],
)
def test_a_message_that_cannot_be_built_is_permanent(
    server: tuple[Recorder, int], channel: SmtpChannel, changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(DeliveryError, match=problem) as info:
        channel.send(message(**changes))
    assert info.value.permanent
    assert server[0].received == []


# --------------------------------------------------------------------------- connections


def test_one_connection_is_reused_across_sends(
    server: tuple[Recorder, int], channel: SmtpChannel
) -> None:
    for i in range(3):
        channel.send(message(message_id=f"m{i}@duly.test"))
    peers = {r.peer for r in server[0].received}
    assert len(server[0].received) == 3
    assert len(peers) == 1


def test_reconnects_when_the_server_dropped_an_idle_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="duly")
    # aiosmtpd closes a connection idle for `timeout` seconds, like real servers do.
    with smtp_server(timeout=0.1) as (recorder, port):
        smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_=FROM, timeout=5)
        smtp.send(message(message_id="first@duly.test"))
        time.sleep(0.3)
        smtp.send(message(message_id="second@duly.test"))
        smtp.close()
    first, second = recorder.received
    assert second.message["Message-ID"] == "<second@duly.test>"
    assert first.peer != second.peer
    assert "kept connection was closed; reconnecting" in caplog.text


def test_concurrent_sends_share_a_bounded_pool() -> None:
    with smtp_server() as (recorder, port):
        smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_=FROM, max_connections=2)
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(5):
                    smtp.send(message(message_id=f"w{n}-{i}@duly.test"))
            except BaseException as exc:  # reported below; a thread can't fail the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        smtp.close()
    assert errors == []
    ids = sorted(r.message["Message-ID"] for r in recorder.received)
    assert ids == sorted(f"<w{n}-{i}@duly.test>" for n in range(6) for i in range(5))
    assert len({r.peer for r in recorder.received}) <= 2


def test_closed_channel_refuses_to_send(server: tuple[Recorder, int], channel: SmtpChannel) -> None:
    channel.send(message())
    channel.close()
    with pytest.raises(DeliveryError, match="closed") as info:
        channel.send(message())
    assert not info.value.permanent


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("rcpt", "data", "code", "permanent"),
    [
        ("451 4.3.0 Try again later", None, "451", False),
        (None, "451 4.3.0 Local problem, try later", "451", False),
        ("550 5.1.1 No such user here", None, "550", True),
        (None, "554 5.6.0 Message rejected", "554", True),
        ("421 4.7.0 Too busy, closing", None, "421", False),
    ],
)
def test_server_refusals_map_to_permanent_or_temporary(
    server: tuple[Recorder, int],
    channel: SmtpChannel,
    rcpt: str | None,
    data: str | None,
    code: str,
    permanent: bool,
) -> None:
    recorder, _ = server
    recorder.rcpt_replies = [rcpt] if rcpt else []
    recorder.data_replies = [data] if data else []
    with pytest.raises(DeliveryError) as info:
        channel.send(message())
    assert info.value.permanent is permanent
    assert info.value.code == code
    assert ("RCPT TO" if rcpt else "DATA") in str(info.value)
    # The next message goes through (on the same connection unless the server closed it).
    channel.send(message(message_id="next@duly.test"))
    assert [r.message["Message-ID"] for r in recorder.received] == ["<next@duly.test>"]


def test_refused_recipient_keeps_the_connection(
    server: tuple[Recorder, int], channel: SmtpChannel
) -> None:
    recorder, _ = server
    channel.send(message(message_id="a@duly.test"))
    recorder.rcpt_replies = ["550 5.1.1 No such user here"]
    with pytest.raises(DeliveryError):
        channel.send(message(message_id="b@duly.test"))
    channel.send(message(message_id="c@duly.test"))
    assert len({r.peer for r in recorder.received}) == 1


def test_server_down_is_temporary() -> None:
    smtp = SmtpChannel("email", url=f"smtp://127.0.0.1:{free_port()}", from_=FROM, timeout=2)
    with pytest.raises(DeliveryError, match="cannot connect to 127.0.0.1") as info:
        smtp.send(message())
    assert not info.value.permanent


# --------------------------------------------------------------------------- TLS and AUTH


def test_starttls_with_login(tls: TlsFiles) -> None:
    options: dict[str, Any] = {
        "tls_context": tls.server_context(),
        "require_starttls": True,
        "auth_required": True,
        "authenticator": check_login,
    }
    with smtp_server(**options) as (recorder, port):
        url = f"smtp+starttls://alice:{PASSWORD}@127.0.0.1:{port}?verify=false"
        smtp = SmtpChannel("email", url=url, from_=FROM, timeout=5)
        smtp.send(message())

        bad = SmtpChannel(
            "email",
            url=f"smtp+starttls://alice:wrong@127.0.0.1:{port}?verify=false",
            from_=FROM,
            timeout=5,
        )
        with pytest.raises(DeliveryError, match="refused login as 'alice': 535") as info:
            bad.send(message())
        assert info.value.permanent
        assert info.value.code == "535"
        smtp.close()
        bad.close()
    assert [r.authenticated for r in recorder.received] == [True]


def test_starttls_verifies_the_certificate_against_ca_file(tls: TlsFiles) -> None:
    with smtp_server(tls_context=tls.server_context(), require_starttls=True) as (recorder, port):
        trusted = SmtpChannel(
            "email", url=f"smtp+starttls://127.0.0.1:{port}?ca_file={tls.cert}", from_=FROM
        )
        trusted.send(message())
        trusted.close()

        untrusted = SmtpChannel(
            "email", url=f"smtp+starttls://127.0.0.1:{port}", from_=FROM, timeout=5
        )
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED") as info:
            untrusted.send(message())
        assert not info.value.permanent
    assert len(recorder.received) == 1


def test_starttls_required_but_not_offered_is_not_sent_in_the_clear(
    server: tuple[Recorder, int],
) -> None:
    smtp = SmtpChannel("email", url=f"smtp+starttls://127.0.0.1:{server[1]}", from_=FROM, timeout=5)
    with pytest.raises(DeliveryError, match="does not offer STARTTLS") as info:
        smtp.send(message())
    assert not info.value.permanent
    assert server[0].received == []


def test_smtps_implicit_tls_with_login(tls: TlsFiles) -> None:
    options: dict[str, Any] = {
        "ssl_context": tls.server_context(),
        "authenticator": check_login,
        # aiosmtpd only counts STARTTLS as TLS, so it must be told AUTH is fine on a
        # connection that is TLS from the first byte. (With auth_required too it warns.)
        "auth_require_tls": False,
    }
    with smtp_server(**options) as (recorder, port):
        url = f"smtps://alice:{PASSWORD}@127.0.0.1:{port}?ca_file={tls.cert}"
        smtp = SmtpChannel("email", url=url, from_=FROM, timeout=5)
        for i in range(2):
            smtp.send(message(message_id=f"s{i}@duly.test"))
        smtp.close()

        unverified = SmtpChannel(
            "email", url=f"smtps://alice:{PASSWORD}@127.0.0.1:{port}", from_=FROM, timeout=5
        )
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            unverified.send(message())
    assert [r.authenticated for r in recorder.received] == [True, True]
    assert len({r.peer for r in recorder.received}) == 1


# --------------------------------------------------------------------------- secrets


def test_password_never_shows(tls: TlsFiles, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="duly")
    options: dict[str, Any] = {
        "tls_context": tls.server_context(),
        "require_starttls": True,
        "auth_required": True,
        "authenticator": check_login,
    }
    with smtp_server(**options) as (recorder, port):
        url = f"smtp+starttls://alice:{PASSWORD}@127.0.0.1:{port}?verify=false"
        smtp = SmtpChannel("email", url=url, from_=FROM, timeout=5)
        smtp.send(message())
        recorder.rcpt_replies = ["550 5.1.1 No such user here"]
        with pytest.raises(DeliveryError) as refused:
            smtp.send(message())
        smtp.close()

        wrong = f"smtp+starttls://alice:{PASSWORD}x@127.0.0.1:{port}?verify=false"
        with pytest.raises(DeliveryError) as bad_login:
            SmtpChannel("email", url=wrong, from_=FROM, timeout=5).send(message())

    with pytest.raises(ChannelConfigError) as bad_url:
        build_channel(
            ChannelConfig(
                "email", "smtp", {"url": f"smtp://alice:{PASSWORD}@host:99999", "from": FROM}
            )
        )

    assert repr(smtp) == (
        f"SmtpChannel(name='email', url='smtp+starttls://alice:***@127.0.0.1:{port}?verify=false', "
        f"from_='{FROM}')"
    )
    assert PASSWORD not in repr(smtp.url)
    duly_logs = [r.getMessage() for r in caplog.records if r.name.startswith("duly")]
    assert any("connecting to smtp+starttls://alice:***@" in line for line in duly_logs)
    shown = [*duly_logs, str(refused.value), str(bad_login.value), str(bad_url.value)]
    assert not [line for line in shown if PASSWORD in line]


def test_url_forms() -> None:
    def url(text: str) -> str:
        return SmtpChannel("e", url=text, from_=FROM, timeout=5).url.redacted()

    assert url("smtp://mail.example.test") == "smtp://mail.example.test:25"
    assert url("smtp+starttls://u%40x:p%2Fw@mail.example.test") == (
        "smtp+starttls://u%40x:***@mail.example.test:587"
    )
    assert url("SMTPS://mail.example.test?local_hostname=me.example.test") == (
        "smtps://mail.example.test:465?local_hostname=me.example.test"
    )
    parsed = SmtpChannel("e", url="smtp://u%40x:p%2Fw@h:2525", from_=FROM, timeout=5).url
    assert (parsed.username, parsed.password, parsed.port) == ("u@x", "p/w", 2525)
    for bad, problem in [
        ("http://mail.example.test", "scheme must be"),
        ("smtp://", "no host"),
        ("smtp://h?verify=maybe", "verify must be true or false"),
        ("smtp://h?tls=1", "unknown option tls"),
        ("smtp://:pw@h", "a password without a user"),
    ]:
        with pytest.raises(ValueError, match=problem):
            SmtpChannel("e", url=bad, from_=FROM, timeout=5)
    with pytest.raises(ValueError, match="not an email address"):
        SmtpChannel("e", url="smtp://h", from_="Acme Billing")


def test_built_from_the_rule_files_channel_config(server: tuple[Recorder, int]) -> None:
    config = ChannelConfig(
        "email", "smtp", {"url": f"smtp://127.0.0.1:{server[1]}", "from": FROM, "timeout": "5"}
    )
    channel = build_channel(config)
    assert isinstance(channel, SmtpChannel)
    assert channel.timeout == 5.0
    channel.send(message())
    channel.close()
    assert len(server[0].received) == 1
