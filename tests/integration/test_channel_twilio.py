"""The twilio-sms and twilio-whatsapp channels against a local fake of Twilio's Messages API
(tests/fakes/twilio_server.py: a real HTTP server on 127.0.0.1 answering as Twilio does)."""

from __future__ import annotations

import base64
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.base import DeliveryError, Message, Receipt
from duly.delivery.channels.twilio import MAX_BODY, TwilioChannel, TwilioSmsChannel, trim_body
from fakes.twilio_server import FakeTwilio  # tests/ is on sys.path (conftest.py)

FROM = "+15550100000"
TO = "+15550100001"


def message(to: str = TO, text: str | None = "Your invoice is due.\n", **kw: Any) -> Message:
    return Message(
        to=to,
        title=kw.pop("title", "Invoice due"),
        text=text,
        html=kw.pop("html", None),
        message_id=kw.pop("message_id", "d-1@duly.test"),
        recipient_id="r1",
        **kw,
    )


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def channel(twilio: FakeTwilio, type_: str = "twilio-sms", /, **options: Any) -> TwilioChannel:
    config: dict[str, Any] = {
        "account": twilio.account,
        "token": twilio.token,
        "from": FROM,
        "base_url": twilio.base_url,
        "allow_private": True,  # the fake listens on 127.0.0.1
        **options,
    }
    built = build_channel(
        ChannelConfig("sms", type_, {k: v for k, v in config.items() if v is not None})
    )
    assert isinstance(built, TwilioChannel)
    return built


