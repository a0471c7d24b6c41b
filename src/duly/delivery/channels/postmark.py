"""Postmark: email through the Email API (``postmark``).

One ``POST {base_url}/email`` per message with ``X-Postmark-Server-Token: KEY`` and a JSON
body: ``From``, ``To``, ``Subject``, ``TextBody``, ``HtmlBody``, ``Headers`` (``[{"Name",
"Value"}]``: Message-ID, X-Duly-*, List-Unsubscribe …), ``MessageStream`` (the
``message_stream`` option; Postmark's default is ``outbound``, its transactional stream)
and ``Metadata.duly_message_id`` (duly's id, echoed in Postmark's webhooks).

Postmark answers 200 ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message":
"OK"}``; the receipt is ``MessageID``. A refusal is 401 (``ErrorCode`` 10: bad or missing
server token) or 422 with an ``ErrorCode``: 406 (the recipient is inactive: it bounced,
complained or was suppressed) and 300 about the ``To`` address set
``DeliveryError.address``; 100 (maintenance) is temporary; 429 and 5xx are temporary.
Postmark has no idempotency key (see :mod:`duly.delivery.channels._email_api`).
"""

from __future__ import annotations

from typing import Any

import httpx

from duly.delivery.channels._email_api import Email, EmailApiChannel, json_object, read_secret
from duly.delivery.channels._http import snippet
from duly.delivery.channels.base import Receipt

__all__ = ["INACTIVE_RECIPIENT", "PostmarkChannel"]

DEFAULT_BASE_URL = "https://api.postmarkapp.com"
INACTIVE_RECIPIENT = 406  # ErrorCode: the address is suppressed at Postmark
INVALID_REQUEST = 300  # ErrorCode: invalid email request (an invalid To address among others)
_TEMPORARY_CODES = frozenset({100})  # maintenance


class PostmarkChannel(EmailApiChannel):
    """Sends email through Postmark's Email API."""

    type = "postmark"
    provider = "Postmark"

    def __init__(
        self,
        name: str,
        *,
        from_: str,
        api_key: str | None = None,
        api_key_file: str | None = None,
        message_stream: str = "outbound",
        message_id_domain: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
        webhook_secret: str | None = None,
        webhook_secret_file: str | None = None,
    ) -> None:
        key = read_secret("api_key", api_key, api_key_file)
        # "user:password" of the basic auth set on Postmark's webhooks (POST /inbound/postmark)
        self._webhook_secret = (
            read_secret("webhook_secret", webhook_secret, webhook_secret_file)
            if webhook_secret or webhook_secret_file
            else None
        )
        self.message_stream = str(message_stream or "").strip()
        if not self.message_stream:
            raise ValueError("message_stream: expected a stream id such as 'outbound'")
        self._setup(
            name,
            from_=from_,
            base_url=base_url,
            message_id_domain=message_id_domain,
            timeout=timeout,
            allow_private=allow_private,
            secrets=(key,),
            headers={"x-postmark-server-token": key, "accept": "application/json"},
        )
        self.url = f"{self.base_url}/email"

    def payload(self, email: Email) -> dict[str, Any]:
        """The JSON body that sends ``email``."""
        body: dict[str, Any] = {
            "From": email.from_,
            "To": email.to,
            "Subject": email.subject,
            "Headers": [{"Name": k, "Value": v} for k, v in email.headers.items()],
            "MessageStream": self.message_stream,
            "Metadata": {"duly_message_id": email.message_id},
        }
        if email.text is not None:
            body["TextBody"] = email.text
        if email.html is not None:
            body["HtmlBody"] = email.html
        return body

    def request(self, email: Email) -> tuple[str, dict[str, Any]]:
        return self.url, {"json": self.payload(email)}

    def outcome(self, email: Email, response: httpx.Response, body: bytes) -> Receipt:
        status = response.status_code
        info = json_object(body)
        code = info.get("ErrorCode")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        if 200 <= status < 300 and not code:
            return self.accepted(email, info.get("MessageID"))
        text = info.get("Message")
        reason = text if isinstance(text, str) and text else snippet(body)
        address = code == INACTIVE_RECIPIENT or (
            code == INVALID_REQUEST and "'to'" in reason.lower()
        )
        if 200 <= status < 300:
            status = 422  # an error code in a 2xx answer: treat it as the refusal it is
        raise self.refusal(
            status,
            reason=reason,
            code=code,
            address=address,
            temporary=code in _TEMPORARY_CODES,
        )
