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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

__all__ = ["basic_auth", "duly_api", "twilio_form", "twilio_signature"]


@contextmanager
def duly_api(rules_text: str, folder: Path, db_url: str) -> Iterator[tuple[Any, Any]]:
    """``(runtime, client)``: duly's API (the inbound routes included) over ``db_url`` with
    the rule file ``rules_text`` (templates in ``folder/templates``), for a test to post
    callbacks to and drive the dispatcher by hand; its channels closed afterwards."""
    from fastapi.testclient import TestClient

    from duly.api.app import create_api
    from duly.core.rules.loader import load_rules_text
    from duly.engine.runtime import build_runtime

    rf = load_rules_text(
        rules_text, path=str(folder / "duly.yaml"), templates_dir=str(folder / "templates")
    )
    rt = build_runtime(rf, db_url, send_workers=1)
    try:
        with TestClient(create_api(rt)) as client:
            yield rt, client
    finally:
        for ch in rt.dispatcher.channels.values():
            ch.close()
        rt.db.dispose()


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