def send_error(ch: TwilioChannel, msg: Message | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        ch.send(msg or message())
    return info.value


# --------------------------------------------------------------------------- sending


def test_sms_is_a_form_post_with_basic_auth_and_the_receipt_is_the_sid(
    twilio: FakeTwilio,
) -> None:
    ch = channel(twilio)
    receipt = ch.send(message())
    ch.close()

    [req] = twilio.requests
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{twilio.account}/Messages.json"
    assert req.auth == (twilio.account, twilio.token)
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.headers["user-agent"].startswith("duly/")
    assert req.form == {"To": TO, "From": FROM, "Body": "Your invoice is due."}
    assert receipt.provider_id is not None and receipt.provider_id.startswith("SM")
    assert len(receipt.provider_id) == 34
    assert receipt.detail == "queued"


def test_whatsapp_prefixes_both_numbers_once(twilio: FakeTwilio) -> None:
    ch = channel(twilio, "twilio-whatsapp", **{"from": f"whatsapp:{FROM}"})
    assert ch.type == "twilio-whatsapp"
    ch.send(message())
    ch.send(message(to=f"whatsapp:{TO}"))  # an address written with the prefix
    ch.close()
    assert [r.form["To"] for r in twilio.requests] == [f"whatsapp:{TO}"] * 2
    assert [r.form["From"] for r in twilio.requests] == [f"whatsapp:{FROM}"] * 2


def test_messaging_service_and_status_callback(twilio: FakeTwilio) -> None:
    service = "MG" + "0" * 32
    ch = channel(
        twilio,
        **{
            "from": None,
            "messaging_service_sid": service,
            "status_callback": "https://app.example.test/twilio/status",
        },
    )
    ch.send(message())
    ch.close()
    [req] = twilio.requests
    assert req.form["MessagingServiceSid"] == service
    assert req.form["StatusCallback"] == "https://app.example.test/twilio/status"
    assert "From" not in req.form


def test_the_title_stands_in_for_a_missing_text(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    ch.send(message(text=None, title="  Appointment tomorrow at 10:00 "))
    ch.send(message(text="   \n", title="Also the title"))
    ch.close()
    assert [r.form["Body"] for r in twilio.requests] == [
        "Appointment tomorrow at 10:00",
        "Also the title",
    ]


def test_nothing_to_send_fails_at_once_without_a_request(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    err = send_error(ch, message(text=None, title=None))
    assert err.permanent
    err = send_error(ch, message(to="  "))
    assert err.permanent and "no phone number" in str(err)
    ch.close()
    assert twilio.requests == []


def test_long_texts_are_cut_to_1600_utf16_units(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    ch.send(message(text="a" * 2000))
    ch.send(message(text="😀" * 900))  # 2 units each in UTF-16
    ch.send(message(text="b" * MAX_BODY))  # exactly the limit: untouched
    ch.close()
    bodies = [r.form["Body"] for r in twilio.requests]
    assert bodies[0] == "a" * 1599 + "…"
    assert bodies[1] == "😀" * 799 + "…"
    assert len(bodies[1].encode("utf-16-le")) // 2 == 1599
    assert bodies[2] == "b" * MAX_BODY


def test_trim_never_splits_a_surrogate_pair() -> None:
    assert trim_body("a" + "😀" * 3, limit=5) == "a😀…"
    assert trim_body("short", limit=5) == "short"


def test_concurrent_sends_share_the_channel(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    receipts: list[Receipt] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        r = ch.send(message(to=f"+1555010{i:04d}", message_id=f"d-{i}"))
        with lock:
            receipts.append(r)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    ch.close()
    assert len({r.provider_id for r in receipts}) == 16
    assert sorted(r.form["To"] for r in twilio.requests) == [f"+1555010{i:04d}" for i in range(16)]


def test_an_answer_without_a_sid_still_counts_as_sent(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    twilio.answer(201, body=b"not json")
    assert ch.send(message()) == Receipt(provider_id=None, detail=None)
    ch.close()


# --------------------------------------------------------------------------- errors


def test_an_invalid_number_is_permanent_with_twilio_code(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    err = send_error(ch, message(to="12345"))  # the fake checks E.164 like Twilio
    ch.close()
    assert err.permanent
    assert err.code == "21211"
    assert err.address is True
    assert "21211" in str(err) and "is not a valid phone number" in str(err)
    assert "https://www.twilio.com/docs/errors/21211" in str(err)


@pytest.mark.parametrize("code", [21610, 21614, 63003])
def test_address_errors_are_permanent_and_name_the_code(twilio: FakeTwilio, code: int) -> None:
    ch = channel(twilio)
    twilio.answer(400, code=code)
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code, err.address) == (True, str(code), True)


@pytest.mark.parametrize(
    ("status", "answer", "expected_code"),
    [
        pytest.param(
            400,
            {"code": 21408, "message": "Permission to send an SMS has not been enabled"},
            "21408",
            id="sms-not-enabled",
        ),
        pytest.param(404, {"code": 20404}, "20404", id="unknown-account"),
    ],
)
def test_a_refusal_about_the_account_is_permanent_but_not_about_the_address(
    twilio: FakeTwilio, status: int, answer: dict[str, Any], expected_code: str
) -> None:
    ch = channel(twilio)
    twilio.answer(status, **answer)
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code, err.address) == (True, expected_code, False)


def test_bad_credentials_are_permanent(twilio: FakeTwilio) -> None:
    ch = channel(twilio, token="wrong-token")
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.code == "20003"
    assert "refused the account and token" in str(err)
    assert twilio.requests[0].auth == (twilio.account, "wrong-token")


@pytest.mark.parametrize(
    ("status", "code", "expected_code"),
    [
        (429, 20429, "20429"),
        (429, None, "429"),
        (500, None, "500"),
        (503, 20503, "20503"),
        (400, 21611, "21611"),  # the sender's queue is full: later
        (408, None, "408"),
    ],
)
def test_busy_and_server_errors_are_temporary(
    twilio: FakeTwilio, status: int, code: int | None, expected_code: str
) -> None:
    ch = channel(twilio)
    twilio.answer(status, code=code)
    err = send_error(ch)
    assert not err.permanent
    assert err.code == expected_code
    ch.send(message())  # the next answer is the fake's own: accepted
    ch.close()


def test_an_html_error_page_is_quoted_in_the_error(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    twilio.answer(502, body=b"<html><body>Bad gateway</body></html>")
    err = send_error(ch)
    ch.close()
    assert not err.permanent and err.code == "502"
    assert "Bad gateway" in str(err)


def test_a_timeout_is_temporary(twilio: FakeTwilio) -> None:
    ch = channel(twilio, timeout=0.2)
    twilio.answer(201, delay=1.0)
    err = send_error(ch)
    ch.close()
    assert not err.permanent
    assert "no answer in time" in str(err)


def test_nothing_listening_is_temporary() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = build_channel(
        ChannelConfig(
            "sms",
            "twilio-sms",
            {
                "account": "AC" + "2" * 32,
                "token": "t",
                "from": FROM,
                "base_url": f"http://127.0.0.1:{port}",
                "allow_private": "true",
            },
        )
    )
    err = send_error(ch)  # type: ignore[arg-type]
    ch.close()
    assert not err.permanent and "ConnectError" in str(err)


# --------------------------------------------------------------------------- private addresses


def test_a_private_base_url_is_refused_unless_allowed(twilio: FakeTwilio) -> None:
    refused = channel(twilio, allow_private=None)
    err = send_error(refused)
    refused.close()
    assert err.permanent and err.code == "private_address"
    assert "127.0.0.1 is a loopback address" in str(err)
    assert "allow_private" in str(err)
    assert twilio.requests == []

    options = {
        "account": twilio.account,
        "token": twilio.token,
        "from": FROM,
        "base_url": twilio.base_url,
    }
    allowed = build_channel(ChannelConfig("sms", "twilio-sms", options), allow_private_targets=True)
    assert allowed.send(message()).provider_id
    allowed.close()
    # The channel's own option wins over the rule file's.
    still_refused = build_channel(
        ChannelConfig("sms", "twilio-sms", {**options, "allow_private": False}),
        allow_private_targets=True,
    )
    assert send_error(still_refused).code == "private_address"  # type: ignore[arg-type]
    still_refused.close()
    assert len(twilio.requests) == 1


# --------------------------------------------------------------------------- configuration


def test_token_file_is_read_and_the_token_never_shown(
    twilio: FakeTwilio, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "twilio"
    secret_file.write_text(twilio.token + "\n")
    caplog.set_level(logging.DEBUG)
    ch = channel(twilio, token=None, token_file=str(secret_file))
    ch.send(message())
    twilio.answer(400, code=21211)
    send_error(ch)
    ch.close()
    assert twilio.requests[0].auth == (twilio.account, twilio.token)
    assert twilio.token not in repr(ch)
    assert twilio.account in repr(ch)
    encoded = base64.b64encode(f"{twilio.account}:{twilio.token}".encode()).decode()
    for record in caplog.records:
        assert twilio.token not in record.getMessage()
        assert encoded not in record.getMessage()


ACCOUNT = "AC" + "a" * 32


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"token": "t", "from": FROM}, "missing option 'account'"),
        ({"account": ACCOUNT, "from": FROM}, "missing option 'token' (or 'token_file')"),
        ({"account": ACCOUNT, "token": "t"}, "missing option 'from' (or 'messaging_service_sid')"),
        (
            {"account": "s3cr3t-value", "token": "t", "from": FROM},
            "account: expected a Twilio Account SID",
        ),
        (
            {"account": ACCOUNT, "token": "s3cr3t-value", "token_file": "/x", "from": FROM},
            "give token or token_file, not both",
        ),
        (
            {"account": ACCOUNT, "token_file": "/nonexistent/twilio", "from": FROM},
            "token_file: cannot read '/nonexistent/twilio'",
        ),
        ({"account": ACCOUNT, "token": "t", "from": "not a number!"}, "from: 'not a number!'"),
        (
            {"account": ACCOUNT, "token": "t", "from": FROM, "messaging_service_sid": "MGx"},
            "messaging_service_sid: expected a Messaging Service SID",
        ),
        (
            {"account": ACCOUNT, "token": "t", "from": FROM, "base_url": "ftp://x"},
            "base_url: expected an http:// or https:// URL",
        ),
        (
            {"account": ACCOUNT, "token": "t", "from": FROM, "status_callback": "/relative"},
            "status_callback: expected an http:// or https:// URL",
        ),
        ({"account": ACCOUNT, "token": "t", "from": FROM, "timeout": "0"}, "timeout: expected"),
        (
            {"account": ACCOUNT, "token": "t", "from": FROM, "allow_private": "maybe"},
            "allow_private: expected true or false",
        ),
        (
            {"account": ACCOUNT, "token": "t", "from": FROM, "sender": "x"},
            "unknown option 'sender' (accepted: account, token, token_file, from, "
            "messaging_service_sid, status_callback, base_url, timeout, allow_private)",
        ),
    ],
)
def test_bad_options_name_the_channel_and_option_never_the_secret(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("sms", "twilio-sms", options))
    assert str(info.value).startswith("channel 'sms' (type twilio-sms): ")
    assert problem in str(info.value)
    assert "s3cr3t-value" not in str(info.value)


def test_an_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ChannelConfigError, match="token_file: .* is empty"):
        build_channel(
            ChannelConfig(
                "sms",
                "twilio-sms",
                {"account": ACCOUNT, "token_file": str(tmp_path / "empty"), "from": FROM},
            )
        )


def test_whatsapp_needs_a_phone_number_as_sender() -> None:
    with pytest.raises(ChannelConfigError, match="from: 'Acme' is not a phone number"):
        build_channel(
            ChannelConfig(
                "wa", "twilio-whatsapp", {"account": ACCOUNT, "token": "t", "from": "Acme"}
            )
        )
    sms = build_channel(
        ChannelConfig("sms", "twilio-sms", {"account": ACCOUNT, "token": "t", "from": "Acme"})
    )
    assert isinstance(sms, TwilioSmsChannel) and sms.from_ == "Acme"  # alphanumeric sender ID
    sms.close()
