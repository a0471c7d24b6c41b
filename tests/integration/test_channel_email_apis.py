"""The email-API channels (sendgrid, postmark, mailgun, ses) against local fakes of the
providers' send APIs (tests/fakes/email_providers.py: real HTTP servers on 127.0.0.1
answering as each provider documents), and one delivery through the real dispatcher."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest

from duly.core.clock import VirtualClock
from duly.core.model import ChannelConfig, Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels._email_api import EmailApiChannel
from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.mailgun import MailgunChannel
from duly.delivery.channels.ses import SesChannel, sign_v4
from duly.delivery.preferences import PrefLinks, PrefSigner, unsubscribe_link_warning
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.runtime import build_channels
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from fakes.email_providers import (  # tests/ is on sys.path (conftest.py)
    FAKES,
    FakeEmailProvider,
    FakeMailgun,
    FakePostmark,
    FakeSendGrid,
    FakeSes,
    ses_error,
)

PROVIDERS = sorted(FAKES)
MID = "0123456789abcdef0123456789abcdef"  # the dispatcher's ids: 32 hex digits, no @
UNSUBSCRIBE = "<https://duly.example.test/u/TOKEN>, <mailto:unsubscribe@acme.test?subject=TOKEN>"


def message(**kw: Any) -> Message:
    return Message(
        to=kw.pop("to", "alice@example.test"),
        title=kw.pop("title", "Invoice INV-1 is due"),
        text=kw.pop("text", "Hello Alice, INV-1 is due on Tuesday.\n"),
        html=kw.pop("html", "<p>Hello Alice, <b>INV-1</b> is due on Tuesday.</p>"),
        message_id=kw.pop("message_id", MID),
        recipient_id="c1",
        recipient_name=kw.pop("recipient_name", "Alice Example"),
        headers=kw.pop(
            "headers",
            {
                "X-Duly-Delivery": "17",
                "X-Duly-Rule": "invoice-reminders",
                "X-Duly-Step": "due-soon",
                "X-Duly-Subject": "invoice/INV-1",
                "X-Duly-Occurrence": "0",
                "List-Unsubscribe": UNSUBSCRIBE,
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        ),
        **kw,
    )


@pytest.fixture(params=PROVIDERS)
def fake(request: pytest.FixtureRequest) -> Iterator[FakeEmailProvider]:
    with FAKES[request.param]() as server:
        yield server


def channel(fake: FakeEmailProvider, **options: Any) -> EmailApiChannel:
    built = build_channel(ChannelConfig("email", fake.type, fake.options(**options)))
    assert isinstance(built, EmailApiChannel) and built.type == fake.type
    return built


def send_error(ch: EmailApiChannel, msg: Message | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        ch.send(msg or message())
    return info.value


# --------------------------------------------------------------------------- common


def test_accepted_the_receipt_is_the_providers_id(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    receipt = ch.send(message())
    ch.close()
    assert receipt.provider_id == fake.issued[-1] != ""
    assert receipt.detail == f"Message-ID <{MID}@acme.test>"


def test_html_and_text_are_both_sent_with_subject_and_recipient(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    ch.send(message())
    ch.close()
    [req] = fake.requests
    sent = fake.view(req)
    assert sent.to == "alice@example.test"
    assert sent.subject == "Invoice INV-1 is due"
    assert sent.text == "Hello Alice, INV-1 is due on Tuesday.\n"
    assert sent.html == "<p>Hello Alice, <b>INV-1</b> is due on Tuesday.</p>"


def test_text_only_and_html_only(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    ch.send(message(html=None))
    ch.send(message(text=None))
    ch.close()
    text_only, html_only = (fake.view(r) for r in fake.requests)
    assert text_only.text and text_only.html is None
    assert html_only.html and html_only.text is None


def test_message_id_list_unsubscribe_and_identity_headers_as_smtp_writes_them(
    fake: FakeEmailProvider,
) -> None:
    ch = channel(fake)
    ch.send(message())
    ch.send(message(message_id="d-1@duly.test"))  # an id with its @ is written as it is
    ch.close()
    first, second = (fake.view(r) for r in fake.requests)
    headers = first.headers
    mid_name = "message-id"
    assert headers[mid_name] == f"<{MID}@acme.test>"
    assert headers["list-unsubscribe"] == UNSUBSCRIBE
    assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert headers["x-duly-rule"] == "invoice-reminders"
    assert headers["x-duly-subject"] == "invoice/INV-1"
    assert headers["x-duly-delivery"] == "17"
    assert second.headers[mid_name] == "<d-1@duly.test>"


def test_an_empty_header_is_left_out(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    ch.send(message(headers={"X-Duly-Rule": "receipt", "X-Duly-Step": ""}))
    ch.close()
    headers = fake.view(fake.requests[0]).headers
    assert headers["x-duly-rule"] == "receipt" and "x-duly-step" not in headers


def test_message_id_domain_option(fake: FakeEmailProvider) -> None:
    ch = channel(fake, message_id_domain="Mail.Acme.TEST")
    ch.send(message())
    ch.close()
    assert fake.view(fake.requests[0]).headers["message-id"] == f"<{MID}@mail.acme.test>"


def test_the_identity_is_the_same_on_a_retry(fake: FakeEmailProvider) -> None:
    """No provider has an idempotency key for sending (see duly.delivery.channels._email_api): the
    retry carries the same Message-ID and the same id in the provider's metadata."""
    ch = channel(fake)
    fake.script("busy")
    assert not send_error(ch).permanent
    ch.send(message())
    ch.close()
    first, retry = (fake.view(r) for r in fake.requests)
    assert first.headers["message-id"] == retry.headers["message-id"] == f"<{MID}@acme.test>"
    assert first.duly_message_id == retry.duly_message_id == MID


