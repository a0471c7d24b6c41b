"""Mailgun: email through the Messages API (``mailgun``).

One ``POST {base_url}/v3/{domain}/messages`` per message, form-encoded, with HTTP basic auth
``api:KEY``: ``from``, ``to``, ``subject``, ``text``, ``html``, one ``h:NAME`` field per
header (``h:Message-Id``, ``h:X-Duly-*``, ``h:List-Unsubscribe`` …) and
``v:duly-message-id`` (duly's id, in Mailgun's ``user-variables`` of each event). The base
URL follows ``region``: ``us`` (default) ``https://api.mailgun.net``, ``eu``
``https://api.eu.mailgun.net``; ``base_url`` overrides both.

Mailgun answers 200 ``{"id": "<…@domain>", "message": "Queued. Thank you."}``; the receipt
is the id without its angle brackets (as Mailgun's events write ``message-id``). Refusals
are ``{"message": …}`` (401 is a plain "Forbidden"): 400 saying the ``to`` parameter is not
a valid address sets ``DeliveryError.address``; 401/403 the key; 404 an unknown domain;
429 and 5xx are temporary. Mailgun has no idempotency key (see
:mod:`duly.delivery.channels._email_api`).

``webhook_signing_key`` (or ``_file``): Mailgun's HTTP webhook signing key, with which
``POST /inbound/mailgun`` checks the webhooks' signatures.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx

from duly.delivery.channels._email_api import Email, EmailApiChannel, json_object, read_secret
from duly.delivery.channels._http import snippet
from duly.delivery.channels.base import Receipt

__all__ = ["REGIONS", "MailgunChannel"]

REGIONS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_ADDRESS_ERROR = re.compile(r"\bto\b.*\bnot a valid address\b|invalid recipient", re.I)


class MailgunChannel(EmailApiChannel):
    """Sends email through Mailgun's Messages API."""

    type = "mailgun"
    provider = "Mailgun"

    def __init__(
        self,
        name: str,
        *,
        from_: str,
        domain: str,
        api_key: str | None = None,
        api_key_file: str | None = None,
        region: str = "us",
        message_id_domain: str | None = None,
        base_url: str | None = None,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
        webhook_signing_key: str | None = None,
        webhook_signing_key_file: str | None = None,
    ) -> None:
        key = read_secret("api_key", api_key, api_key_file)
        # the HTTP webhook signing key that signs Mailgun's webhooks (POST /inbound/mailgun)
        self._webhook_signing_key = (
            read_secret("webhook_signing_key", webhook_signing_key, webhook_signing_key_file)
            if webhook_signing_key or webhook_signing_key_file
            else None
        )
        self.domain = str(domain or "").strip().lower()
        if not _DOMAIN_RE.fullmatch(self.domain):
            raise ValueError(f"domain: {domain!r} is not a sending domain such as mg.acme.test")
        self.region = str(region or "").strip().lower()
        if self.region not in REGIONS:
            raise ValueError(f"region: expected us or eu, not {region!r}")
        self._setup(
            name,
            from_=from_,
            base_url=base_url or REGIONS[self.region],
            message_id_domain=message_id_domain,
            timeout=timeout,
            allow_private=allow_private,
            secrets=(key, self._webhook_signing_key or ""),
            auth=httpx.BasicAuth("api", key),
        )
        self.url = f"{self.base_url}/v3/{quote(self.domain, safe='')}/messages"

    def form(self, email: Email) -> dict[str, str]:
        """The form fields that send ``email``."""
        fields = {"from": email.from_, "to": email.to, "subject": email.subject}
        if email.text is not None:
            fields["text"] = email.text
        if email.html is not None:
            fields["html"] = email.html
        for name, value in email.headers.items():
            # Mailgun's own spelling for the one header it treats specially
            fields["h:Message-Id" if name == "Message-ID" else f"h:{name}"] = value
        fields["v:duly-message-id"] = email.message_id
        return fields

    def request(self, email: Email) -> tuple[str, dict[str, Any]]:
        return self.url, {"data": self.form(email)}

    def outcome(self, email: Email, response: httpx.Response, body: bytes) -> Receipt:
        status = response.status_code
        info = json_object(body)
        if 200 <= status < 300:
            mid = info.get("id")
            if isinstance(mid, str):
                mid = mid.strip().removeprefix("<").removesuffix(">")
            return self.accepted(email, mid)
        text = info.get("message")
        reason = text if isinstance(text, str) and text else snippet(body)
        address = status == 400 and _ADDRESS_ERROR.search(reason) is not None
        raise self.refusal(status, reason=reason, address=address)
