"""The email providers' event webhooks: checking they come from the provider, and reading
what they report. Pure functions (no I/O): fetching Amazon SNS's signing certificate is
duly.delivery.sns, the HTTP side duly.api.inbound_email, the effects duly.engine.receipts.

SendGrid, "Event Webhook security features" → "Signed Event Webhook"
(https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
``X-Twilio-Email-Event-Webhook-Signature`` is the base64 of an ECDSA (P-256, SHA-256,
DER-encoded) signature over ``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw
body; the public key SendGrid shows is the base64 of its DER SubjectPublicKeyInfo. The body
is a JSON array of events ("Event Webhook reference",
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event).

Mailgun, "Webhooks" → "Securing webhooks" (API v3,
https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks/):
the JSON body's ``signature`` object holds ``timestamp``, ``token`` and ``signature``, the
hex HMAC-SHA256 of timestamp + token keyed with the account's HTTP webhook signing key;
``event-data`` is the event ("Events", https://documentation.mailgun.com/docs/mailgun/user-manual/events/).

Amazon SNS, "Verifying the signatures of Amazon SNS messages"
(https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html): the
string to sign is ``Name\\nvalue\\n`` for a fixed list of fields in byte order,
``SignatureVersion`` 1 signs it with SHA1withRSA, 2 with SHA256withRSA, by the key of the
certificate at ``SigningCertURL``. The SES event inside ``Message`` follows "Amazon SES
notification contents" and "Event publishing: contents of event data"
(https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html,
https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html).

Reports are dicts as in duly.delivery.inbound: ``{provider_message_id, status, hard,
occurred_at, detail}``, or None when an event records nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from duly.delivery.inbound import parse_time

__all__ = [
    "SNS_DEFAULT_HOST",
    "cert_url_allowed",
    "load_sendgrid_key",
    "mailgun_report",
    "mailgun_signature_matches",
    "sendgrid_report",
    "sendgrid_signature_matches",
    "ses_report",
    "sns_signature_matches",
    "sns_string_to_sign",
]

_DETAIL_MAX = 2000

# --------------------------------------------------------------------------- SendGrid


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The Signed Event Webhook's verification key from its base64 DER form (as SendGrid
    shows it; a PEM block is accepted too). Raises ValueError saying what is wrong."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise ValueError("not a base64 DER (or PEM) public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def sendgrid_signature_matches(
    key: ec.EllipticCurvePublicKey, timestamp: str, body: bytes, signature: str
) -> bool:
    """Whether ``signature`` (base64 DER ECDSA) signs ``timestamp`` + ``body`` with ``key``."""
    if not signature or not timestamp:
        return False
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError):
        return False
    return True


# A dropped message's reasons that mean the address will never work ("Bounced Address":
# SendGrid's bounce list; "Invalid": an invalid address; "Spam Reporting Address").
_SENDGRID_HARD_DROPS = ("bounced address", "invalid", "spam reporting address")
_SENDGRID_HARD_CLASSES = frozenset({"invalid address", "mailbox unavailable"})


def _unix_time(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, UTC) if 0 < seconds < 1e11 else None
    except (ValueError, OverflowError, OSError):
        return None


def _detail(*parts: Any) -> str | None:
    text = "; ".join(str(p) for p in parts if p not in (None, ""))
    return text[:_DETAIL_MAX] or None


def sendgrid_report(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """One SendGrid event as a report. ``processed`` → accepted, ``delivered`` → delivered,
    ``open`` → read, ``bounce`` → bounced (hard when its ``type`` is ``bounce``, soft when
    ``blocked``; without a type, hard for the classifications Invalid Address and Mailbox
    Unavailable), ``dropped`` → undelivered (hard for Bounced Address, Invalid, Spam
    Reporting Address), ``spamreport`` → complained; others (``deferred``, ``click``,
    ``unsubscribe`` …) and events without ``sg_message_id``: None. The message id is the
    part of ``sg_message_id`` before its first dot: the ``X-Message-Id`` the send returned."""
    sgid = event.get("sg_message_id")
    if not isinstance(sgid, str) or not sgid.strip(".").strip():
        return None
    kind = str(event.get("event") or "")
    hard = False
    if kind == "processed":
        status = "accepted"
    elif kind == "delivered":
        status = "delivered"
    elif kind == "open":
        status = "read"
    elif kind == "spamreport":
        status = "complained"
    elif kind == "bounce":
        status = "bounced"
        btype = str(event.get("type") or "").lower()
        klass = str(event.get("bounce_classification") or "").lower()
        hard = btype == "bounce" or (not btype and klass in _SENDGRID_HARD_CLASSES)
    elif kind == "dropped":
        status = "undelivered"
        reason = str(event.get("reason") or "").lower()
        hard = any(reason.startswith(r) for r in _SENDGRID_HARD_DROPS)
    else:
        return None
    return {
        "provider_message_id": sgid.strip().split(".", 1)[0],
        "status": status,
        "hard": hard,
        "occurred_at": _unix_time(event.get("timestamp")),
        "detail": _detail(
            event.get("type") if kind == "bounce" else None,
            event.get("bounce_classification"),
            event.get("status"),
            event.get("reason") or event.get("response"),
        ),
    }


# --------------------------------------------------------------------------- Mailgun


def mailgun_signature_matches(key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` is the hex HMAC-SHA256 of ``timestamp`` + ``token`` keyed with
    ``key`` (constant time); False when any part is missing."""
    if not (key and timestamp and token and signature):
        return False
    mac = hmac.new(key.encode("utf-8"), (timestamp + token).encode("utf-8"), hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), signature.strip().lower())