@pytest.mark.parametrize("kind", ["busy", "server"])
def test_rate_limits_and_server_errors_are_temporary(fake: FakeEmailProvider, kind: str) -> None:
    ch = channel(fake)
    fake.script(kind)
    err = send_error(ch)
    ch.close()
    assert not err.permanent and not err.address
    assert "could not take the message now" in str(err)
    if kind == "busy":
        assert err.code in ("429", "TooManyRequestsException")


def test_a_refusal_of_the_message_is_permanent_but_not_about_the_address(
    fake: FakeEmailProvider,
) -> None:
    ch = channel(fake)
    fake.script("bad_request")
    err = send_error(ch)
    ch.close()
    assert err.permanent and not err.address
    assert "refused the message" in str(err)


def test_an_invalid_recipient_is_permanent_and_about_the_address(
    fake: FakeEmailProvider,
) -> None:
    ch = channel(fake)
    fake.script("invalid_recipient")
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.address


@pytest.mark.parametrize("to", ["alice.example.test", "a b@x@y", "x@[bad"])
def test_an_invalid_address_fails_at_once_without_a_request(
    fake: FakeEmailProvider, to: str
) -> None:
    ch = channel(fake)
    err = send_error(ch, message(to=to))
    ch.close()
    assert err.permanent and err.address and err.code == "invalid_address"
    assert fake.requests == []


def test_wrong_credentials_are_permanent_and_never_shown(fake: FakeEmailProvider) -> None:
    wrong = "wrong-" + fake.key[::-1]
    option = "secret_access_key" if fake.type == "ses" else "api_key"
    ch = channel(fake, **{option: wrong})
    err = send_error(ch)
    ch.close()
    assert err.permanent and not err.address
    assert "refused the credentials" in str(err)
    for text in (str(err), repr(err), repr(ch)):
        assert wrong not in text and fake.key not in text


