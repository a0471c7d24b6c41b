"""The whatsapp-cloud channel (Meta's WhatsApp Cloud API) against a local fake at the network
edge (fakes/whatsapp_cloud_server.py), the webhook signature check, and one run through the
real dispatcher."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_channel_whatsapp_templates import send_day_before_reminders

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.whatsapp_cloud import MAX_TEXT, WhatsAppCloudChannel, verify_signature
from fakes.whatsapp_cloud_server import FakeWhatsAppCloud  # tests/ is on sys.path

TO = "+15550100001"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TEMPLATE = "appointment_reminder"


def message(text: str | None = None, **kw: Any) -> Message:
    if text is None:
        text = json.dumps({"1": "Ada", "2": "3 March 10:00", "text": "Hi Ada!"})
    return Message(
        to=kw.pop("to", TO),
        title=kw.pop("title", "Appointment"),
        text=text,
        html=None,
        message_id="d-1@duly.test",
        recipient_id="r1",
        recipient_name="Ada",
        headers={"X-Duly-Subject": "appointment/A-1"},
    )


@pytest.fixture
def meta() -> Iterator[FakeWhatsAppCloud]:
    with FakeWhatsAppCloud() as fake:
        yield fake


def channel(meta: FakeWhatsAppCloud, **options: Any) -> WhatsAppCloudChannel:
    config: dict[str, Any] = {
        "phone_number_id": meta.phone_number_id,
        "token": meta.token,
        "template": TEMPLATE,
        "language": "en_US",
        "base_url": meta.base_url,
        "allow_private": True,  # the fake listens on 127.0.0.1
        **options,
    }
    built = build_channel(
        ChannelConfig("wa", "whatsapp-cloud", {k: v for k, v in config.items() if v is not None})
    )
    assert isinstance(built, WhatsAppCloudChannel)
    built.clock = lambda: NOW
    return built


def send_error(ch: WhatsAppCloudChannel, msg: Message | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        ch.send(msg or message())
    return info.value


# --------------------------------------------------------------------------- sending


def test_a_template_with_body_parameters_and_the_wamid_as_receipt(
    meta: FakeWhatsAppCloud,
) -> None:
    ch = channel(meta)
    receipt = ch.send(message(to=f"whatsapp:{TO}"))
    ch.close()
    [req] = meta.requests
    assert req.method == "POST"
    assert req.path == f"/v21.0/{meta.phone_number_id}/messages"
    assert req.headers["authorization"] == f"Bearer {meta.token}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("duly/")
    assert req.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "template",
        "template": {
            "name": TEMPLATE,
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Ada"},
                        {"type": "text", "text": "3 March 10:00"},
                    ],
                }
            ],
        },
    }
    assert receipt.provider_id is not None and receipt.provider_id.startswith("wamid.")
    assert receipt.detail == "accepted"


def test_parameters_go_in_numeric_order(meta: FakeWhatsAppCloud) -> None:
    meta.templates[("long", "en")] = 10
    ch = channel(meta, template="long", language="en")
    ch.send(message(json.dumps({str(i): f"v{i}" for i in range(10, 0, -1)})))
    ch.close()
    params = meta.requests[0].body["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == [f"v{i}" for i in range(1, 11)]


def test_inside_the_window_free_form_text_is_sent(meta: FakeWhatsAppCloud) -> None:
    meta.inside_window.add(TO[1:])
    ch = channel(meta)
    asked: list[str] = []
    ch.last_inbound = lambda address: asked.append(address) or NOW - timedelta(hours=3)
    ch.send(message(to="15550100001"))  # without the +: the same number
    ch.close()
    assert asked == [TO]
    [req] = meta.requests
    assert req.body["type"] == "text"
    assert req.body["text"] == {"preview_url": False, "body": "Hi Ada!"}


def test_131047_on_free_form_text_sends_the_template_at_once(meta: FakeWhatsAppCloud) -> None:
    ch = channel(meta)
    ch.last_inbound = lambda address: NOW - timedelta(hours=1)  # duly thinks it is open
    receipt = ch.send(message())
    ch.close()
    assert [r.body["type"] for r in meta.requests] == ["text", "template"]
    assert receipt.provider_id is not None


def test_without_a_template_131047_is_permanent_and_names_the_fix(
    meta: FakeWhatsAppCloud,
) -> None:
    ch = channel(meta, template=None, language=None)
    assert ch.freeform == "always"
    err = send_error(ch, message("Plain text\n"))
    ch.close()
    assert (err.permanent, err.code, err.address) == (True, "131047", False)
    assert "24-hour" in str(err) and "configure template and language" in str(err)
    assert "more than 24 hours have passed" in str(err)  # Meta's details
    assert meta.requests[0].body["text"]["body"] == "Plain text"


def test_freeform_never_and_variables_from_message_fields(meta: FakeWhatsAppCloud) -> None:
    meta.inside_window.add(TO[1:])
    ch = channel(meta, freeform="never", variables={"1": "recipient_name", "2": "text"})
    ch.last_inbound = lambda address: NOW
    ch.send(message("See you tomorrow\n\tat     10:00.\n"))
    ch.close()
    params = meta.requests[0].body["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == ["Ada", "See you tomorrow at 10:00."]


def test_long_free_form_text_is_cut(meta: FakeWhatsAppCloud) -> None:
    meta.inside_window.add(TO[1:])
    ch = channel(meta, template=None, language=None)
    ch.send(message("x" * (MAX_TEXT + 10)))
    ch.close()
    body = meta.requests[0].body["text"]["body"]
    assert len(body) == MAX_TEXT and body.endswith("…")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (json.dumps({"1": "Ada", "3": "x"}), "numbered 1 to N without gaps"),
        (json.dumps({"name": "Ada"}), "is not a number"),
        (json.dumps({"1": " "}), "template variable '1' is empty"),
    ],
)
def test_bad_variables_fail_permanently_without_a_request(
    meta: FakeWhatsAppCloud, text: str, problem: str
) -> None:
    ch = channel(meta)
    err = send_error(ch, message(text))
    ch.close()
    assert err.permanent and problem in str(err)
    assert meta.requests == []


def test_a_number_that_is_not_one_is_an_address_error_without_a_request(
    meta: FakeWhatsAppCloud,
) -> None:
    ch = channel(meta)
    err = send_error(ch, message(to="alice@example.test"))
    assert err.permanent and err.address
    err = send_error(ch, message(to="  "))
    assert err.permanent and not err.address and "no phone number" in str(err)
    ch.close()
    assert meta.requests == []


# --------------------------------------------------------------------------- errors


def test_undeliverable_is_an_address_error(meta: FakeWhatsAppCloud) -> None:
    meta.undeliverable.add(TO[1:])
    ch = channel(meta)
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code, err.address) == (True, "131026", True)
    assert "fbtrace_id" in str(err)


def test_a_wrong_token_is_permanent_and_never_shown(
    meta: FakeWhatsAppCloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ch = channel(meta, token="EAAGwrong-s3cr3t")
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code) == (True, "190")
    assert "access token" in str(err)
    assert "s3cr3t" not in str(err) and "s3cr3t" not in repr(ch)
    assert all("s3cr3t" not in r.getMessage() for r in caplog.records)


def test_token_file(meta: FakeWhatsAppCloud, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(meta.token + "\n")
    ch = channel(meta, token=None, token_file=str(tmp_path / "token"))
    ch.send(message())
    ch.close()
    assert meta.requests[0].headers["authorization"] == f"Bearer {meta.token}"
    assert meta.token not in repr(ch)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, 130429, "130429"),
        (400, 131056, "131056"),
        (429, 4, "4"),
        (500, 131000, "131000"),
        (503, None, "503"),
        (429, None, "429"),
    ],
)
def test_rate_limits_and_server_errors_are_temporary(
    meta: FakeWhatsAppCloud, status: int, code: int | None, expected: str
) -> None:
    ch = channel(meta)
    meta.answer(status, code=code)
    err = send_error(ch)
    assert (err.permanent, err.code) == (False, expected)
    ch.send(message())  # the next answer is the fake's own: accepted
    ch.close()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 100, "100"),
        (400, 132001, "132001"),
        (403, 10, "10"),
        (401, None, "401"),
        (400, None, "400"),
    ],
)
def test_other_refusals_are_permanent(
    meta: FakeWhatsAppCloud, status: int, code: int | None, expected: str
) -> None:
    ch = channel(meta)
    meta.answer(status, code=code)
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code, err.address) == (True, expected, False)


def test_the_fake_checks_templates_as_meta_does(meta: FakeWhatsAppCloud) -> None:
    ch = channel(meta, template="unknown_one")
    assert send_error(ch).code == "132001"
    ch.close()
    ch = channel(meta)
    assert send_error(ch, message(json.dumps({"1": "only one"}))).code == "132000"
    ch.close()


def test_an_answer_without_an_id_still_counts_as_sent(meta: FakeWhatsAppCloud) -> None:
    ch = channel(meta)
    meta.answer(200, body=b"{}")
    receipt = ch.send(message())
    ch.close()
    assert receipt.provider_id is None


def test_a_timeout_is_temporary(meta: FakeWhatsAppCloud) -> None:
    ch = channel(meta, timeout=0.2)
    meta.answer(200, delay=1.0)
    err = send_error(ch)
    ch.close()
    assert not err.permanent and "no answer in time" in str(err)


def test_a_private_base_url_is_refused_unless_allowed(meta: FakeWhatsAppCloud) -> None:
    ch = channel(meta, allow_private=None)
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.code == "private_address"
    assert meta.requests == []


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"token": "t"}, "missing option 'phone_number_id'"),
        ({"phone_number_id": "123"}, "missing option 'token' (or 'token_file')"),
        ({"phone_number_id": "s3cr3t", "token": "t"}, "phone_number_id: expected"),
        ({"phone_number_id": "1", "token": "t", "template": "x"}, "missing option 'language'"),
        ({"phone_number_id": "1", "token": "t", "language": "en"}, "needs option 'template'"),
        (
            {"phone_number_id": "1", "token": "t", "template": "Bad Name", "language": "en"},
            "template: 'Bad Name' is not a template name",
        ),
        (
            {"phone_number_id": "1", "token": "t", "template": "x", "language": "english"},
            "language: 'english' is not a language code",
        ),
        ({"phone_number_id": "1", "token": "t", "freeform": "never"}, "needs option 'template'"),
        (
            {"phone_number_id": "1", "token": "t", "variables": {"1": "text"}},
            "variables: needs option 'template'",
        ),
        (
            {
                "phone_number_id": "1",
                "token": "t",
                "template": "x",
                "language": "en",
                "variables": {"1": "text", "3": "title"},
            },
            "variables must be numbered 1 to N",
        ),
        ({"phone_number_id": "1", "token": "t", "api_version": "21"}, "api_version: expected"),
        (
            {"phone_number_id": "1", "token": "s3cr3t", "token_file": "/x"},
            "give token or token_file, not both",
        ),
        ({"phone_number_id": "1", "token": "t", "from": "+1555"}, "unknown option 'from'"),
    ],
)
def test_bad_options_name_the_option_never_the_secret(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("wa", "whatsapp-cloud", options))
    assert str(info.value).startswith("channel 'wa' (type whatsapp-cloud): ")
    assert problem in str(info.value)
    assert "s3cr3t" not in str(info.value)


# --------------------------------------------------------------------------- signatures


def test_webhook_signature() -> None:
    secret = "app-secret"
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_signature(secret, body, good)
    assert verify_signature(secret.encode(), body, good.upper().replace("SHA256=", "sha256="))
    assert not verify_signature(secret, body + b" ", good)  # the raw bytes, as received
    assert not verify_signature("other", body, good)
    assert not verify_signature(secret, body, None)
    assert not verify_signature(secret, body, "")
    assert not verify_signature(secret, body, good.replace("sha256=", "sha1="))
    assert not verify_signature(secret, body, "sha256=zz")
    assert not verify_signature(secret, body, "sha256=é")
    assert not verify_signature("", body, good)


# --------------------------------------------------------------------------- end to end

RULES = """
timezone: UTC
channels:
  whatsapp:
    type: whatsapp-cloud
    phone_number_id: "${WA_PHONE_ID}"
    token: "${WA_TOKEN}"
    template: appointment_reminder
    language: en_US
    base_url: "${WA_URL}"
    allow_private: true
rules:
  - name: appointment-reminder
    subject: appointment
    to: [patient]
    channels: [whatsapp]
    template: remind
    steps:
      - {name: day-before, at: "starts_at - 24h"}
"""


def test_the_dispatcher_sends_a_rendered_template_through_the_cloud_api(
    sqlite_url: str, tmp_path: Path, meta: FakeWhatsAppCloud
) -> None:
    environ = {"WA_PHONE_ID": meta.phone_number_id, "WA_TOKEN": meta.token, "WA_URL": meta.url}
    meta.inside_window.add("15550100002")
    send_day_before_reminders(RULES, environ, tmp_path, sqlite_url, WhatsAppCloudChannel)
    by_to = {r.body["to"]: r.body for r in meta.requests}
    ada = by_to[TO]
    assert ada["type"] == "template"
    params = ada["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == ['Ada "A" Lovelace', "2026-03-03T10:00:00Z"]
    assert by_to["+15550100002"]["text"]["body"] == "Hi Bo, see you tomorrow"
