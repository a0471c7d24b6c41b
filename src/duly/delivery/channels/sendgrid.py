"""SendGrid: email through the v3 Mail Send API (``sendgrid``).

One ``POST {base_url}/v3/mail/send`` per message, ``Authorization: Bearer KEY``, a JSON body
with one personalization (the recipient), ``from``, ``subject``, ``content`` (text/plain
first, then text/html), ``headers`` (Message-ID, X-Duly-*, List-Unsubscribe …) and
``custom_args.duly_message_id`` (duly's id, echoed in SendGrid's event webhook). With
``template_id`` (a dynamic template, ``d-…``) the content comes from the template instead:
the personalization's ``dynamic_template_data`` holds the ``template_data`` option merged
with the message's ``subject``, ``text``, ``html``, ``recipient_name`` and ``message_id``.

SendGrid answers 202 with an empty body; the receipt is its ``X-Message-Id`` header (the
prefix of the ``sg_message_id`` its events carry). Errors are ``{"errors": [{"message",
"field", "help"}]}``: 400 with a ``field`` under ``personalizations.*.to`` is about the
recipient's address (``DeliveryError.address``); 401/403 the key; 413 the size; 429 and 5xx
are temporary. SendGrid has no idempotency key for mail send (see
:mod:`duly.delivery.channels._email_api`).

``webhook_public_key`` (or ``_file``): the verification key of SendGrid's Signed Event
Webhook (base64 DER, as SendGrid shows it), checked by ``POST /inbound/sendgrid``.
"""

from __future__ import annotations

from typing import Any

import httpx

from duly.delivery.channels._email_api import Email, EmailApiChannel, json_object, read_secret
from duly.delivery.channels._http import snippet
from duly.delivery.channels.base import Message, Receipt

__all__ = ["SendGridChannel"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"


class SendGridChannel(EmailApiChannel):
    """Sends email through SendGrid's v3 Mail Send API."""

    type = "sendgrid"
    provider = "SendGrid"

    def __init__(
        self,
        name: str,
        *,
        from_: str,
        api_key: str | None = None,
        api_key_file: str | None = None,
        template_id: str | None = None,
        template_data: dict[str, Any] | None = None,
        message_id_domain: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
        webhook_public_key: str | None = None,
        webhook_public_key_file: str | None = None,
    ) -> None:
        key = read_secret("api_key", api_key, api_key_file)
        # the Signed Event Webhook's verification key (POST /inbound/sendgrid)
        self.webhook_key = None
        if webhook_public_key or webhook_public_key_file:
            from duly.delivery.inbound_email import load_sendgrid_key

            text = read_secret("webhook_public_key", webhook_public_key, webhook_public_key_file)
            try:
                self.webhook_key = load_sendgrid_key(text)
            except ValueError as exc:
                raise ValueError(f"webhook_public_key: {exc}") from None
        self.template_id = str(template_id).strip() if template_id not in (None, "") else None
        if template_data is not None and not isinstance(template_data, dict):
            raise ValueError("template_data: expected a mapping")
        self.template_data = dict(template_data or {})
        if self.template_data and self.template_id is None:
            raise ValueError("template_data needs template_id")
        self._setup(
            name,
            from_=from_,
            base_url=base_url,
            message_id_domain=message_id_domain,
            timeout=timeout,
            allow_private=allow_private,
            secrets=(key,),
            headers={"authorization": f"Bearer {key}"},
        )
        self.url = f"{self.base_url}/v3/mail/send"

    def check_content(self, message: Message) -> None:
        if self.template_id is None:
            super().check_content(message)

    def payload(self, email: Email) -> dict[str, Any]:
        """The JSON body that sends ``email``."""
        to: dict[str, str] = {"email": email.to_address}
        if email.to_name:
            to["name"] = email.to_name
        sender: dict[str, str] = {"email": email.from_address}
        if email.from_name:
            sender["name"] = email.from_name
        personalization: dict[str, Any] = {"to": [to]}
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": sender,
            "headers": dict(email.headers),
            "custom_args": {"duly_message_id": email.message_id},
        }
        if self.template_id is not None:
            body["template_id"] = self.template_id
            personalization["dynamic_template_data"] = {
                **self.template_data,
                "subject": email.subject,
                "text": email.text,
                "html": email.html,
                "recipient_name": email.to_name or None,
                "message_id": email.message_id,
            }
            return body
        body["subject"] = email.subject
        content = []
        if email.text is not None:  # SendGrid wants text/plain first
            content.append({"type": "text/plain", "value": email.text})
        if email.html is not None:
            content.append({"type": "text/html", "value": email.html})
        body["content"] = content
        return body

    def request(self, email: Email) -> tuple[str, dict[str, Any]]:
        return self.url, {"json": self.payload(email)}

    def outcome(self, email: Email, response: httpx.Response, body: bytes) -> Receipt:
        status = response.status_code
        if 200 <= status < 300:
            return self.accepted(email, response.headers.get("x-message-id"))
        errors = json_object(body).get("errors")
        items = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        reasons = []
        address = False
        for e in items:
            text = str(e.get("message") or "").strip()
            where = e.get("field")
            if isinstance(where, str) and where:
                text += f" (field {where})"
                if where.startswith("personalizations") and ".to" in where:
                    address = True
            if text:
                reasons.append(text)
        reason = "; ".join(reasons) or snippet(body)
        raise self.refusal(status, reason=reason, address=address and status == 400)
