"""What SendGrid, Mailgun and Amazon SES (through SNS) send back to duly: their event
webhooks, signed here the way each provider documents it, independently of duly's code.

- SendGrid, "Event Webhook security features" → "Signed Event Webhook" (v3, checked
  2026-12; https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
  SendGrid keeps an ECDSA P-256 key pair per account and shows the public key as the base64
  of its DER SubjectPublicKeyInfo; each POST carries ``X-Twilio-Email-Event-Webhook-Timestamp``
  and ``X-Twilio-Email-Event-Webhook-Signature``, the base64 DER ECDSA-SHA256 signature of
  the timestamp followed by the raw body. The body is a JSON array of events as the "Event
  Webhook reference" shows them (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event):
  ``email``, ``timestamp``, ``event``, ``sg_event_id``, ``sg_message_id`` (the send's
  ``X-Message-Id`` then ``.filter…``), bounce ``type`` (bounce / blocked),
  ``bounce_classification``, ``reason``, ``status``, and the send's ``custom_args``.
- Mailgun, "Securing webhooks" and "Events" (API v3, https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks/,
  https://documentation.mailgun.com/docs/mailgun/user-manual/events/): a JSON body
  ``{"signature": {"timestamp", "token", "signature"}, "event-data": {…}}``, the signature
  the hex HMAC-SHA256 of timestamp + token keyed with the HTTP webhook signing key; a
  ``failed`` event has ``severity`` permanent or temporary and ``delivery-status``.
- Amazon SNS, "Parsing message formats" and "Verifying the signatures of Amazon SNS
  messages" (https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html,
  https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html):
  SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA over ``Name\\nvalue\\n`` of the
  type's fields in byte order, the certificate at ``SigningCertURL``; SES events as in
  "Amazon SES notification contents" (https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html).

:class:`FakeSns` is a real local HTTP server holding a CA and a signing certificate made
here with ``cryptography``: it serves the certificate (as SNS serves
``SimpleNotificationService-….pem``) and the ``SubscribeURL`` (recording confirmations).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from fakes.local_server import Incoming, LocalServer, Reply

__all__ = [
    "FakeSns",
    "SendGridSigner",
    "mailgun_body",
    "sendgrid_event",
    "ses_event",
]


def _iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- SendGrid


class SendGridSigner:
    """An account's Signed Event Webhook key pair."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()  # as SendGrid's settings show it

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The headers SendGrid sends with ``body``, signed now (or at ``timestamp``)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        sig = self._key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


def sendgrid_event(event: str, x_message_id: str, **fields: Any) -> dict[str, Any]:
    """One event as SendGrid posts it (fields as in the Event Webhook reference)."""
    return {
        "email": "alice@example.test",
        "timestamp": int(time.time()),
        "smtp-id": f"<{x_message_id}@ismtpd0001p1lon1.sendgrid.net>",
        "event": event,
        "category": [],
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
        "sg_message_id": f"{x_message_id}.filterdrecv-5645d9c87f-6r2ch-1-5FE0B9E5-1.0",
        **fields,
    }


# --------------------------------------------------------------------------- Mailgun


def mailgun_body(
    key: str, event: dict[str, Any], *, timestamp: int | None = None, token: str | None = None
) -> dict[str, Any]:
    """A webhook body signed with the signing ``key``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)  # Mailgun's tokens: 50 random characters
    mac = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": stamp, "token": token, "signature": mac},
        "event-data": event,
    }


def mailgun_event(event: str, message_id: str, **fields: Any) -> dict[str, Any]:
    """An ``event-data`` as Mailgun's Events page shows it."""
    return {
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time(),
        "event": event,
        "recipient": "alice@example.test",
        "message": {"headers": {"message-id": message_id, "to": "alice@example.test"}},
        **fields,
    }


# --------------------------------------------------------------------------- Amazon SES