def mailgun_report(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Mailgun ``event-data`` as a report: ``accepted`` → accepted, ``delivered`` →
    delivered, ``opened`` → read, ``failed`` → bounced (hard when ``severity`` is
    ``permanent``), ``complained`` → complained; others (``clicked``, ``unsubscribed`` …) and
    events without ``message.headers.message-id``: None."""
    kind = str(data.get("event") or "")
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, Mapping) else None
    mid = headers.get("message-id") if isinstance(headers, Mapping) else None
    if not isinstance(mid, str) or not mid.strip("<> "):
        return None
    hard = False
    status = {
        "accepted": "accepted",
        "delivered": "delivered",
        "opened": "read",
        "failed": "bounced",
        "complained": "complained",
    }.get(kind)
    if status is None:
        return None
    status_info = data.get("delivery-status")
    info = status_info if isinstance(status_info, Mapping) else {}
    if kind == "failed":
        hard = data.get("severity") == "permanent"
    return {
        "provider_message_id": mid.strip().removeprefix("<").removesuffix(">"),
        "status": status,
        "hard": hard,
        "occurred_at": _unix_time(data.get("timestamp")),
        "detail": _detail(
            data.get("severity") if kind == "failed" else None,
            data.get("reason") if kind == "failed" else None,
            info.get("code"),
            info.get("description") or info.get("message"),
        ),
    }


# --------------------------------------------------------------------------- Amazon SNS

SNS_DEFAULT_HOST = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-\d+\.amazonaws\.com(?:\.cn)?")
_SNS_CERT_PATH = re.compile(r"/SimpleNotificationService-[A-Za-z0-9]{1,64}\.pem")
_SNS_FIELDS = {
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
_SNS_FIELDS["UnsubscribeConfirmation"] = _SNS_FIELDS["SubscriptionConfirmation"]
_SNS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def cert_url_allowed(url: Any, prefixes: tuple[str, ...] = (), *, certificate: bool = True) -> bool:
    """Whether duly may fetch ``url``, an SNS ``SigningCertURL`` (``certificate``) or a
    ``SubscribeURL``: with ``prefixes`` (the ses channel's ``sns_certificate_urls``), when
    it starts with one of them; else when it is ``https://sns.<region>.amazonaws.com`` (or
    ``.com.cn``) with no user or port, and, for a certificate, the path
    ``/SimpleNotificationService-<id>.pem`` with no query."""
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        return False
    if prefixes:
        return any(url.startswith(p) for p in prefixes)
    m = re.fullmatch(r"https://([^/?#@:]+)(/[^#]*)", url)
    if m is None or SNS_DEFAULT_HOST.fullmatch(m.group(1).lower()) is None:
        return False
    return not certificate or _SNS_CERT_PATH.fullmatch(m.group(2)) is not None


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes | None:
    """The bytes SNS signed for ``message`` (None for an unknown ``Type`` or a field that is
    not a string). ``Subject`` is left out when absent, as SNS does."""
    fields = _SNS_FIELDS.get(str(message.get("Type")))
    if fields is None:
        return None
    out = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            return None
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


def sns_signature_matches(key: Any, message: Mapping[str, Any]) -> bool:
    """Whether ``message`` carries a valid SNS ``Signature`` (``SignatureVersion`` 1 or 2)
    by the RSA public ``key`` of its signing certificate."""
    algorithm = _SNS_HASHES.get(str(message.get("SignatureVersion")))
    data = sns_string_to_sign(message)
    signature = message.get("Signature")
    if algorithm is None or data is None or not isinstance(signature, str):
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, data, padding.PKCS1v15(), algorithm())
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def ses_report(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """An SES event (the JSON in an SNS ``Message``: ``eventType`` of event publishing or
    ``notificationType`` of identity notifications) as a report: ``Send`` → accepted,
    ``Delivery`` → delivered, ``Open`` → read, ``Bounce`` → bounced (hard when
    ``bounceType`` is ``Permanent``; ``Transient`` and ``Undetermined`` are soft),
    ``Complaint`` → complained, ``Reject`` → undelivered; others (``DeliveryDelay``,
    ``Click`` …) or without ``mail.messageId``: None."""
    kind = event.get("eventType") or event.get("notificationType")
    mail = event.get("mail")
    mid = mail.get("messageId") if isinstance(mail, Mapping) else None
    if not isinstance(mid, str) or not mid.strip():
        return None
    hard = False
    if kind == "Bounce":
        part, status = event.get("bounce"), "bounced"
        info = part if isinstance(part, Mapping) else {}
        hard = info.get("bounceType") == "Permanent"
        diag = [
            r.get("diagnosticCode")
            for r in info.get("bouncedRecipients") or []
            if isinstance(r, Mapping)
        ]
        detail = _detail(info.get("bounceType"), info.get("bounceSubType"), *diag[:3])
    elif kind == "Complaint":
        part, status = event.get("complaint"), "complained"
        info = part if isinstance(part, Mapping) else {}
        detail = _detail(info.get("complaintFeedbackType"), info.get("complaintSubType"))
    elif kind == "Delivery":
        part, status = event.get("delivery"), "delivered"
        info = part if isinstance(part, Mapping) else {}
        detail = _detail(info.get("smtpResponse"))
    elif kind == "Open":
        part, status = event.get("open"), "read"
        info = part if isinstance(part, Mapping) else {}
        detail = None
    elif kind == "Send":
        info, status, detail = dict(mail) if isinstance(mail, Mapping) else {}, "accepted", None
    elif kind == "Reject":
        part, status = event.get("reject"), "undelivered"
        info = part if isinstance(part, Mapping) else {}
        detail = _detail(info.get("reason"))
        info = dict(mail) if isinstance(mail, Mapping) else {}
    else:
        return None
    return {
        "provider_message_id": mid.strip(),
        "status": status,
        "hard": hard,
        "occurred_at": parse_time(info.get("timestamp")),
        "detail": detail,
    }
