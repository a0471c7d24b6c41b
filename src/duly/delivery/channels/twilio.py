"""Twilio: SMS (``twilio-sms``) and WhatsApp (``twilio-whatsapp``) through the Messages API.

One ``POST {base_url}/2010-04-01/Accounts/{account}/Messages.json`` per message, form fields
``To``, ``From`` (and/or ``MessagingServiceSid``), ``Body`` and optionally
``StatusCallback``, with HTTP basic auth ``account:token``. WhatsApp puts ``whatsapp:`` in
front of both numbers. The receipt is the message's ``sid`` (``SM…``).

The token comes from ``token`` (a ``${VAR}``) or ``token_file`` (read once, when the channel
is built; surrounding whitespace dropped). It never appears in a repr, a log line or an
error.

Errors, as Twilio answers (its JSON error body is ``{"code", "message", "more_info",
"status"}``; ``DeliveryError.code`` is Twilio's error code as a string, or the HTTP status
when the body has none, so suppression can act on 21610 and the like):

- 2xx: sent.
- 401 (20003): permanent — the account or token is wrong, and stays wrong until fixed.
- 429 (20429), 408, 5xx, and the few 4xx codes that mean "not now" (21611: the sender's
  queue is full; 63018: WhatsApp rate limit): temporary.
- Any other 4xx: permanent, e.g. 21211 invalid ``To``, 21614 not a mobile number, 21610
  the recipient replied STOP, 21408 region not enabled, 63003 no WhatsApp account there.
  Those about the number itself (:data:`ADDRESS_CODES`) also set ``DeliveryError.address``,
  so that number is suppressed.
- Timeouts and network failures: temporary. A timeout after the request went out may
  have sent the message; Twilio has no idempotency key for Messages, so the retry may
  send it twice.

The text is the message's ``text`` (its ``title`` when there is none), without surrounding
whitespace, cut to Twilio's 1,600 characters (counted as Twilio does, in UTF-16 units) with
an ellipsis.

WhatsApp templates (Twilio Content API): ``twilio-whatsapp`` with ``content_sid`` (``HX`` and
32 hex digits, an approved template) sends ``ContentSid`` and ``ContentVariables`` (a JSON
string) instead of ``Body`` whenever free-form text is not allowed; ``content_variables``
maps variables to message fields and ``freeform`` (window, always, never) says when text
is allowed — see :mod:`duly.delivery.channels._whatsapp` for the variables and the window
(and for a rule's or step's own template, ``whatsapp: {content_sid, variables}``). Error
63016 (free-form text outside the 24-hour window) is permanent and names the fix; with a
template configured, the message is sent again at once as the template.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote

import httpx

from duly.delivery.channels import _http, _whatsapp
from duly.delivery.channels.base import DeliveryError, Message, Receipt

__all__ = [
    "ADDRESS_CODES",
    "MAX_BODY",
    "TwilioChannel",
    "TwilioSmsChannel",
    "TwilioWhatsAppChannel",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.twilio.com"
MAX_BODY = 1600  # Twilio refuses longer bodies (error 21617)

# 4xx error codes that are about the moment, not the message.
_TEMPORARY_CODES = frozenset({20429, 21611, 63018})
# Error codes that are about the recipient's number (invalid, not a mobile, unreachable,
# unsubscribed, no WhatsApp account): DeliveryError.address, so the number is suppressed.
ADDRESS_CODES = frozenset({21211, 21214, 21217, 21401, 21407, 21610, 21612, 21614, 63003, 63024})

_ACCOUNT_RE = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_RE = re.compile(r"MG[0-9a-fA-F]{32}")
_CONTENT_RE = re.compile(r"HX[0-9a-fA-F]{32}")
OUTSIDE_WINDOW = 63016  # WhatsApp: free-form text outside the customer-service window
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_SHORT_CODE_RE = re.compile(r"[0-9]{3,8}")
_ALPHANUMERIC_RE = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_WHATSAPP = "whatsapp:"


def trim_body(text: str, limit: int = MAX_BODY) -> str:
    """``text`` cut to ``limit`` UTF-16 units, ending in "…" when cut (never in the middle
    of a character outside the BMP, which takes two units)."""
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit - 1:
            return text[:i].rstrip() + "…"
    return text  # not reached


class TwilioChannel:
    """Sends through Twilio's Messages API; safe to share between threads."""

    type = "twilio"
    prefix = ""  # put in front of both numbers

    def __init__(
        self,
        name: str,
        *,
        account: str,
        token: str | None = None,
        token_file: str | None = None,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
    ) -> None:
        self.name = name
        self.where = f"{self.type} channel {name!r}"
        self.account = str(account).strip()
        if not _ACCOUNT_RE.fullmatch(self.account):
            # Not echoed: a mistyped variable could hold the token instead.
            raise ValueError("account: expected a Twilio Account SID (AC and 32 hex digits)")
        token_value = _http.read_secret("token", token, token_file)
        self._auth_token = token_value  # verifies X-Twilio-Signature (duly.delivery.inbound)
        self.from_ = self._sender(from_) if from_ not in (None, "") else None
        self.messaging_service_sid = None
        if messaging_service_sid not in (None, ""):
            sid = str(messaging_service_sid).strip()
            if not _SERVICE_RE.fullmatch(sid):
                raise ValueError(
                    "messaging_service_sid: expected a Messaging Service SID (MG and 32 hex digits)"
                )
            self.messaging_service_sid = sid
        if self.from_ is None and self.messaging_service_sid is None:
            raise ValueError("missing option 'from' (or 'messaging_service_sid')")
        self.status_callback = None
        if status_callback not in (None, ""):
            self.status_callback = _http.http_url("status_callback", str(status_callback))
        self.base_url = _http.http_url("base_url", str(base_url)).rstrip("/")
        self.url = (
            f"{self.base_url}/2010-04-01/Accounts/{quote(self.account, safe='')}/Messages.json"
        )
        self.allow_private = _http.bool_option("allow_private", allow_private)
        self._client = _http.make_client(
            _http.timeout_option(timeout), auth=httpx.BasicAuth(self.account, token_value)
        )

    def __repr__(self) -> str:
        sender = self.from_ or self.messaging_service_sid
        return (
            f"{type(self).__name__}(name={self.name!r}, account={self.account!r}, "
            f"from_={sender!r}, base_url={self.base_url!r})"
        )

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        response, body = _http.post(
            self._client,
            self.url,
            where=self.where,
            allow_private=self.allow_private,
            data=self.form(message),
        )
        return self._outcome(message, response.status_code, body)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ building

    def form(self, message: Message) -> dict[str, str]:
        """The form fields for ``message``. Raises a permanent DeliveryError when there is
        nothing to send or nobody to send it to."""
        to = self._address(message)
        text = (message.text or "").strip() or (message.title or "").strip()
        if not text:
            raise DeliveryError(
                f"{self.where}: the message has no text (nor a title) to send", permanent=True
            )
        return {**self._envelope(to), "Body": trim_body(text)}

    def _address(self, message: Message) -> str:
        """The recipient's number, without ``whatsapp:``; a permanent error when empty."""
        to = message.to.strip()
        if to.startswith(_WHATSAPP):
            to = to[len(_WHATSAPP) :]
        if not to:
            raise DeliveryError(f"{self.where}: no phone number to send to", permanent=True)
        return to

    def _envelope(self, to: str) -> dict[str, str]:
        """The form fields saying who sends to whom (and where statuses go)."""
        form = {"To": self.prefix + to}
        if self.from_ is not None:
            form["From"] = self.prefix + self.from_
        if self.messaging_service_sid is not None:
            form["MessagingServiceSid"] = self.messaging_service_sid
        if self.status_callback is not None:
            form["StatusCallback"] = self.status_callback
        return form

    def _sender(self, value: str) -> str:
        sender = str(value).strip()
        if sender.startswith(_WHATSAPP):
            sender = sender[len(_WHATSAPP) :]
        if not self._valid_sender(sender):
            raise ValueError(f"from: {value!r} is not {self._sender_kind}")
        return sender

    _sender_kind = "a phone number (+15550100000), short code or alphanumeric sender ID"

    def _valid_sender(self, sender: str) -> bool:
        return any(r.fullmatch(sender) for r in (_E164_RE, _SHORT_CODE_RE, _ALPHANUMERIC_RE))

    # ------------------------------------------------------------------ answers

    def _outcome(self, message: Message, status: int, body: bytes) -> Receipt:
        info = _http.json_object(body)
        if 200 <= status < 300:
            sid = info.get("sid")
            if not isinstance(sid, str):
                # Accepted, so it is (probably) on its way: retrying could send it twice.
                log.warning("%s: Twilio answered %s without a sid", self.where, status)
                sid = None
            log.debug("%s: sent %s as %s", self.where, message.message_id, sid)
            detail = info.get("status")
            return Receipt(provider_id=sid, detail=str(detail) if detail else None)

        code = info.get("code")
        twilio_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        text = info.get("message") if isinstance(info.get("message"), str) else None
        what = f"HTTP {status}" + (f", error {twilio_code}" if twilio_code else "")
        reason = text or _http.snippet(body) or "(no message)"
        more = info.get("more_info")
        if isinstance(more, str) and more:
            reason += f" ({more})"
        if status == 401:
            problem = "Twilio refused the account and token"
            permanent = True
        elif twilio_code == OUTSIDE_WINDOW:
            problem = (
                "WhatsApp takes only an approved template outside the 24-hour "
                "customer-service window; configure content_sid (and content_variables) "
                "on the channel"
            )
            permanent = True
        elif status in (408, 429) or status >= 500 or twilio_code in _TEMPORARY_CODES:
            problem = "Twilio could not take the message now"
            permanent = False
        else:
            problem = "Twilio refused the message"
            permanent = True
        raise DeliveryError(
            f"{self.where}: {problem} ({what}): {reason}",
            permanent=permanent,
            code=str(twilio_code if twilio_code is not None else status),
            address=permanent and twilio_code in ADDRESS_CODES,
        )