def ses_event(kind: str, message_id: str, **part: Any) -> dict[str, Any]:
    """An SES event-publishing record (``eventType``) with its ``mail`` and the part named
    after the type (``bounce``, ``complaint``, ``delivery`` …) holding ``part``."""
    now = _iso()
    mail = {
        "timestamp": now,
        "source": "billing@acme.test",
        "messageId": message_id,
        "destination": ["alice@example.test"],
    }
    body: dict[str, Any] = {"eventType": kind, "mail": mail}
    if kind == "Bounce":
        body["bounce"] = {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": "alice@example.test",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": now,
            "feedbackId": uuid.uuid4().hex,
            **part,
        }
    elif kind == "Complaint":
        body["complaint"] = {
            "complainedRecipients": [{"emailAddress": "alice@example.test"}],
            "timestamp": now,
            "feedbackId": uuid.uuid4().hex,
            "complaintFeedbackType": "abuse",
            **part,
        }
    elif kind == "Delivery":
        body["delivery"] = {
            "timestamp": now,
            "recipients": ["alice@example.test"],
            "smtpResponse": "250 2.6.0 Message received",
            **part,
        }
    return body


_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}


class FakeSns(LocalServer):
    """SNS's side of an HTTP/S subscription: a CA, a signing certificate it issued, served
    at ``/SimpleNotificationService-<id>.pem``; ``/confirm?Token=…`` records a confirmation
    (SNS's ``ConfirmSubscription`` by GET). :meth:`notification` and
    :meth:`subscription_confirmation` make signed messages."""

    methods: ClassVar[tuple[str, ...]] = ("GET",)

    def __init__(self, topic: str = "arn:aws:sns:eu-west-1:123456789012:duly-ses") -> None:
        self.topic = topic
        self.confirmed: list[str] = []
        self.cert_requests = 0
        self.ca_key, self.ca_cert = _certificate("Fake Amazon Root CA", None, None)
        self.key, self.cert = _certificate("sns.eu-west-1.amazonaws.com", self.ca_key, self.ca_cert)
        self.cert_path = f"/SimpleNotificationService-{secrets.token_hex(16)}.pem"

    def respond(self, request: Incoming) -> Reply:
        if request.path.split("?", 1)[0] == self.cert_path:
            self.cert_requests += 1
            return Reply(200, self.cert.public_bytes(serialization.Encoding.PEM))
        if request.path.startswith("/confirm?"):
            self.confirmed.append(request.path.split("Token=", 1)[-1])
            return Reply(200, b"<ConfirmSubscriptionResponse/>")
        return Reply(404, b"")

    @property
    def cert_url(self) -> str:
        return self.url + self.cert_path

    def sign(self, msg: dict[str, Any], version: str = "1", key: Any = None) -> dict[str, Any]:
        """``msg`` with ``SignatureVersion``, ``Signature`` and ``SigningCertURL``."""
        data = "".join(
            f"{name}\n{msg[name]}\n" for name in _FIELDS[msg["Type"]] if name in msg
        ).encode()
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        sig = (key or self.key).sign(data, padding.PKCS1v15(), algorithm)
        return {
            **msg,
            "SignatureVersion": version,
            "Signature": base64.b64encode(sig).decode(),
            "SigningCertURL": self.cert_url,
        }

    def notification(
        self, event: dict[str, Any], *, version: str = "1", at: datetime | None = None
    ) -> dict[str, Any]:
        """A signed Notification carrying the SES ``event`` (as JSON in ``Message``)."""
        msg = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": self.topic,
            "Message": json.dumps(event),
            "Timestamp": _iso(at),
            "UnsubscribeURL": f"{self.url}/unsubscribe?SubscriptionArn={self.topic}:1",
        }
        return self.sign(msg, version)

    def subscription_confirmation(self, version: str = "1") -> dict[str, Any]:
        token = secrets.token_hex(32)
        msg = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": self.topic,
            "Message": f"You have chosen to subscribe to the topic {self.topic}.",
            "SubscribeURL": f"{self.url}/confirm?Action=ConfirmSubscription&Token={token}",
            "Timestamp": _iso(),
        }
        return self.sign(msg, version)


def _certificate(name: str, issuer_key: Any, issuer: Any) -> tuple[Any, x509.Certificate]:
    """A 2048-bit RSA key and its certificate for ``name``, issued by ``issuer`` (None:
    self-signed, a CA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert
