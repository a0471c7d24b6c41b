"""WhatsApp through Meta's Cloud API (``whatsapp-cloud``), without a reseller in between.

One ``POST {base_url}/{api_version}/{phone_number_id}/messages`` (Graph API, ``v21.0`` by
default) per message, ``Authorization: Bearer TOKEN``, a JSON body::

    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+15550100001",
     "type": "template",
     "template": {"name": "appointment_reminder", "language": {"code": "en_US"},
                  "components": [{"type": "body",
                                  "parameters": [{"type": "text", "text": "Ada"}, ...]}]}}

or, for free-form text inside the 24-hour customer-service window, ``"type": "text", "text":
{"preview_url": false, "body": ...}``. Which of the two is decided per message by the
``freeform`` option and the channel's ``last_inbound`` hook, and the template's body
parameters come from the rendered message or the ``variables`` option, exactly as for
``twilio-whatsapp`` (see :mod:`duly.delivery.channels._whatsapp`); here the variables must be
numbered 1 to N, sent in that order. Only body parameters are sent (no header or button
parameters). The receipt is ``messages[0].id``, the ``wamid.…``.

The token comes from ``token`` (a ``${VAR}``) or ``token_file``; it never appears in a repr,
a log line or an error.

Errors, by the Graph API error's ``code`` (``{"error": {"message", "type", "code",
"error_data": {"details"}, "fbtrace_id"}}``; ``DeliveryError.code`` is that code as a string,
or the HTTP status when there is none):

- 0, 3, 10, 190, 200–299 (token expired or invalid, permission missing) and HTTP 401:
  permanent — the token or the app's permissions are wrong until fixed.
- 131047 (more than 24 hours since the recipient last wrote: free-form text refused):
  permanent, naming the fix (configure ``template``); with a template configured the message
  is sent again at once as the template.
- 131026 (undeliverable: not a WhatsApp number, old app, terms not accepted): permanent and
  about the address (``DeliveryError.address``), so the number is suppressed.
- 1, 2, 4, 80007, 130429, 131000, 131016, 131056 (unknown/service errors, rate limits, the
  business–consumer pair limit), HTTP 408, 429 and 5xx, timeouts and network failures:
  temporary.
- 100 (invalid parameter) and any other error: permanent.

Meta reports many failures (131026, 131047 among them) later, in the status webhook, rather
than in the answer. The webhook (``/inbound/whatsapp``, duly.api.inbound) needs two more
options: ``app_secret`` (or ``app_secret_file``), the Meta app's secret, with which
:func:`verify_signature` checks each POST's ``X-Hub-Signature-256``, and ``verify_token``
(or ``verify_token_file``), the string typed in the app's webhook settings, which Meta
sends back in the subscription handshake. Neither appears in a repr, a log line or an
error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from typing import Any
from urllib.parse import quote

from duly.delivery.channels import _http, _whatsapp
from duly.delivery.channels.base import DeliveryError, Message, Receipt

__all__ = [
    "ADDRESS_CODES",
    "AUTH_CODES",
    "MAX_TEXT",
    "OUTSIDE_WINDOW",
    "TEMPORARY_CODES",
    "WhatsAppCloudChannel",
    "verify_signature",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
MAX_TEXT = 4096  # a text message's body, at most

OUTSIDE_WINDOW = 131047  # re-engagement: free-form text more than 24 h after the last inbound
ADDRESS_CODES = frozenset({131026})
AUTH_CODES = frozenset({0, 3, 10, 190, *range(200, 300)})
TEMPORARY_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056})

_PHONE_ID_RE = re.compile(r"[0-9]{1,30}")
_VERSION_RE = re.compile(r"v[0-9]{1,3}\.[0-9]{1,2}")
_TEMPLATE_RE = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(_[A-Za-z0-9]{2,8})?")
_NUMBER_RE = re.compile(r"\+?([1-9][0-9]{6,14})")
_WHATSAPP = "whatsapp:"
_SIGNATURE_PREFIX = "sha256="


def verify_signature(app_secret: str | bytes, raw_body: bytes, header: str | None) -> bool:
    """Whether ``header`` (the ``X-Hub-Signature-256`` of a Meta webhook) is
    ``sha256=`` + the hex HMAC-SHA256 of ``raw_body`` (the bytes as received, before any
    JSON parsing) keyed with the app secret. Compared in constant time; a missing or
    malformed header, or an empty secret, is False."""
    secret = app_secret.encode("utf-8") if isinstance(app_secret, str) else app_secret
    if not secret or not header:
        return False
    header = header.strip()
    if not header.lower().startswith(_SIGNATURE_PREFIX):
        return False
    given = header[len(_SIGNATURE_PREFIX) :].strip().lower()
    expected = hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii"))


def _optional_secret(option: str, value: Any, file_value: Any) -> str | None:
    if value in (None, "") and file_value in (None, ""):
        return None
    return _http.read_secret(option, value, file_value)


class WhatsAppCloudChannel:
    """Sends through Meta's WhatsApp Cloud API; safe to share between threads.

    Set :attr:`last_inbound` to tell the channel when a number last wrote in (see
    :mod:`duly.delivery.channels._whatsapp`)."""

    type = "whatsapp-cloud"

    def __init__(
        self,
        name: str,
        *,
        phone_number_id: str | int,
        token: str | None = None,
        token_file: str | None = None,
        template: str | None = None,
        language: str | None = None,
        variables: dict[str, str] | str | None = None,
        freeform: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
        app_secret: str | None = None,
        app_secret_file: str | None = None,
        verify_token: str | None = None,
        verify_token_file: str | None = None,
    ) -> None:
        self.name = name
        self.where = f"{self.type} channel {name!r}"
        self.phone_number_id = str(phone_number_id).strip()
        if not _PHONE_ID_RE.fullmatch(self.phone_number_id):
            # Not echoed: a mistyped variable could hold the token instead.
            raise ValueError("phone_number_id: expected the number's ID (digits) from Meta")
        token_value = _http.read_secret("token", token, token_file)
        # The webhook's secrets (duly.api.inbound: /inbound/whatsapp); optional, since a
        # channel may send without receiving Meta's webhooks.
        self._app_secret = _optional_secret("app_secret", app_secret, app_secret_file)
        self._verify_token = _optional_secret("verify_token", verify_token, verify_token_file)
        self.template: str | None = None
        self.language: str | None = None
        if template not in (None, ""):
            self.template = str(template).strip()
            if not _TEMPLATE_RE.fullmatch(self.template):
                raise ValueError(
                    f"template: {template!r} is not a template name (lower case, digits, _)"
                )
            if language in (None, ""):
                raise ValueError("missing option 'language' (the template's, such as en_US)")
        if language not in (None, ""):
            if self.template is None:
                raise ValueError("language: needs option 'template'")
            self.language = str(language).strip()
            if not _LANGUAGE_RE.fullmatch(self.language):
                raise ValueError(f"language: {language!r} is not a language code such as en_US")
        self.variables = _whatsapp.field_map_option("variables", variables, numbered=True)
        if self.variables and self.template is None:
            raise ValueError("variables: needs option 'template'")
        self.freeform = _whatsapp.freeform_option(
            freeform, template=self.template, template_option="template"
        )
        version = str(api_version).strip()
        if not _VERSION_RE.fullmatch(version):
            raise ValueError("api_version: expected a Graph API version such as v21.0")
        self.api_version = version
        self.base_url = _http.http_url("base_url", str(base_url)).rstrip("/")
        self.url = f"{self.base_url}/{version}/{quote(self.phone_number_id, safe='')}/messages"
        self.allow_private = _http.bool_option("allow_private", allow_private)
        self._client = _http.make_client(_http.timeout_option(timeout))
        self._client.headers["authorization"] = f"Bearer {token_value}"
        # When each number last wrote in (None: never, as far as duly knows). Inbound
        # webhooks will feed it; the default knows of none, so the template is used.
        self.last_inbound: _whatsapp.LastInbound = _whatsapp.no_inbound
        self.clock = _whatsapp.utc_now

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, "
            f"phone_number_id={self.phone_number_id!r}, template={self.template!r}, "
            f"base_url={self.base_url!r})"
        )

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        to = self._address(message)
        choice = _whatsapp.choose(
            message,
            key="template",
            template=self.template,
            language=self.language,
            fields=self.variables,
            freeform=self.freeform,
        )
        if choice.template is None:
            text = (message.text or "").strip() or (message.title or "").strip()
            if not text:
                raise DeliveryError(
                    f"{self.where}: the message has no text (nor a title) to send",
                    permanent=True,
                )
            return self._post(message, self.text_body(to, text))
        content = _whatsapp.read_content(
            message, choice.fields, where=self.where, numbered=True, extra=choice.variables
        )
        if content.text is not None and _whatsapp.inside_window(
            choice.freeform, self.last_inbound, to, self.clock()
        ):
            try:
                return self._post(message, self.text_body(to, content.text))
            except DeliveryError as exc:
                if exc.code != str(OUTSIDE_WINDOW):
                    raise
                # Not sent: the window had closed after all. The template goes instead.
                log.info(
                    "%s: outside the window for %s; sending the template",
                    self.where,
                    message.message_id,
                )
        return self._post(
            message, self.template_body(to, content, choice.template, choice.language)
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ building

    def text_body(self, to: str, text: str) -> dict[str, Any]:
        """The JSON body of a free-form text message (cut to :data:`MAX_TEXT`)."""
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1].rstrip() + "…"
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }

    def template_body(
        self,
        to: str,
        content: _whatsapp.Content,
        name: str | None = None,
        language: str | None = None,
    ) -> dict[str, Any]:
        """The JSON body sending the template (``name`` in ``language``, else the
        channel's), its variables as body parameters 1…N."""
        name, language = name or self.template, language or self.language
        assert name is not None and language is not None
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if content.variables:
            ordered = sorted(content.variables.items(), key=lambda kv: int(kv[0]))
            template["components"] = [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": value} for _, value in ordered],
                }
            ]
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": template,
        }

    def _address(self, message: Message) -> str:
        """The recipient's number as ``+`` and digits; permanent errors when there is none
        or it is not a phone number (the latter about the address)."""
        to = message.to.strip()
        if to.startswith(_WHATSAPP):
            to = to[len(_WHATSAPP) :].strip()
        if not to:
            raise DeliveryError(f"{self.where}: no phone number to send to", permanent=True)
        m = _NUMBER_RE.fullmatch(to.replace(" ", ""))
        if m is None:
            raise DeliveryError(
                f"{self.where}: {to!r} is not a phone number in international format",
                permanent=True,
                address=True,
            )
        return "+" + m.group(1)

    # ------------------------------------------------------------------ answers

    def _post(self, message: Message, body: dict[str, Any]) -> Receipt:
        response, answer = _http.post(
            self._client, self.url, where=self.where, allow_private=self.allow_private, json=body
        )
        return self._outcome(message, response.status_code, answer)

    def _outcome(self, message: Message, status: int, body: bytes) -> Receipt:
        info = _http.json_object(body)
        if 200 <= status < 300:
            wamid = detail = None
            messages = info.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[0], dict):
                first = messages[0]
                wamid = first.get("id") if isinstance(first.get("id"), str) else None
                state = first.get("message_status")
                detail = state if isinstance(state, str) else None
            if wamid is None:
                # Accepted, so it is (probably) on its way: retrying could send it twice.
                log.warning("%s: Meta answered %s without a message id", self.where, status)
            log.debug("%s: sent %s as %s", self.where, message.message_id, wamid)
            return Receipt(provider_id=wamid, detail=detail)

        error = info.get("error") if isinstance(info.get("error"), dict) else {}
        assert isinstance(error, dict)
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        text = error.get("message") if isinstance(error.get("message"), str) else None
        reason = text or _http.snippet(body) or "(no message)"
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        if isinstance(details, str) and details and details != text:
            reason += f": {details}"
        trace = error.get("fbtrace_id")
        if isinstance(trace, str) and trace:
            reason += f" (fbtrace_id {trace})"
        what = f"HTTP {status}" + (f", error {code}" if code is not None else "")
        if status == 401 or code in AUTH_CODES:
            problem = "Meta refused the access token (expired, revoked or missing a permission)"
            permanent = True
        elif code == OUTSIDE_WINDOW:
            problem = (
                "WhatsApp takes only an approved template outside the 24-hour "
                "customer-service window; configure template and language (and variables) "
                "on the channel"
            )
            permanent = True
        elif code in TEMPORARY_CODES or status in (408, 429) or status >= 500:
            problem = "Meta could not take the message now"
            permanent = False
        else:
            problem = "Meta refused the message"
            permanent = True
        raise DeliveryError(
            f"{self.where}: {problem} ({what}): {reason}",
            permanent=permanent,
            code=str(code if code is not None else status),
            address=permanent and code in ADDRESS_CODES,
        )
