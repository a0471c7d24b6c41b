"""Provider callbacks: checking they come from the provider, and reading what they report.

Pure functions (no I/O): the HTTP side is duly.api.inbound, the effects duly.engine.receipts.

Twilio (https://www.twilio.com/docs/usage/webhooks/webhooks-security, "Validating signatures
from Twilio"): ``X-Twilio-Signature`` is base64(HMAC-SHA1(auth token, URL + the POST
parameters sorted by name, each name followed by its value, no separators)), where URL is
the full URL Twilio requested, query string included.

Postmark (https://postmarkapp.com/developer/webhooks/webhooks-overview, "Protecting your
webhook"): HTTP basic auth credentials put in the webhook's URL, checked here against the
channel's ``webhook_secret`` (``user:password``).

A report is read into a dict ``{provider_message_id, status, hard, occurred_at, detail}``
(``status`` one of duly.store.receipts.RECEIPT_STATUSES; ``occurred_at`` None when the
provider gives no time), or None when it reports nothing duly records.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from duly.delivery.channels.twilio import ADDRESS_CODES

__all__ = [
    "TWILIO_HARD_CODES",
    "basic_auth_matches",
    "parse_time",
    "postmark_report",
    "twilio_signature",
    "twilio_signature_matches",
    "twilio_status_report",
]

# Twilio error codes of a status callback that mean the number itself will never work:
# 30005 unknown destination handset, 30006 landline or unreachable carrier, and the
# address codes of the Messages API (invalid number, not a mobile, unsubscribed, no
# WhatsApp account: duly.delivery.channels.twilio.ADDRESS_CODES).
TWILIO_HARD_CODES = frozenset({30005, 30006}) | ADDRESS_CODES

# Twilio MessageStatus → receipt status; absent (queued, sending, scheduled, canceled …):
# nothing to record.
_TWILIO_STATUS = {
    "sent": "accepted",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "undelivered",
    "failed": "undelivered",
}


def twilio_signature(token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The ``X-Twilio-Signature`` Twilio computes for a POST of form ``params`` to ``url``
    (values of a repeated name in sorted order, as Twilio's own validators do)."""
    by_name: dict[str, list[str]] = {}
    for k, v in params:
        by_name.setdefault(k, []).append(v)
    data = url + "".join(k + v for k in sorted(by_name) for v in sorted(by_name[k]))
    mac = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def twilio_signature_matches(
    token: str, urls: Iterable[str], params: list[tuple[str, str]], signature: str
) -> bool:
    """Whether ``signature`` is Twilio's for ``params`` posted to one of ``urls`` (compared
    in constant time); False for an empty signature."""
    if not signature or not token:
        return False
    return any(
        hmac.compare_digest(twilio_signature(token, u, params).encode(), signature.encode())
        for u in urls
    )


def basic_auth_matches(header: str, secret: str | None) -> bool:
    """Whether the ``Authorization: Basic …`` header carries ``secret`` (``user:password``),
    compared in constant time; False without a secret or a header."""
    if not secret or not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, secret.encode("utf-8"))


def twilio_status_report(form: Mapping[str, str]) -> dict[str, Any] | None:
    """A Twilio status callback (``MessageSid``, ``MessageStatus``, ``ErrorCode``) as a
    report; None for a status that records nothing or without a message id. Twilio gives
    no time: ``occurred_at`` is None (the receipt is then one per message and status)."""
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    status = _TWILIO_STATUS.get((form.get("MessageStatus") or "").strip().lower())
    if not sid or status is None:
        return None
    code_text = (form.get("ErrorCode") or "").strip()
    code = int(code_text) if code_text.isdigit() else None
    detail = f"Twilio {form.get('MessageStatus')}" + (f", error {code}" if code else "")
    return {
        "provider_message_id": sid,
        "status": status,
        "hard": status == "undelivered" and code in TWILIO_HARD_CODES,
        "occurred_at": None,
        "detail": detail,
    }


# Postmark bounce types that mean the address will never work.
_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


def postmark_report(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Postmark webhook body (``RecordType`` Delivery, Bounce, SpamComplaint, Open) as a
    report; None for other record types (Click, SubscriptionChange …) or without a
    ``MessageID``. A bounce is hard when its ``Type`` is HardBounce, BadEmailAddress or
    ManuallyDeactivated, or Postmark made the address ``Inactive``."""
    kind = body.get("RecordType")
    pmid = body.get("MessageID")
    if not isinstance(pmid, str) or not pmid.strip():
        return None
    if kind == "Delivery":
        status, at, hard = "delivered", body.get("DeliveredAt"), False
    elif kind == "Bounce":
        status, at = "bounced", body.get("BouncedAt")
        hard = body.get("Type") in _POSTMARK_HARD or body.get("Inactive") is True
    elif kind == "SpamComplaint":
        status, at, hard = "complained", body.get("BouncedAt"), False
    elif kind == "Open":
        status, at, hard = "read", body.get("ReceivedAt"), False
    else:
        return None
    parts = [str(body[k]) for k in ("Type", "Description", "Details") if body.get(k)]
    return {
        "provider_message_id": pmid.strip(),
        "status": status,
        "hard": hard,
        "occurred_at": parse_time(at),
        "detail": "; ".join(parts)[:2000] or None,
    }


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; more than 6 fractional digits cut) as aware
    UTC; None when absent or not a time (a naive time is taken as UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
