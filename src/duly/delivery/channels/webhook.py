"""Webhook: each message POSTed as JSON to your endpoint, signed per Standard Webhooks.

The body::

    {"id": "<message id>", "title": ..., "text": ..., "html": ...,
     "to": "<the recipient's address on this channel>",
     "recipient": {"id": ..., "name": ...}, "category": "reminder",
     "headers": {"X-Duly-Rule": ..., ...}}

Signature (https://www.standardwebhooks.com, symmetric ``v1``): headers ``webhook-id`` (the
message id: the same on every retry, so the receiver can drop duplicates),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature: v1,<base64
HMAC-SHA256 of "{id}.{timestamp}.{body}">``. The ``secret`` option (a ``${VAR}``) is either
``whsec_<base64>`` — the key is the decoded bytes, the base64 with or without its ``=``
padding — or any other string, whose UTF-8 bytes are the key.

``url`` may hold ``{to}`` (the recipient's address on this channel) and ``{recipient}``
(the recipient's id), each percent-encoded as one path segment or query value.

Answers: 2xx sent; 408, 429 and 5xx temporary; 410 (the receiver says the endpoint is gone)
and every other 4xx permanent (a 410 from a URL with ``{to}`` also sets
``DeliveryError.address``: that recipient's address is suppressed); a redirect (not followed) permanent, its error naming the
new location. Timeouts and network failures are temporary. Private and loopback addresses
are refused (permanently) unless the channel allows them (see ``duly.delivery.channels._http``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from urllib.parse import quote

import httpx

from duly.delivery.channels import _http
from duly.delivery.channels.base import DeliveryError, Message, Receipt

__all__ = ["SECRET_PREFIX", "WebhookChannel", "decode_secret", "payload", "sign"]

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
PLACEHOLDERS = ("{to}", "{recipient}")


def decode_secret(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded, any other string's UTF-8 bytes. Raises
    ValueError (never showing the secret)."""
    if not secret:
        raise ValueError("secret: empty")
    if secret.startswith(SECRET_PREFIX):
        try:
            # padding optional, as the Standard Webhooks reference libraries take it
            rest = secret[len(SECRET_PREFIX) :].rstrip("=")
            key = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"secret: starts with {SECRET_PREFIX} but the rest is not base64"
            ) from None
        if not key:
            raise ValueError(f"secret: {SECRET_PREFIX} with nothing after it")
        return key
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(message: Message) -> bytes:
    """The JSON body sent for ``message``."""
    document = {
        "id": message.message_id,
        "title": message.title,
        "text": message.text,
        "html": message.html,
        "to": message.to,
        "recipient": {"id": message.recipient_id, "name": message.recipient_name},
        "category": message.category,
        "headers": dict(message.headers),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class WebhookChannel:
    """POSTs signed JSON to an HTTP endpoint; safe to share between threads."""

    type = "webhook"

    def __init__(
        self,
        name: str,
        *,
        url: str,
        secret: str,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
    ) -> None:
        self.name = name
        self.where = f"webhook channel {name!r}"
        self.url = str(url).strip()
        # Check the URL with the placeholders filled in, as it will be sent.
        try:
            sample = httpx.URL(_fill(self.url, to="x", recipient="x"))
        except httpx.InvalidURL:
            sample = None
        if sample is None or sample.scheme not in ("http", "https") or not sample.host:
            raise ValueError("url: expected an http:// or https:// URL with a host")
        # Shown in repr and logs: the path and query may hold a token.
        port = f":{sample.port}" if sample.port else ""
        self.origin = f"{sample.scheme}://{sample.host}{port}"
        self._key = decode_secret(str(secret))
        self.allow_private = _http.bool_option("allow_private", allow_private)
        self._client = _http.make_client(_http.timeout_option(timeout))

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r}, url={self.origin + '/…'!r})"

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        url = _fill(self.url, to=message.to, recipient=message.recipient_id)
        body = payload(message)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, message.message_id, timestamp, body),
        }
        response, answer = _http.post(
            self._client,
            url,
            where=self.where,
            allow_private=self.allow_private,
            content=body,
            headers=headers,
        )
        status = response.status_code
        if 200 <= status < 300:
            log.debug("%s: %s answered %s", self.where, message.message_id, status)
            return Receipt(provider_id=message.message_id, detail=f"HTTP {status}")
        reason = _http.snippet(answer)
        if 300 <= status < 400:
            location = response.headers.get("location", "(no location)")
            raise DeliveryError(
                f"{self.where}: HTTP {status}, redirected to {location}; redirects are not "
                "followed: set url to the final address",
                permanent=True,
                code=str(status),
            )
        temporary = status in (408, 429) or status >= 500
        what = "the endpoint is gone" if status == 410 else f"HTTP {status}"
        raise DeliveryError(
            f"{self.where}: {what}" + (f": {reason}" if reason else ""),
            permanent=not temporary,
            code=str(status),
            # The recipient's own endpoint is gone: suppress that address.
            address=status == 410 and "{to}" in self.url,
        )

    def close(self) -> None:
        self._client.close()


def _fill(url: str, *, to: str, recipient: str) -> str:
    """``url`` with ``{to}`` and ``{recipient}`` replaced, percent-encoded (a ``/`` in an
    address cannot add a path segment, nor a ``?`` a query)."""
    if "{" not in url:
        return url
    return url.replace("{to}", quote(to, safe="")).replace("{recipient}", quote(recipient, safe=""))
