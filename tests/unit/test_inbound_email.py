"""The email providers' webhook parsers and checks (duly.delivery.inbound_email), and the
channel options that configure them: bad values are refused naming the option."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.inbound_email import (
    cert_url_allowed,
    mailgun_report,
    mailgun_signature_matches,
    sendgrid_report,
    ses_report,
    sns_string_to_sign,
)
from fakes.email_webhooks import SendGridSigner, mailgun_body, sendgrid_event, ses_event

SES = {
    "from": "a@acme.test",
    "region": "eu-west-1",
    "access_key_id": "AKIAABCDEFGHIJKLMNOP",
    "secret_access_key": "s",
}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True),
        ("http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://sns.eu-west-1.amazonaws.com.evil.test/x.pem", False),
        ("https://sns.eu-west-1.amazonaws.com@evil.test/x.pem", False),
        ("https://sns.eu-west-1.amazonaws.com:8443/x.pem", False),
        ("https://evil.test/sns.eu-west-1.amazonaws.com/x.pem", False),
        ("https://s3.amazonaws.com/x.pem", False),
        ("", False),
        (None, False),
    ],
)
def test_default_certificate_hosts(url: str, ok: bool) -> None:
    assert cert_url_allowed(url) is ok


def test_default_certificate_paths_and_subscription_urls() -> None:
    host = "https://sns.us-west-2.amazonaws.com"
    assert not cert_url_allowed(host + "/anything.pem")
    assert not cert_url_allowed(host + "/SimpleNotificationService-abc.pem?x=1")
    confirm = host + "/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:1:t&Token=x"
    assert cert_url_allowed(confirm, certificate=False)
    assert not cert_url_allowed(confirm)
    assert not cert_url_allowed("https://evil.test/?Action=ConfirmSubscription", certificate=False)


def test_configured_certificate_prefixes_replace_the_default() -> None:
    prefixes = ("http://127.0.0.1:8080/",)
    assert cert_url_allowed("http://127.0.0.1:8080/cert.pem", prefixes)
    assert not cert_url_allowed("http://127.0.0.1:8081/cert.pem", prefixes)
    assert not cert_url_allowed("https://sns.eu-west-1.amazonaws.com/x.pem", prefixes)


def test_sns_string_to_sign_skips_an_absent_subject_and_refuses_odd_types() -> None:
    msg = {
        "Type": "Notification",
        "Message": "m",
        "MessageId": "1",
        "Timestamp": "t",
        "TopicArn": "a",
    }
    assert (
        sns_string_to_sign(msg)
        == b"Message\nm\nMessageId\n1\nTimestamp\nt\nTopicArn\na\nType\nNotification\n"
    )
    assert sns_string_to_sign({**msg, "Type": "Other"}) is None
    assert sns_string_to_sign({**msg, "Message": 5}) is None


def test_sendgrid_events_map_to_receipts() -> None:
    hard = sendgrid_report(sendgrid_event("bounce", "XID", type="bounce"))
    assert hard is not None and (hard["status"], hard["hard"]) == ("bounced", True)
    assert hard["provider_message_id"] == "XID"
    soft = sendgrid_report(sendgrid_event("bounce", "XID", type="blocked"))
    assert soft is not None and soft["hard"] is False
    dropped = sendgrid_report(sendgrid_event("dropped", "XID", reason="Bounced Address"))
    assert dropped is not None and (dropped["status"], dropped["hard"]) == ("undelivered", True)
    unsub = sendgrid_report(sendgrid_event("dropped", "XID", reason="Unsubscribed Address"))
    assert unsub is not None and unsub["hard"] is False
    spam = sendgrid_report(sendgrid_event("spamreport", "XID"))
    assert spam is not None and spam["status"] == "complained"
    for kind in ("deferred", "click", "unsubscribe"):
        assert sendgrid_report(sendgrid_event(kind, "XID")) is None
    assert sendgrid_report({"event": "delivered"}) is None
    assert sendgrid_report({**sendgrid_event("delivered", "X"), "timestamp": "soon"}) is not None


def test_mailgun_signature_and_events() -> None:
    body = mailgun_body("key", {})
    s = body["signature"]
    assert mailgun_signature_matches("key", s["timestamp"], s["token"], s["signature"])
    assert not mailgun_signature_matches("other", s["timestamp"], s["token"], s["signature"])
    assert not mailgun_signature_matches("key", s["timestamp"], s["token"], "")
    data = {
        "event": "failed",
        "severity": "permanent",
        "message": {"headers": {"message-id": "<a@b>"}},
    }
    got = mailgun_report(data)
    assert got is not None and got["provider_message_id"] == "a@b" and got["hard"] is True
    assert mailgun_report({**data, "event": "clicked"}) is None
    assert mailgun_report({"event": "delivered", "message": "x"}) is None


def test_ses_events_map_to_receipts() -> None:
    perm = ses_report(ses_event("Bounce", "M1"))
    assert perm is not None and (perm["status"], perm["hard"]) == ("bounced", True)
    assert "550 5.1.1" in perm["detail"] and perm["occurred_at"] is not None
    for kind in ("Transient", "Undetermined"):
        soft = ses_report(ses_event("Bounce", "M1", bounceType=kind))
        assert soft is not None and soft["hard"] is False
    old_style = {"notificationType": "Complaint", "mail": {"messageId": "M2"}, "complaint": {}}
    got = ses_report(old_style)
    assert got is not None and got["status"] == "complained" and got["occurred_at"] is None
    assert ses_report({"eventType": "DeliveryDelay", "mail": {"messageId": "M"}}) is None
    assert ses_report({"eventType": "Bounce", "mail": None}) is None


def _build(kind: str, **options: object) -> object:
    return build_channel(ChannelConfig("mail", kind, dict(options)))


def test_channel_options_are_checked_naming_the_option() -> None:
    key = SendGridSigner().public_key
    ch = _build("sendgrid", **{"from": "a@acme.test", "api_key": "k", "webhook_public_key": key})
    assert ch.webhook_key is not None  # type: ignore[attr-defined]
    with pytest.raises(ChannelConfigError, match="webhook_public_key: not a base64 DER"):
        _build("sendgrid", **{"from": "a@acme.test", "api_key": "k", "webhook_public_key": "xx"})
    rsa_der = base64.b64encode(
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    with pytest.raises(ChannelConfigError, match="webhook_public_key: not an ECDSA P-256"):
        _build("sendgrid", **{"from": "a@acme.test", "api_key": "k", "webhook_public_key": rsa_der})
    with pytest.raises(ChannelConfigError, match="sns_topic_arns: 'nope' is not valid"):
        _build("ses", **SES, sns_topic_arns=["nope"])
    with pytest.raises(ChannelConfigError, match="sns_certificate_urls"):
        _build("ses", **SES, sns_certificate_urls="ftp://x/")
    with pytest.raises(ChannelConfigError, match="sns_confirm"):
        _build("ses", **SES, sns_confirm="maybe")
    ses = _build("ses", **SES, sns_topic_arns="arn:aws:sns:eu-west-1:123456789012:t")
    assert ses.sns_topic_arns == ("arn:aws:sns:eu-west-1:123456789012:t",)  # type: ignore[attr-defined]
