"""Provider callbacks (public: no API key; the provider's signature is the permission).

- ``POST /inbound/twilio/status``: Twilio status callbacks (``MessageSid``,
  ``MessageStatus``, ``ErrorCode``) → delivery receipts.
- ``POST /inbound/twilio/messages``: inbound SMS / WhatsApp → STOP / START keywords and the
  number's last inbound time.
- ``POST /inbound/postmark``: Postmark's delivery, bounce, spam-complaint and open webhooks.

Twilio requests must carry a valid ``X-Twilio-Signature`` made with the auth token of one of
the rule file's ``twilio-*`` channels, over the public URL: ``DULY_PUBLIC_URL`` (else
``DULY_BASE_URL``) followed by the path and query duly sees; the URL as this process sees it
and the channel's ``status_callback`` are accepted too. Unsigned or wrongly signed: 403.
A replay (the same signature again within :data:`REPLAY_WINDOW`) is answered 200 and does
nothing: Twilio retries a callback that timed out with the same signature, so a replay is
indistinguishable from a retry and is acknowledged, never applied twice. Receipts are also
idempotent in the database (duly.store.receipts), so a replay reaching another process
changes nothing either.

Meta's WhatsApp Cloud API webhook, for ``whatsapp-cloud`` channels:

- ``GET /inbound/whatsapp``: the subscription handshake (``hub.mode=subscribe``,
  ``hub.verify_token`` equal to a channel's ``verify_token``, compared in constant time):
  answers ``hub.challenge`` as plain text; 403 otherwise.
- ``POST /inbound/whatsapp``: ``X-Hub-Signature-256`` must be the HMAC-SHA256 of the raw
  body with a channel's ``app_secret`` (403 when missing or wrong). ``statuses`` become
  delivery receipts (idempotent in the database: a replayed status changes nothing);
  ``messages`` are inbound messages (STOP / START for the channel whose
  ``phone_number_id`` received them, and the number's last inbound time; messages to a
  number no channel sends from are ignored, and a time in the future is taken as now); a
  message id
  already handled by this process is skipped, and a keyword older than the number's last
  inbound message changes nothing, so a replay is a no-op. Answers 200 (Meta retries
  anything else).

Postmark requests must carry the basic auth credentials of a ``postmark`` channel's
``webhook_secret`` (``user:password``, set in the webhook's URL at Postmark); 403 otherwise.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from duly.api.errors import ApiError
from duly.delivery import inbound
from duly.delivery.ack import base_url_from_env
from duly.delivery.channels.whatsapp_cloud import verify_signature
from duly.engine.receipts import ReceiptEvent, inbound_message, record_receipts

__all__ = ["PUBLIC_URL_ENV", "REPLAY_WINDOW", "router"]

PUBLIC_URL_ENV = "DULY_PUBLIC_URL"
REPLAY_WINDOW = 600.0  # seconds a Twilio signature is remembered
_TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

router = APIRouter(tags=["inbound"], include_in_schema=False)


class SeenSignatures:
    """Signatures seen in the last ``window`` seconds (this process), at most ``limit``."""

    def __init__(self, window: float = REPLAY_WINDOW, limit: int = 50_000) -> None:
        self.window, self.limit = window, limit
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, signature: str) -> bool:
        """Whether ``signature`` was handled within the window."""
        at = self._seen.get(signature)
        return at is not None and time.monotonic() - at < self.window

    def add(self, signature: str) -> None:
        """Remember ``signature`` as handled (after it was: a request that failed is not a
        replay when the provider retries it)."""
        now = time.monotonic()
        with self._lock:
            if len(self._seen) >= self.limit:
                for k in [k for k, t in self._seen.items() if now - t >= self.window]:
                    del self._seen[k]
                while len(self._seen) >= self.limit:  # still full: forget the oldest
                    del self._seen[next(iter(self._seen))]
            self._seen[signature] = now


def _seen(request: Request) -> SeenSignatures:
    state = request.app.state
    got = getattr(state, "inbound_seen", None)
    if got is None:
        got = state.inbound_seen = SeenSignatures()
    return got


def _channels(request: Request, prefix: str) -> list[Any]:
    chans = getattr(request.app.state.runtime.dispatcher, "channels", {}) or {}
    return [c for _, c in sorted(chans.items()) if str(getattr(c, "type", "")).startswith(prefix)]


def _public_urls(request: Request) -> list[str]:
    base = (os.environ.get(PUBLIC_URL_ENV) or "").strip() or base_url_from_env()
    tail = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return [base.rstrip("/") + tail, str(request.url)]


async def _twilio(request: Request) -> tuple[Any, dict[str, str], str]:
    """(the channel whose token signed the request, its form fields, the signature) or 403."""
    raw = (await request.body()).decode("utf-8", "replace")
    params = parse_qsl(raw, keep_blank_values=True)
    signature = request.headers.get("x-twilio-signature", "").strip()
    if not signature:
        raise ApiError(403, "forbidden", "missing X-Twilio-Signature")
    urls = _public_urls(request)
    signed = []
    for ch in _channels(request, "twilio"):
        extra = [ch.status_callback] if getattr(ch, "status_callback", None) else []
        token = getattr(ch, "_auth_token", "")
        if inbound.twilio_signature_matches(token, urls + extra, params, signature):
            signed.append(ch)
    if not signed:
        raise ApiError(403, "forbidden", "X-Twilio-Signature does not match")
    form = dict(params)
    return _pick(signed, form), form, signature


def _pick(channels: list[Any], form: dict[str, str]) -> Any:
    """The channel a Twilio request is about: the one sending from ``To`` (or through its
    MessagingServiceSid), else one of the kind ``From`` says (whatsapp: or not)."""
    to, sender = form.get("To", ""), form.get("From", "")
    for ch in channels:
        if ch.from_ is not None and ch.prefix + ch.from_ == to:
            return ch
    svc = form.get("MessagingServiceSid")
    for ch in channels:
        if svc and ch.messaging_service_sid == svc:
            return ch
    whatsapp = sender.startswith("whatsapp:") or to.startswith("whatsapp:")
    for ch in channels:
        if bool(ch.prefix) == whatsapp:
            return ch
    return channels[0]


def _metrics(request: Request) -> Any:
    rt = request.app.state.runtime
    return getattr(rt, "metrics", None) or getattr(rt.dispatcher, "metrics", None)


@router.post("/inbound/twilio/status")
async def twilio_status(request: Request) -> Response:
    """A Twilio status callback: recorded as a delivery receipt (queued and sending record
    nothing). 204; 403 when not signed by a configured Twilio channel."""
    _, form, signature = await _twilio(request)
    seen = _seen(request)
    report = inbound.twilio_status_report(form)
    if not seen.seen(signature) and report is not None:
        ev = ReceiptEvent(provider="twilio", **report)
        rt = request.app.state.runtime
        await run_in_threadpool(record_receipts, rt.engine, [ev], _metrics(request))
    seen.add(signature)
    return Response(status_code=204)


@router.post("/inbound/twilio/messages")
async def twilio_messages(request: Request) -> Response:
    """An inbound SMS / WhatsApp message: STOP (STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT)
    opts the sender's number out of the channel, START (YES, UNSTOP) back in; every message
    is remembered as the number's last inbound time. Answers empty TwiML (no reply)."""
    ch, form, signature = await _twilio(request)
    seen = _seen(request)
    if not seen.seen(signature):
        sender = form.get("From", "").strip()
        phone = sender[len("whatsapp:") :] if sender.startswith("whatsapp:") else sender
        rt = request.app.state.runtime
        await run_in_threadpool(inbound_message, rt.engine, ch.name, phone, form.get("Body", ""))
    seen.add(signature)
    return Response(_TWIML_EMPTY, media_type="text/xml")