class TwilioSmsChannel(TwilioChannel):
    """SMS through Twilio."""

    type = "twilio-sms"


class TwilioWhatsAppChannel(TwilioChannel):
    """WhatsApp through Twilio: both numbers get the ``whatsapp:`` prefix (given or not).

    With ``content_sid``, an approved template (Content API) is sent whenever free-form
    text is not allowed (``freeform``; see :mod:`duly.delivery.channels._whatsapp`). Set
    :attr:`last_inbound` to tell the channel when a number last wrote in.
    """

    type = "twilio-whatsapp"
    prefix = _WHATSAPP
    _sender_kind = "a phone number such as +15550100000 (whatsapp: may stand before it)"

    def __init__(
        self,
        name: str,
        *,
        account: str,
        token: str | None = None,
        token_file: str | None = None,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        content_sid: str | None = None,
        content_variables: dict[str, str] | str | None = None,
        freeform: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
    ) -> None:
        super().__init__(
            name,
            account=account,
            token=token,
            token_file=token_file,
            from_=from_,
            messaging_service_sid=messaging_service_sid,
            status_callback=status_callback,
            base_url=base_url,
            timeout=timeout,
            allow_private=allow_private,
        )
        self.content_sid: str | None = None
        if content_sid not in (None, ""):
            sid = str(content_sid).strip()
            if not _CONTENT_RE.fullmatch(sid):
                raise ValueError("content_sid: expected a Content SID (HX and 32 hex digits)")
            self.content_sid = sid
        self.content_variables = _whatsapp.field_map_option(
            "content_variables", content_variables, numbered=False
        )
        if self.content_variables and self.content_sid is None:
            raise ValueError("content_variables: needs option 'content_sid'")
        self.freeform = _whatsapp.freeform_option(
            freeform, template=self.content_sid, template_option="content_sid"
        )
        # When each number last wrote in (None: never, as far as duly knows). Inbound
        # webhooks will feed it; the default knows of none, so the template is used.
        self.last_inbound: _whatsapp.LastInbound = _whatsapp.no_inbound
        self.clock = _whatsapp.utc_now

    def _valid_sender(self, sender: str) -> bool:
        return _E164_RE.fullmatch(sender) is not None

    def send(self, message: Message) -> Receipt:
        choice = _whatsapp.choose(
            message,
            key="content_sid",
            template=self.content_sid,
            language=None,
            fields=self.content_variables,
            freeform=self.freeform,
        )
        if choice.template is None:
            return super().send(message)
        to = self._address(message)
        content = _whatsapp.read_content(
            message, choice.fields, where=self.where, numbered=False, extra=choice.variables
        )
        if content.text is not None and _whatsapp.inside_window(
            choice.freeform, self.last_inbound, to, self.clock()
        ):
            try:
                return self._post(message, {**self._envelope(to), "Body": trim_body(content.text)})
            except DeliveryError as exc:
                if exc.code != str(OUTSIDE_WINDOW):
                    raise
                # Not sent: the window had closed after all. The template goes instead.
                log.info(
                    "%s: outside the window for %s; sending the template",
                    self.where,
                    message.message_id,
                )
        return self._post(message, self.template_form(to, content, choice.template))

    def template_form(
        self, to: str, content: _whatsapp.Content, content_sid: str | None = None
    ) -> dict[str, str]:
        """The form fields sending the template (``content_sid``, else the channel's) to
        ``to`` with ``content``'s variables."""
        sid = content_sid or self.content_sid
        assert sid is not None
        form = {**self._envelope(to), "ContentSid": sid}
        if content.variables:
            form["ContentVariables"] = json.dumps(content.variables, ensure_ascii=False)
        return form

    def _post(self, message: Message, form: dict[str, str]) -> Receipt:
        response, body = _http.post(
            self._client, self.url, where=self.where, allow_private=self.allow_private, data=form
        )
        return self._outcome(message, response.status_code, body)
