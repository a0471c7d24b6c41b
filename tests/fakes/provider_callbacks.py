"""What providers send back to duly: Twilio's signed callbacks and Postmark's webhooks, made
here independently of duly's own code, the way each provider documents it.

- Twilio, "Webhooks security" → "Validating signatures from Twilio"
  (https://www.twilio.com/docs/usage/webhooks/webhooks-security): take the full URL of the
  request (query string included), append each POST parameter sorted alphabetically by name,
  name then value with no delimiters, sign the result with HMAC-SHA1 keyed by the account's
  auth token, base64-encode the digest: that is ``X-Twilio-Signature``.
- Twilio status callbacks ("Track the message status of outbound messages",
  https://www.twilio.com/docs/messaging/guides/track-outbound-message-status): form fields
  ``MessageSid``, ``MessageStatus`` (queued, sent, delivered, undelivered, failed, read),
  ``ErrorCode`` on failures, ``AccountSid``, ``From``, ``To``.
- Postmark webhooks ("Webhooks overview" and the Delivery, Bounce, Spam complaint and Open
  webhook pages, https://postmarkapp.com/developer/webhooks/webhooks-overview): a JSON body
  with ``RecordType`` and ``MessageID``; protected by basic auth credentials in the URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlencode

__all__ = ["basic_auth", "twilio_form", "twilio_signature"]


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """``X-Twilio-Signature`` for a POST of ``params`` to ``url`` (Twilio's documented way)."""
    data = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_form(token: str, url: str, params: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(the urlencoded body, the headers) Twilio sends: the signature and the content type."""
    headers = {
        "X-Twilio-Signature": twilio_signature(token, url, params),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return urlencode(params), headers


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The Authorization header Postmark sends for ``https://user:password@host/path``."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