_CHALLENGE_MAX = 256


@router.get("/inbound/whatsapp")
async def whatsapp_verify(request: Request) -> Response:
    """Meta's webhook verification: echoes ``hub.challenge`` when ``hub.mode`` is
    ``subscribe`` and ``hub.verify_token`` is a whatsapp-cloud channel's ``verify_token``;
    403 otherwise."""
    q = request.query_params
    token, challenge = q.get("hub.verify_token"), q.get("hub.challenge") or ""
    if q.get("hub.mode") != "subscribe" or not challenge or len(challenge) > _CHALLENGE_MAX:
        raise ApiError(403, "forbidden", "not a WhatsApp webhook verification request")
    chans = _channels(request, "whatsapp-cloud")
    if not any(inbound.secret_matches(token, getattr(c, "_verify_token", None)) for c in chans):
        raise ApiError(403, "forbidden", "hub.verify_token does not match")
    return Response(challenge, media_type="text/plain")


@router.post("/inbound/whatsapp")
async def whatsapp_webhook(request: Request) -> Response:
    """A Meta WhatsApp Cloud API webhook: statuses → receipts, messages → STOP / START and
    the last inbound time. 200; 403 when not signed with a whatsapp-cloud channel's
    ``app_secret``; 400 when the body is not a JSON object."""
    raw = await request.body()
    header = request.headers.get("x-hub-signature-256", "").strip()
    if not header:
        raise ApiError(403, "forbidden", "missing X-Hub-Signature-256")
    signed = [
        c
        for c in _channels(request, "whatsapp-cloud")
        if getattr(c, "_app_secret", None) and verify_signature(c._app_secret, raw, header)
    ]
    if not signed:
        raise ApiError(403, "forbidden", "X-Hub-Signature-256 does not match")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # too deep a nesting is refused, never a 500
        raise ApiError(400, "invalid", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body is not a JSON object")
    seen = _seen(request)
    events: list[ReceiptEvent] = []
    messages: list[tuple[str, dict[str, Any]]] = []
    for change in inbound.whatsapp_cloud_changes(body):
        pnid = change["phone_number_id"]
        ch = next((c for c in signed if c.phone_number_id == pnid), None)
        if ch is None and pnid is None:
            ch = signed[0]
        events += [ReceiptEvent(provider="whatsapp-cloud", **r) for r in change["statuses"]]
        if ch is None:  # a number of the app that no channel sends from: not duly's
            continue
        messages += [(ch.name, m) for m in change["messages"] if not seen.seen("wa:" + m["id"])]
    rt = request.app.state.runtime
    if events:
        await run_in_threadpool(record_receipts, rt.engine, events, _metrics(request))
    now = rt.engine.clock.now()
    for name, m in messages:
        at = min(m["at"], now) if m["at"] is not None else now  # never in the future
        await run_in_threadpool(inbound_message, rt.engine, name, m["phone"], m["body"], at)
        seen.add("wa:" + m["id"])
    return Response(status_code=200)


@router.post("/inbound/postmark")
async def postmark(request: Request) -> Response:
    """A Postmark webhook (Delivery, Bounce, SpamComplaint, Open; other record types are
    acknowledged and ignored). 204; 403 without the credentials of a postmark channel's
    ``webhook_secret``; 400 when the body is not a JSON object."""
    header = request.headers.get("authorization", "")
    chans = _channels(request, "postmark")
    if not any(
        inbound.basic_auth_matches(header, getattr(c, "_webhook_secret", None)) for c in chans
    ):
        raise ApiError(403, "forbidden", "missing or wrong credentials for the Postmark webhook")
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # too deep a nesting is refused, never a 500
        raise ApiError(400, "invalid", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body is not a JSON object")
    report = inbound.postmark_report(body)
    if report is not None:
        ev = ReceiptEvent(provider="postmark", **report)
        rt = request.app.state.runtime
        await run_in_threadpool(record_receipts, rt.engine, [ev], _metrics(request))
    return Response(status_code=204)
