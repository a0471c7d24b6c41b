"""The webhook channel against a real HTTP server on 127.0.0.1 that checks Standard Webhooks
signatures with its own HMAC computation (tests/fakes/http_recorder.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.webhook import WebhookChannel
from fakes.http_recorder import HttpRecorder, Request  # tests/ is on sys.path (conftest.py)

SECRET = "a plain shared secret"
KEY_BYTES = b"\x00\x01binary key\xff" * 2
WHSEC = "whsec_" + base64.b64encode(KEY_BYTES).decode()


def message(**kw: Any) -> Message:
    fields: dict[str, Any] = {
        "to": "ada@example.test",
        "title": "Invoice due",
        "text": "Please pay invoice 42.",
        "html": "<p>Please pay invoice 42.</p>",
        "message_id": "d-1@duly.test",
        "recipient_id": "r1",
        "recipient_name": "Ada Lovelace",
        "headers": {"X-Duly-Rule": "invoice-due", "X-Duly-Delivery": "17"},
        "category": "transactional",
    }
    fields.update(kw)
    return Message(**fields)


def verifier(key: bytes, tolerance: int = 300) -> Callable[[Request], int | None]:
    """The receiver's side, written from the Standard Webhooks spec: 401 unless the
    signature is right and the timestamp recent."""

    def check(req: Request) -> int | None:
        msg_id = req.headers.get("webhook-id", "")
        ts = req.headers.get("webhook-timestamp", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
            return 401
        expected = base64.b64encode(
            hmac.new(key, f"{msg_id}.{ts}.".encode() + req.body, hashlib.sha256).digest()
        ).decode()
        given = [
            part.split(",", 1)[1]
            for part in req.headers.get("webhook-signature", "").split()
            if part.startswith("v1,")
        ]
        return None if any(hmac.compare_digest(expected, g) for g in given) else 401

    return check


@pytest.fixture
def server() -> Iterator[HttpRecorder]:
    with HttpRecorder() as recorder:
        yield recorder


def channel(url: str, secret: str = SECRET, **options: Any) -> WebhookChannel:
    config = {"url": url, "secret": secret, "allow_private": True, **options}
    built = build_channel(
        ChannelConfig("hook", "webhook", {k: v for k, v in config.items() if v is not None})
    )
    assert isinstance(built, WebhookChannel)
    return built


def send_error(ch: WebhookChannel, msg: Message | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        ch.send(msg or message())
    return info.value


# --------------------------------------------------------------------------- signing


def test_the_message_arrives_as_signed_json(server: HttpRecorder) -> None:
    server.check = verifier(SECRET.encode())
    ch = channel(server.url + "/hooks/duly")
    before = int(time.time())
    receipt = ch.send(message())
    ch.close()

    [req] = server.requests
    assert (req.method, req.path) == ("POST", "/hooks/duly")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"] == "d-1@duly.test"
    assert before <= int(req.headers["webhook-timestamp"]) <= int(time.time())
    assert req.headers["webhook-signature"].startswith("v1,")
    assert req.json() == {
        "id": "d-1@duly.test",
        "title": "Invoice due",
        "text": "Please pay invoice 42.",
        "html": "<p>Please pay invoice 42.</p>",
        "to": "ada@example.test",
        "recipient": {"id": "r1", "name": "Ada Lovelace"},
        "category": "transactional",
        "headers": {"X-Duly-Rule": "invoice-due", "X-Duly-Delivery": "17"},
    }
    assert receipt.provider_id == "d-1@duly.test" and receipt.detail == "HTTP 200"


def test_a_whsec_secret_signs_with_its_decoded_bytes(server: HttpRecorder) -> None:
    server.check = verifier(KEY_BYTES)
    ch = channel(server.url, secret=WHSEC)
    ch.send(message(text="Non-ASCII: Grüße, 你好"))
    ch.close()
    assert server.requests[0].json()["text"] == "Non-ASCII: Grüße, 你好"


# 32 bytes: standard base64 ends in one "=", which the unpadded form leaves out
UNPADDED_KEY = bytes(range(200, 232))
UNPADDED = "whsec_" + base64.b64encode(UNPADDED_KEY).decode().rstrip("=")


@pytest.mark.parametrize("secret", [UNPADDED, UNPADDED + "=", UNPADDED + "=="])
def test_a_whsec_secret_with_or_without_padding_verifies_with_the_reference_library(
    server: HttpRecorder, secret: str
) -> None:
    """The Standard Webhooks reference library takes the base64 after whsec_ with or
    without its padding; the receiver below verifies with that library itself."""
    standardwebhooks = pytest.importorskip("standardwebhooks")
    assert not UNPADDED.endswith("=")
    receiver = standardwebhooks.Webhook(UNPADDED)

    def check(req: Request) -> int | None:
        try:
            receiver.verify(req.body, dict(req.headers))
        except standardwebhooks.WebhookVerificationError:
            return 401
        return None

    server.check = check
    ch = channel(server.url, secret=secret)
    ch.send(message())
    ch.close()
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("sender_secret", "receiver_key"),
    [
        ("another secret", SECRET.encode()),
        (WHSEC, WHSEC.encode()),  # a whsec_ secret is not used as plain text
        (SECRET, KEY_BYTES),
    ],
)
def test_a_wrong_secret_fails_verification(
    server: HttpRecorder, sender_secret: str, receiver_key: bytes
) -> None:
    server.check = verifier(receiver_key)
    ch = channel(server.url, secret=sender_secret)
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.code == "401"
    assert verifier(receiver_key)(server.requests[0]) == 401  # the independent check fails


def test_a_retry_keeps_the_id_and_is_signed_anew(server: HttpRecorder) -> None:
    server.check = verifier(SECRET.encode())
    server.answer(503, b"try later")
    ch = channel(server.url)
    err = send_error(ch)
    assert not err.permanent and err.code == "503" and "try later" in str(err)
    ch.send(message())
    ch.close()
    first, second = server.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "d-1@duly.test"
    assert first.body == second.body
    assert verifier(SECRET.encode())(second) is None


# --------------------------------------------------------------------------- the URL


def test_placeholders_are_filled_and_percent_encoded(server: HttpRecorder) -> None:
    ch = channel(server.url + "/users/{recipient}/notify?to={to}")
    ch.send(message(to="a/b?c=d&e", recipient_id="r 1/x"))
    ch.close()
    path = server.requests[0].path
    assert path == "/users/r%201%2Fx/notify?to=a%2Fb%3Fc%3Dd%26e"
    assert unquote(path.split("?to=")[1]) == "a/b?c=d&e"
    assert "{" not in repr(ch).replace("{to}", "")


def test_repr_shows_only_the_origin() -> None:
    ch = channel("https://hooks.example.test/T0/B0/token?key=k")
    assert repr(ch) == "WebhookChannel(name='hook', url='https://hooks.example.test/…')"
    assert SECRET not in repr(ch)
    ch.close()


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_sent(server: HttpRecorder, status: int) -> None:
    server.answer(status)
    ch = channel(server.url)
    assert ch.send(message()).detail == f"HTTP {status}"
    ch.close()


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (400, True),
        (401, True),
        (404, True),
        (410, True),
        (422, True),
        (408, False),
        (429, False),
        (500, False),
        (502, False),
        (503, False),
    ],
)
def test_status_decides_permanence(server: HttpRecorder, status: int, permanent: bool) -> None:
    server.answer(status, b'{"error": "nope"}')
    ch = channel(server.url)
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code) == (permanent, str(status))
    assert "nope" in str(err)
    assert err.address is False  # the URL has no {to}


def test_410_on_a_per_recipient_url_is_about_the_address(server: HttpRecorder) -> None:
    server.answer(410)
    ch = channel(server.url + "/inbox/{to}")
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.address is True
    assert "the endpoint is gone" in str(err)


def test_a_redirect_is_not_followed(server: HttpRecorder) -> None:
    server.answer(308, headers={"location": "https://new.example.test/hook"})
    ch = channel(server.url)
    err = send_error(ch)
    ch.close()
    assert err.permanent and err.code == "308"
    assert "https://new.example.test/hook" in str(err)
    assert len(server.requests) == 1


def test_a_timeout_is_temporary(server: HttpRecorder) -> None:
    server.answer(200, delay=1.0)
    ch = channel(server.url, timeout="0.2")
    err = send_error(ch)
    ch.close()
    assert not err.permanent and "no answer in time" in str(err)


def test_nothing_listening_is_temporary() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = channel(f"http://127.0.0.1:{port}/hook")
    err = send_error(ch)
    ch.close()
    assert not err.permanent and err.code is None


# --------------------------------------------------------------------------- private addresses


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_unless_allowed(server: HttpRecorder, host: str) -> None:
    url = server.url.replace("127.0.0.1", host)
    refused = channel(url, allow_private=None)
    err = send_error(refused)
    refused.close()
    assert err.permanent and err.code == "private_address"
    assert "loopback address" in str(err)
    assert server.requests == []

    allowed = channel(url, allow_private="yes")
    assert allowed.send(message()).detail == "HTTP 200"
    allowed.close()
    assert len(server.requests) == 1


def test_the_rule_files_setting_allows_private_targets(server: HttpRecorder) -> None:
    options = {"url": server.url, "secret": SECRET}
    allowed = build_channel(ChannelConfig("hook", "webhook", options), allow_private_targets=True)
    allowed.send(message())
    allowed.close()
    denied = build_channel(
        ChannelConfig("hook", "webhook", {**options, "allow_private": "false"}),
        allow_private_targets=True,
    )
    with pytest.raises(DeliveryError, match="loopback"):
        denied.send(message())
    denied.close()
    assert len(server.requests) == 1


def test_private_ranges_are_refused_before_any_connection() -> None:
    # 10.0.0.1 and 169.254.169.254 may not answer here at all: the refusal must come from
    # the check, at once, not from a connection timeout.
    for url in ("http://10.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data"):
        ch = channel(url, allow_private=None, timeout=30)
        t0 = time.perf_counter()
        err = send_error(ch)
        ch.close()
        assert err.code == "private_address" and time.perf_counter() - t0 < 1


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"secret": SECRET}, "missing option 'url'"),
        ({"url": "https://h.test/x"}, "missing option 'secret'"),
        ({"url": "https://h.test/x", "secret": ""}, "secret: empty"),
        ({"url": "https://h.test/x", "secret": "whsec_!!s3cr3t"}, "not base64"),
        ({"url": "https://h.test/x", "secret": "whsec_"}, "whsec_ with nothing after it"),
        ({"url": "mailto:x@y.test", "secret": "s3cr3t"}, "url: expected an http:// or https://"),
        ({"url": "/relative", "secret": "s3cr3t"}, "url: expected an http:// or https://"),
        (
            {"url": "https://h.test/x", "secret": "s3cr3t", "sign": True},
            "unknown option 'sign' (accepted: url, secret, timeout, allow_private)",
        ),
    ],
)
def test_bad_options_name_the_option_never_the_secret(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("hook", "webhook", options))
    assert str(info.value).startswith("channel 'hook' (type webhook): ")
    assert problem in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_the_body_is_compact_utf8_json() -> None:
    from duly.delivery.channels.webhook import payload

    body = payload(message(text="é"))
    assert b'": ' not in body and b'", "' not in body
    assert json.loads(body)["text"] == "é" and "é".encode() in body


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
        ("fd00::1", "unique local (fc00::/7)"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (embedded in ::ffff:7f00:1)"),
        ("2002:a00:1::", "private (embedded in 2002:a00:1::)"),
        ("64:ff9b::a9fe:a9fe", "link-local (embedded in 64:ff9b::a9fe:a9fe)"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_which_addresses_are_public(address: str, problem: str | None) -> None:
    from duly.delivery.channels._http import address_problem

    assert address_problem(address) == problem
