"""Provider callbacks: checking they come from the provider, and reading what they report.

Pure functions (no I/O): the HTTP side is duly.api.inbound, the effects duly.engine.receipts.

Twilio (https://www.twilio.com/docs/usage/webhooks/webhooks-security, "Validating signatures
from Twilio"): ``X-Twilio-Signature`` is base64(HMAC-SHA1(auth token, URL + the POST
parameters sorted by name, each name followed by its value, no separators)), where URL is
the full URL Twilio requested, query string included.

Postmark (https://postmarkapp.com/developer/webhooks/webhooks-overview, "Protecting your
webhook"): HTTP basic auth credentials put in the webhook's URL, checked here against the
channel's ``webhook_secret`` (``user:password``).

Meta, WhatsApp Cloud API (Graph API v21.0, "Webhooks" → "Set up webhooks" and the
``messages`` field reference, https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks):
a POST carries ``X-Hub-Signature-256: sha256=`` + hex(HMAC-SHA256(app secret, raw body));
its JSON body is ``{"object": "whatsapp_business_account", "entry": [{"id", "changes":
[{"field": "messages", "value": {"metadata": {"phone_number_id"}, "statuses": [...],
"messages": [...]}}]}]}``. A status is ``{"id": "wamid…", "status": "sent" | "delivered" |
"read" | "failed", "timestamp": "<unix seconds>", "recipient_id", "errors": [{"code",
"title", "message", "error_data": {"details"}}]}``; an inbound message ``{"from":
"<wa_id: digits>", "id": "wamid…", "timestamp", "type": "text", "text": {"body"}}`` (or
``"button": {"text", "payload"}``, ``"interactive": {"button_reply": {"title"}}``).

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

from duly.delivery.channels import whatsapp_cloud
from duly.delivery.channels.twilio import ADDRESS_CODES

__all__ = [
    "TWILIO_HARD_CODES",
    "basic_auth_matches",
    "parse_time",
    "postmark_report",
    "secret_matches",
    "twilio_signature",
    "twilio_signature_matches",
    "twilio_status_report",
    "whatsapp_cloud_changes",
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


def secret_matches(given: str | None, secret: str | None) -> bool:
    """Whether ``given`` is ``secret`` (compared in constant time); False when either is
    missing or empty (e.g. Meta's ``hub.verify_token`` against the channel's)."""
    if not given or not secret:
        return False
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


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


# ----------------------------------------------------------------- Meta WhatsApp Cloud API

# Meta status → receipt status; absent (deleted, warning …): nothing to record.
_META_STATUS = {
    "sent": "accepted",
    "delivered": "delivered",
    "read": "read",
    "failed": "undelivered",
}
_META_MAX_ITEMS = 1000  # statuses and messages read from one webhook, at most
_TEXT_MAX = 4096


def _epoch(value: Any) -> datetime | None:
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    if not text.isdigit() or len(text) > 12:
        return None
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def whatsapp_status_report(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """One ``statuses[]`` item as a report (``occurred_at`` its ``timestamp``); None for a
    status that records nothing or without an id. A failure is hard when one of its errors
    is about the number (duly.delivery.channels.whatsapp_cloud.ADDRESS_CODES: 131026)."""
    wamid = status.get("id")
    kind = status.get("status")
    state = _META_STATUS.get(kind.strip().lower()) if isinstance(kind, str) else None
    if not isinstance(wamid, str) or not wamid.strip() or state is None:
        return None
    codes: list[int] = []
    texts: list[str] = []
    errors = status.get("errors")
    for err in errors[:10] if isinstance(errors, list) else []:
        if not isinstance(err, Mapping):
            continue
        code = err.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            codes.append(code)
        data = err.get("error_data")
        details = data.get("details") if isinstance(data, Mapping) else None
        for part in (err.get("title"), err.get("message"), details):
            if isinstance(part, str) and part.strip() and part.strip() not in texts:
                texts.append(part.strip())
    detail = f"WhatsApp {kind}" + (f", error {', '.join(map(str, codes))}" if codes else "")
    if texts:
        detail += ": " + "; ".join(texts)
    return {
        "provider_message_id": wamid.strip(),
        "status": state,
        "hard": state == "undelivered" and any(c in whatsapp_cloud.ADDRESS_CODES for c in codes),
        "occurred_at": _epoch(status.get("timestamp")),
        "detail": detail[:2000],
    }


def whatsapp_inbound(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """One ``messages[]`` item as ``{id, phone, body, at}`` (``phone`` E.164 with ``+``;
    ``body`` the text, a button's text or an interactive reply's title, else empty;
    ``at`` None without a valid timestamp); None without a sender or an id."""
    sender, mid = message.get("from"), message.get("id")
    if not isinstance(sender, str) or not sender.strip().lstrip("+").isdigit():
        return None
    if not isinstance(mid, str) or not mid.strip():
        return None
    body: Any = ""
    kind = message.get("type")
    part = message.get(kind) if isinstance(kind, str) else None
    if kind == "text" and isinstance(part, Mapping):
        body = part.get("body")
    elif kind == "button" and isinstance(part, Mapping):
        body = part.get("text") or part.get("payload")
    elif kind == "interactive" and isinstance(part, Mapping):
        reply = part.get("button_reply") or part.get("list_reply")
        body = reply.get("title") if isinstance(reply, Mapping) else ""
    return {
        "id": mid.strip()[:200],
        "phone": "+" + sender.strip().lstrip("+")[:20],
        "body": body[:_TEXT_MAX] if isinstance(body, str) else "",
        "at": _epoch(message.get("timestamp")),
    }


def whatsapp_cloud_changes(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``messages`` changes of a Meta webhook body, each ``{phone_number_id, statuses,
    messages}`` (the reports of :func:`whatsapp_status_report` and the inbound messages of
    :func:`whatsapp_inbound`, malformed items left out), at most :data:`_META_MAX_ITEMS`
    items in all. Other fields and objects: nothing."""
    out: list[dict[str, Any]] = []
    budget = _META_MAX_ITEMS
    entries = body.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, Mapping) else None
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, Mapping) or change.get("field") != "messages":
                continue
            value = change.get("value")
            if not isinstance(value, Mapping):
                continue
            meta = value.get("metadata")
            pnid = meta.get("phone_number_id") if isinstance(meta, Mapping) else None
            statuses, messages = [], []
            for item in _items(value.get("statuses"), budget):
                budget -= 1
                report = whatsapp_status_report(item)
                if report is not None:
                    statuses.append(report)
            for item in _items(value.get("messages"), budget):
                budget -= 1
                got = whatsapp_inbound(item)
                if got is not None:
                    messages.append(got)
            out.append(
                {
                    "phone_number_id": str(pnid) if isinstance(pnid, (str, int)) else None,
                    "statuses": statuses,
                    "messages": messages,
                }
            )
    return out


def _items(value: Any, budget: int) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or budget <= 0:
        return []
    return [v for v in value[:budget] if isinstance(v, Mapping)]
