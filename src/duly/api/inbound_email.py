"""The email providers' event webhooks (public: no API key; the provider's signature is the
permission). Postmark's is in duly.api.inbound.

- ``POST /inbound/sendgrid``: SendGrid's Event Webhook, signed (Signed Event Webhook:
  ECDSA over ``X-Twilio-Email-Event-Webhook-Timestamp`` + the body) with a key a
  ``sendgrid`` channel's ``webhook_public_key`` verifies.
- ``POST /inbound/mailgun``: Mailgun's webhooks, signed (HMAC-SHA256 over timestamp +
  token) with a ``mailgun`` channel's ``webhook_signing_key``.
- ``POST /inbound/ses``: Amazon SES events through an SNS HTTP/S subscription: the SNS
  signature checked against the certificate at ``SigningCertURL`` (an allowed URL only), the
  topic one of an ``ses`` channel's ``sns_topic_arns``; a ``SubscriptionConfirmation`` is
  confirmed (GET of its ``SubscribeURL``) when the channel's ``sns_confirm`` is on, else
  logged for the operator to confirm.

Each refuses, with 403, a request that is unsigned, wrongly signed, or signed more than
:data:`TOLERANCE` (SNS: :data:`SNS_TOLERANCE`) seconds away from now. A replay — the same
SendGrid ``sg_event_id``, Mailgun ``token`` or SNS ``MessageId`` again, remembered by this
process for twice :data:`SNS_TOLERANCE` (longer than any accepted request stays fresh) — is
answered 200 and does nothing; the receipts are also
idempotent in the database, so a replay reaching another process changes nothing either.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from duly.api.errors import ApiError
from duly.api.inbound import SeenSignatures
from duly.delivery import inbound_email as parse
from duly.delivery.sns import SnsCertificates, SnsError, confirm_subscription
from duly.engine.receipts import ReceiptEvent, record_receipts

__all__ = ["MAX_EVENTS", "SNS_TOLERANCE", "TOLERANCE", "router"]

log = logging.getLogger("duly.inbound")

TOLERANCE = 600.0  # seconds a SendGrid or Mailgun signature's timestamp may be off
SNS_TOLERANCE = 3600.0  # SNS retries a notification for up to an hour (its delivery policy)
MAX_EVENTS = 10_000  # events read from one SendGrid request

router = APIRouter(tags=["inbound"], include_in_schema=False)


def _state(request: Request, name: str, make: Any) -> Any:
    state = request.app.state
    got = getattr(state, name, None)
    if got is None:
        got = make()
        setattr(state, name, got)
    return got


def _seen(request: Request) -> SeenSignatures:
    return _state(  # type: ignore[no-any-return]
        request, "inbound_email_seen", lambda: SeenSignatures(window=2 * SNS_TOLERANCE)
    )


def _channels(request: Request, kind: str) -> list[Any]:
    chans = getattr(request.app.state.runtime.dispatcher, "channels", {}) or {}
    return [c for _, c in sorted(chans.items()) if getattr(c, "type", "") == kind]


def _metrics(request: Request) -> Any:
    rt = request.app.state.runtime
    return getattr(rt, "metrics", None) or getattr(rt.dispatcher, "metrics", None)


async def _record(request: Request, provider: str, reports: list[dict[str, Any]]) -> None:
    if reports:
        events = [ReceiptEvent(provider=provider, **r) for r in reports]
        rt = request.app.state.runtime
        await run_in_threadpool(record_receipts, rt.engine, events, _metrics(request))


def _fresh(timestamp: Any, tolerance: float, what: str) -> None:
    """403 unless ``timestamp`` (Unix seconds) is within ``tolerance`` of now."""
    try:
        at = float(timestamp)
    except (TypeError, ValueError):
        raise ApiError(403, "forbidden", f"{what} is not a time") from None
    if not abs(time.time() - at) <= tolerance:
        raise ApiError(403, "forbidden", f"{what} is too old or in the future (a replay?)")


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise ApiError(400, "invalid", "the body is not JSON (or nests too deep)") from None


# --------------------------------------------------------------------------- SendGrid


@router.post("/inbound/sendgrid")
async def sendgrid(request: Request) -> Response:
    """SendGrid's Event Webhook (a JSON array of events): processed, delivered, open,
    bounce, dropped and spamreport are recorded; others acknowledged. 200; 403 when not
    signed by a ``sendgrid`` channel's key or signed too long ago; 400 when the body is
    not a JSON array."""
    signature = request.headers.get("x-twilio-email-event-webhook-signature", "").strip()
    stamp = request.headers.get("x-twilio-email-event-webhook-timestamp", "").strip()
    if not signature or not stamp:
        raise ApiError(403, "forbidden", "missing X-Twilio-Email-Event-Webhook-Signature")
    body = await request.body()
    keys = [c.webhook_key for c in _channels(request, "sendgrid") if c.webhook_key is not None]
    if not any(parse.sendgrid_signature_matches(k, stamp, body, signature) for k in keys):
        raise ApiError(403, "forbidden", "the SendGrid event webhook signature does not match")
    _fresh(stamp, TOLERANCE, "X-Twilio-Email-Event-Webhook-Timestamp")
    events = await _json(request)
    if not isinstance(events, list):
        raise ApiError(400, "invalid", "the body is not a JSON array of events")
    seen = _seen(request)
    reports, ids = [], []
    for ev in events[:MAX_EVENTS]:
        if not isinstance(ev, dict):
            continue  # one bad item never stops the rest
        eid = ev.get("sg_event_id")
        key = f"sendgrid:{eid}" if isinstance(eid, str) and eid else None
        if key is not None and (seen.seen(key) or key in ids):
            continue
        report = parse.sendgrid_report(ev)
        if report is not None:
            reports.append(report)
        if key is not None:
            ids.append(key)
    await _record(request, "sendgrid", reports)
    for key in ids:
        seen.add(key)
    return Response(status_code=200)


# --------------------------------------------------------------------------- Mailgun


@router.post("/inbound/mailgun")
async def mailgun(request: Request) -> Response:
    """A Mailgun webhook (``{"signature": {timestamp, token, signature}, "event-data":
    {…}}``): accepted, delivered, opened, failed and complained are recorded; others
    acknowledged. 200; 403 when not signed with a ``mailgun`` channel's signing key or
    signed too long ago; 400 when the body is not a JSON object."""
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body is not a JSON object")
    sig = body.get("signature")
    sig = sig if isinstance(sig, dict) else {}
    stamp, token, mac = (str(sig.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not (stamp and token and mac):
        raise ApiError(403, "forbidden", "missing signature (timestamp, token, signature)")
    keys = [getattr(c, "_webhook_signing_key", None) for c in _channels(request, "mailgun")]
    if not any(parse.mailgun_signature_matches(k, stamp, token, mac) for k in keys if k):
        raise ApiError(403, "forbidden", "the Mailgun webhook signature does not match")
    _fresh(stamp, TOLERANCE, "signature.timestamp")
    seen, key = _seen(request), f"mailgun:{token}"
    if not seen.seen(key):
        data = body.get("event-data")
        report = parse.mailgun_report(data) if isinstance(data, dict) else None
        await _record(request, "mailgun", [report] if report else [])
    seen.add(key)
    return Response(status_code=200)


# --------------------------------------------------------------------------- Amazon SES


@router.post("/inbound/ses")
async def ses(request: Request) -> Response:
    """An Amazon SNS message from a topic an ``ses`` channel names in ``sns_topic_arns``:
    a Notification holding an SES event (Send, Delivery, Open, Bounce, Complaint, Reject
    are recorded), a SubscriptionConfirmation (confirmed, or logged when ``sns_confirm`` is
    off) or an UnsubscribeConfirmation (logged). 200; 403 for another topic, a certificate
    URL that is not allowed, a wrong signature or a stale ``Timestamp``; 503 when the
    certificate or the confirmation URL cannot be reached (SNS retries)."""
    msg = await _json(request)
    if not isinstance(msg, dict) or not isinstance(msg.get("Type"), str):
        raise ApiError(400, "invalid", "the body is not an SNS message")
    kind, topic = msg["Type"], msg.get("TopicArn")
    channel = next((c for c in _channels(request, "ses") if topic in c.sns_topic_arns), None)
    if channel is None:
        raise ApiError(403, "forbidden", "TopicArn is not in an ses channel's sns_topic_arns")
    cert_url = msg.get("SigningCertURL")
    if not parse.cert_url_allowed(cert_url, channel.sns_certificate_urls):
        raise ApiError(403, "forbidden", "SigningCertURL is not an SNS certificate URL")
    certs = _state(request, "sns_certificates", SnsCertificates)
    try:
        key = await run_in_threadpool(certs.public_key, cert_url)
    except SnsError as exc:
        log.warning("SNS signing certificate: %s", exc)
        raise ApiError(503, "unavailable", "the SNS signing certificate is unavailable") from None
    if not parse.sns_signature_matches(key, msg):
        raise ApiError(403, "forbidden", "the SNS message signature does not match")
    at = parse.parse_time(msg.get("Timestamp"))
    _fresh(at.timestamp() if at else None, SNS_TOLERANCE, "Timestamp")
    seen, seen_key = _seen(request), f"sns:{msg.get('MessageId')}"
    if seen.seen(seen_key):
        return Response(status_code=200)
    if kind == "Notification":
        try:
            event = json.loads(msg["Message"])
        except ValueError:
            event = None
        report = parse.ses_report(event) if isinstance(event, dict) else None
        await _record(request, "ses", [report] if report else [])
    elif kind == "SubscriptionConfirmation":
        await _subscribe(channel, msg)
    else:
        log.warning("SNS: %s unsubscribed from %s", channel.name, topic)
    seen.add(seen_key)
    return Response(status_code=200)


async def _subscribe(channel: Any, msg: dict[str, Any]) -> None:
    url, topic = msg.get("SubscribeURL"), msg.get("TopicArn")
    allowed = parse.cert_url_allowed(url, channel.sns_certificate_urls, certificate=False)
    if not channel.sns_confirm or not allowed:
        log.warning(
            "SNS: subscription of channel %s to %s not confirmed by duly; confirm it by "
            "opening its SubscribeURL: %s",
            channel.name,
            topic,
            url,
        )
        return
    try:
        await run_in_threadpool(confirm_subscription, url)
    except SnsError as exc:
        log.warning("SNS: confirming the subscription to %s failed: %s", topic, exc)
        raise ApiError(503, "unavailable", "the subscription could not be confirmed") from None
    log.warning("SNS: channel %s subscribed to %s (confirmed)", channel.name, topic)