def test_a_key_quoted_back_by_the_provider_is_blanked(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    fake.script("echo_key")
    err = send_error(ch)
    ch.close()
    assert err.permanent
    assert fake.key not in str(err) and "***" in str(err)


def test_a_timeout_is_temporary(fake: FakeEmailProvider) -> None:
    ch = channel(fake, timeout=0.2)
    fake.script("accept", delay=1.0)
    err = send_error(ch)
    ch.close()
    assert not err.permanent and "no answer in time" in str(err)


def test_nothing_listening_is_temporary(fake: FakeEmailProvider) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = channel(fake, base_url=f"http://127.0.0.1:{port}")
    err = send_error(ch)
    ch.close()
    assert not err.permanent and "ConnectError" in str(err)


def test_a_private_base_url_is_refused_unless_allowed(fake: FakeEmailProvider) -> None:
    ch = channel(fake, allow_private=None)
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.code == "private_address"
    assert fake.requests == []


def test_a_header_the_channel_writes_cannot_be_given(fake: FakeEmailProvider) -> None:
    ch = channel(fake)
    err = send_error(ch, message(headers={"Subject": "other"}))
    folded = send_error(ch, message(headers={"X-Duly-Rule": "a\r\nBcc: x@evil.test"}))
    ch.close()
    assert err.permanent and "written by the channel" in str(err)
    assert folded.permanent and "one line" in str(folded)
    assert fake.requests == []


def test_the_key_can_come_from_a_file(fake: FakeEmailProvider, tmp_path: Path) -> None:
    option = "secret_access_key" if fake.type == "ses" else "api_key"
    path = tmp_path / "key"
    path.write_text(f"  {fake.key}\n")
    ch = channel(fake, **{option: None, f"{option}_file": str(path)})
    assert ch.send(message()).provider_id == fake.issued[-1]
    ch.close()
    assert fake.key not in repr(ch)


def test_bad_options_name_the_option_never_the_secret(fake: FakeEmailProvider) -> None:
    option = "secret_access_key" if fake.type == "ses" else "api_key"
    with pytest.raises(ChannelConfigError, match=f"missing option '{option}'"):
        channel(fake, **{option: None})
    with pytest.raises(ChannelConfigError, match="not both"):
        channel(fake, **{f"{option}_file": "/nonexistent"})
    with pytest.raises(ChannelConfigError, match="from: 'billing' is not an email address"):
        channel(fake, **{"from": "billing"})
    with pytest.raises(ChannelConfigError) as info:
        channel(fake, base_url="ftp://x")
    assert "base_url" in str(info.value) and fake.key not in str(info.value)


# --------------------------------------------------------------------------- SendGrid


def test_sendgrid_request_bearer_key_text_first_and_custom_args() -> None:
    with FakeSendGrid() as sg:
        ch = channel(sg)
        receipt = ch.send(message())
        ch.close()
    [req] = sg.requests
    assert req.path == "/v3/mail/send"
    assert req.headers["authorization"] == f"Bearer {sg.key}"
    body = req.json
    assert body["personalizations"] == [
        {"to": [{"email": "alice@example.test", "name": "Alice Example"}]}
    ]
    assert body["from"] == {"email": "billing@acme.test", "name": "Acme Billing"}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["custom_args"] == {"duly_message_id": MID}
    assert receipt.provider_id == sg.issued[0]  # the X-Message-Id header


def test_sendgrid_dynamic_template() -> None:
    with FakeSendGrid() as sg:
        ch = channel(sg, template_id="d-0123456789abcdef", template_data={"brand": "Acme"})
        ch.send(message())
        ch.send(message(text=None, html=None))  # the template has the content
        ch.close()
    first, _ = sg.requests
    body = first.json
    assert body["template_id"] == "d-0123456789abcdef"
    assert "content" not in body and "subject" not in body
    assert body["personalizations"][0]["dynamic_template_data"] == {
        "brand": "Acme",
        "subject": "Invoice INV-1 is due",
        "text": "Hello Alice, INV-1 is due on Tuesday.\n",
        "html": "<p>Hello Alice, <b>INV-1</b> is due on Tuesday.</p>",
        "recipient_name": "Alice Example",
        "message_id": MID,
    }
    assert body["headers"]["Message-ID"] == f"<{MID}@acme.test>"


def test_sendgrid_template_data_needs_a_template() -> None:
    with pytest.raises(ChannelConfigError, match="template_data needs template_id"):
        build_channel(
            ChannelConfig(
                "email",
                "sendgrid",
                {"from": "a@acme.test", "api_key": "k", "template_data": {"x": 1}},
            )
        )


# --------------------------------------------------------------------------- Postmark


def test_postmark_token_header_stream_and_metadata() -> None:
    with FakePostmark() as pm:
        pm.streams.add("reminders")
        ch = channel(pm, message_stream="reminders")
        receipt = ch.send(message())
        default = channel(pm)
        default.send(message())
        ch.close()
        default.close()
    first, second = pm.requests
    assert first.path == "/email"
    assert first.headers["x-postmark-server-token"] == pm.key
    assert first.headers["accept"] == "application/json"
    assert first.json["MessageStream"] == "reminders"
    assert second.json["MessageStream"] == "outbound"
    assert first.json["From"] == "Acme Billing <billing@acme.test>"
    assert first.json["To"] == "Alice Example <alice@example.test>"
    assert first.json["Metadata"] == {"duly_message_id": MID}
    assert receipt.provider_id == pm.issued[0]  # MessageID


def test_postmark_unknown_stream_is_permanent_with_its_error_code() -> None:
    with FakePostmark() as pm:
        ch = channel(pm, message_stream="nope")
        err = send_error(ch)
        ch.close()
    assert err.permanent and not err.address and err.code == "1235"


# --------------------------------------------------------------------------- Mailgun


def test_mailgun_form_fields_basic_auth_and_receipt() -> None:
    with FakeMailgun() as mg:
        ch = channel(mg)
        receipt = ch.send(message())
        ch.close()
    [req] = mg.requests
    assert req.path == "/v3/mg.acme.test/messages"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    token = req.headers["authorization"].split()[1]
    assert base64.b64decode(token).decode() == f"api:{mg.key}"
    f = req.form
    assert f["from"] == "Acme Billing <billing@acme.test>"
    assert f["to"] == "Alice Example <alice@example.test>"
    assert f["subject"] == "Invoice INV-1 is due"
    assert f["text"].startswith("Hello") and f["html"].startswith("<p>")
    assert f["h:Message-Id"] == f"<{MID}@acme.test>"
    assert f["h:X-Duly-Rule"] == "invoice-reminders"
    assert f["h:List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f["v:duly-message-id"] == MID
    # Mailgun's id, without its brackets: here the Message-ID it was given
    assert receipt.provider_id == f"{MID}@acme.test" == mg.issued[0]


def test_mailgun_regions_and_unknown_domain() -> None:
    eu = build_channel(
        ChannelConfig(
            "email",
            "mailgun",
            {"from": "a@acme.test", "api_key": "k", "domain": "mg.acme.test", "region": "EU"},
        )
    )
    us = build_channel(
        ChannelConfig("email", "mailgun", {"from": "a@acme.test", "api_key": "k", "domain": "d.io"})
    )
    assert isinstance(eu, MailgunChannel) and isinstance(us, MailgunChannel)
    assert eu.url == "https://api.eu.mailgun.net/v3/mg.acme.test/messages"
    assert us.url == "https://api.mailgun.net/v3/d.io/messages"
    eu.close()
    us.close()
    with pytest.raises(ChannelConfigError, match="region: expected us or eu"):
        build_channel(
            ChannelConfig(
                "email",
                "mailgun",
                {"from": "a@acme.test", "api_key": "k", "domain": "d.io", "region": "ap"},
            )
        )
    with FakeMailgun() as mg:
        ch = channel(mg, domain="other.acme.test")
        err = send_error(ch)
        ch.close()
    assert err.permanent and not err.address and err.code == "404"
    assert "Domain not found" in str(err)


# --------------------------------------------------------------------------- SES


def test_ses_requests_are_signed_and_the_fake_checks_the_signature() -> None:
    with FakeSes() as ses:
        ch = channel(ses)
        receipt = ch.send(message())
        ch.close()
    [req] = ses.requests
    auth = req.headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ses.access_key_id}/")
    assert "/eu-west-1/ses/aws4_request, SignedHeaders=content-type;host;x-amz-date," in auth
    assert receipt.provider_id == ses.issued[0]  # MessageId
    body = req.json
    assert body["FromEmailAddress"] == "Acme Billing <billing@acme.test>"
    assert body["Destination"] == {"ToAddresses": ["Alice Example <alice@example.test>"]}
    assert body["Content"]["Simple"]["Subject"] == {
        "Data": "Invoice INV-1 is due",
        "Charset": "UTF-8",
    }
    assert body["EmailTags"] == [{"Name": "duly-message-id", "Value": MID}]


def test_ses_a_wrong_secret_fails_the_signature_check_permanently() -> None:
    with FakeSes() as ses:
        ch = channel(ses, secret_access_key="not-the-secret")
        err = send_error(ch)
        ch.close()
    assert err.permanent and err.code == "SignatureDoesNotMatch"
    assert "not-the-secret" not in str(err)


def test_ses_session_token_is_signed_and_configuration_set_sent() -> None:
    with FakeSes() as ses:
        ch = channel(ses, session_token="FwoGZXIvYXdzEXAMPLE", configuration_set="duly")
        ch.send(message())
        ch.close()
    [req] = ses.requests
    assert req.headers["x-amz-security-token"] == "FwoGZXIvYXdzEXAMPLE"
    assert "x-amz-security-token" in req.headers["authorization"]
    assert req.json["ConfigurationSetName"] == "duly"


def test_ses_non_ascii_names_and_tag_values() -> None:
    with FakeSes() as ses:
        ch = channel(ses, **{"from": "Acmé <billing@acme.test>"})
        ch.send(message(recipient_name="Zoë", message_id="d-1@duly.test"))
        ch.close()
    body = ses.requests[0].json
    # SES wants non-ASCII display names as RFC 2047 encoded words
    sender, (to,) = body["FromEmailAddress"], body["Destination"]["ToAddresses"]
    assert sender.isascii() and to.isascii()
    assert str(make_header(decode_header(sender))) == "Acmé <billing@acme.test>"
    assert str(make_header(decode_header(to))) == "Zoë <alice@example.test>"
    assert body["EmailTags"][0]["Value"] == "d-1_duly_test"


def test_ses_limit_exceeded_is_temporary() -> None:
    with FakeSes() as ses:
        ses.reply_next(ses_error(400, "LimitExceededException", "Maximum sending rate exceeded."))
        ch = channel(ses)
        err = send_error(ch)
        ch.close()
    assert not err.permanent and err.code == "LimitExceededException"


def test_sigv4_matches_the_aws_test_suite_vector() -> None:
    """AWS's SigV4 test suite, "get-vanilla": GET / on example.amazonaws.com."""
    auth = sign_v4(
        method="GET",
        host="example.amazonaws.com",
        path="/",
        headers={"x-amz-date": "20150830T123600Z"},
        body=b"",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        service="service",
        when=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    assert hashlib.sha256(b"").hexdigest().startswith("e3b0c442")


def test_ses_options_are_checked() -> None:
    base = {"from": "a@acme.test", "access_key_id": "AKIAEXAMPLE0000000", "secret_access_key": "s"}
    ok = build_channel(ChannelConfig("email", "ses", {**base, "region": "us-east-1"}))
    assert isinstance(ok, SesChannel)
    assert ok.url == "https://email.us-east-1.amazonaws.com/v2/email/outbound-emails"
    ok.close()
    with pytest.raises(ChannelConfigError, match="region"):
        build_channel(ChannelConfig("email", "ses", {**base, "region": "moon"}))
    with pytest.raises(ChannelConfigError, match="access_key_id") as info:
        build_channel(
            ChannelConfig("email", "ses", {**base, "region": "us-east-1", "access_key_id": "s3"})
        )
    assert "s3" not in str(info.value)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("type_", PROVIDERS)
def test_email_api_types_are_email_whatever_the_channel_name(type_: str) -> None:
    ann = Recipient("ann", email="ann@example.test", addresses={"mail": "other@example.test"})
    assert ann.address_for("mail", type_) == "ann@example.test"
    assert unsubscribe_link_warning("http://duly.example.test", [type_]) is not None


T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

RULES = """
timezone: UTC
channels:
  mail:
    type: sendgrid
    api_key: {key}
    from: "Acme Billing <billing@acme.test>"
    base_url: "{url}"
    allow_private: true
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    channels: [mail]
    template: plain
    steps:
      - {{name: due-soon, at: "due_at - 3d"}}
"""


def test_a_delivery_through_the_dispatcher_is_sent_and_recorded(
    db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "plain.mail.txt").write_text(
        "Subject: {{ rule.name }} for {{ subject.key }}\nHello {{ recipient.name }}.\n"
    )
    with FakeSendGrid() as sg:
        rf = load_rules_text(
            RULES.format(key=sg.key, url=sg.url),
            path=str(tmp_path / "duly.yaml"),
            templates_dir=str(tmp_path / "templates"),
        )
        clock = VirtualClock(T0)
        engine = Engine(rf, make_engine(db_url), clock=clock)
        channels = build_channels(rf)
        assert channels["mail"].type == "sendgrid"
        disp = Dispatcher(engine, channels, Renderer(rf.templates_dir), send_workers=1)
        disp.preferences = PrefLinks(
            signer=PrefSigner("s3cret", clock=clock), base_url="https://duly.example.test/"
        )
        engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
        inv = {"status": "sent", "due_at": "2026-03-10T09:00:00Z"}
        engine.upsert_subject(SubjectInput("invoice", "INV-1", inv, {"customer": "c1"}))
        clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
        assert disp.run_once() == 1
        for ch in channels.values():
            ch.close()

    [req] = sg.requests
    sent = sg.view(req)
    assert sent.to == "alice@example.test"
    assert sent.subject == "invoice-reminders for INV-1"
    assert sent.text is not None and "Hello Alice." in sent.text
    assert sent.headers["x-duly-rule"] == "invoice-reminders"
    assert sent.headers["x-duly-subject"] == "invoice/INV-1"
    # a channel of an email-API type under any name: the email address, unsubscribe headers
    assert sent.headers["list-unsubscribe"].startswith("<https://duly.example.test/u/")
    assert sent.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    with engine.db.connect() as conn:
        [row] = engine.store.deliveries_of_subject(conn, "invoice/INV-1")
    assert row["state"] == "sent"
    assert row["receipt"] == sg.issued[0]
    assert sent.headers["message-id"] == f"<{row['message_id']}@acme.test>"
    assert sent.duly_message_id == row["message_id"]
