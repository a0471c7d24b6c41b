"""Apprise: the long tail of chat and push services (Slack, Telegram, Discord, Teams, ntfy,
Matrix, WeCom, DingTalk, …), each named by an Apprise URL (https://github.com/caronc/apprise).

``url`` is one of:

- a fixed URL, ``slack://T0/B0/XXXX/#ops``: every message goes there (an ops room);
- a template with ``{to}`` (the recipient's address on this channel, from
  ``addresses.<channel name>``) and/or ``{recipient}`` (the recipient's id), for a service
  where each person has their own target: ``tgram://${TELEGRAM_BOT}/{to}`` with
  ``addresses: {telegram: "123456789"}``. A value put in the URL may not hold ``/``, ``?``,
  ``&``, ``\\`` or whitespace, so an address cannot add targets or change options;
- exactly ``"{to}"``: each recipient's address is a whole Apprise URL of its own (their
  own ntfy topic, say).

The message goes out as its text (or its HTML when there is no text, converted by Apprise
for services that take plain text), with its title.

Apprise answers only "worked" or "didn't"; its log lines say why. They become the error
message. A failure is temporary — unless the log shows the service answered a 4xx other
than 408 and 429 (Apprise's plugins write ``error=<status>.``), which is permanent, with
the status as ``DeliveryError.code``: a Telegram "chat not found" (400) will not get
better by retrying. An address that does not make a valid URL is permanent too. Private
and loopback addresses are refused (permanently) unless the channel allows them (see
``duly.channels._http``), whatever the plugin and however it connects (over TCP).
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from types import ModuleType
from typing import Any

from duly.channels import _http
from duly.channels.base import DeliveryError, Message, Receipt

__all__ = ["AppriseChannel"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds for one notification, whatever the service does inside
WHOLE_URL = "{to}"
_FORBIDDEN = re.compile(r"[/?&\\\s]")
_HTTP_STATUS = re.compile(r"\berror=(\d{3})\b")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

_load_lock = threading.Lock()
_apprise: ModuleType | None = None


def _load() -> ModuleType:
    """The apprise package with its plugins loaded (once, on first use)."""
    global _apprise
    with _load_lock:
        if _apprise is None:
            with warnings.catch_warnings():
                # Apprise's PGP helper imports imghdr, deprecated since Python 3.11; the
                # warning is about apprise's future, not about anything duly can change.
                warnings.filterwarnings(
                    "ignore", message="'imghdr' is deprecated", category=DeprecationWarning
                )
                import apprise
                from apprise.plugins import N_MGR

                N_MGR.load_modules()  # type: ignore[no-untyped-call]
            _apprise = apprise
        return _apprise


def _scheme(url: str) -> str:
    m = _SCHEME.match(url)
    return m.group(1) if m else "(none)"


class AppriseChannel:
    """Sends through Apprise; safe to share between threads (each send has its own
    Apprise object)."""

    type = "apprise"

    def __init__(
        self,
        name: str,
        *,
        url: str,
        timeout: float | str = DEFAULT_TIMEOUT,
        allow_private: bool | str = False,
    ) -> None:
        self.name = name
        self.where = f"apprise channel {name!r}"
        self.url = str(url).strip()
        try:
            self.timeout = float(timeout)
        except (TypeError, ValueError):
            self.timeout = 0.0
        if not 0 < self.timeout < float("inf"):
            raise ValueError(f"timeout: expected a number of seconds above 0, not {timeout!r}")
        self.allow_private = _http.bool_option("allow_private", allow_private)
        self._apprise = _load()
        self._asset = self._apprise.AppriseAsset(storage_mode="memory")  # nothing on disk
        if self.url != WHOLE_URL:
            # A URL holds tokens: errors name its scheme, never the URL.
            sample = self._fill(self.url, to="x", recipient="x")
            if self._apprise.Apprise.instantiate(sample, asset=self._asset) is None:
                raise ValueError(
                    f"url: Apprise does not accept this {_scheme(self.url)}:// URL "
                    "(see Apprise's documentation of that service for the URL's form)"
                )

    def __repr__(self) -> str:
        shown = "{to}" if self.url == WHOLE_URL else f"{_scheme(self.url)}://…"
        return f"AppriseChannel(name={self.name!r}, url={shown!r})"

    # ------------------------------------------------------------------ the interface

    def send(self, message: Message) -> Receipt:
        apprise = self._apprise
        url = self._target(message)
        service = apprise.Apprise.instantiate(url, asset=self._asset)
        if service is None:
            raise DeliveryError(
                f"{self.where}: the recipient's address does not make a valid Apprise "
                f"{_scheme(url)}:// URL",
                permanent=True,
                code="bad_address",
            )
        notifier = apprise.Apprise(asset=self._asset)
        notifier.add(service)
        title = message.title or ""
        if message.text and message.text.strip():
            body, body_format = message.text, apprise.NotifyFormat.TEXT
        elif message.html and message.html.strip():
            body, body_format = message.html, apprise.NotifyFormat.HTML
        else:  # a title alone is the body (some services refuse an empty body)
            body, body_format, title = title.strip(), apprise.NotifyFormat.TEXT, ""
        if not body:
            raise DeliveryError(f"{self.where}: the message has nothing to send", permanent=True)
        with _http.public_addresses_only(not self.allow_private) as refusals:
            result = notifier.notify(
                body=body, title=title, body_format=body_format, timeout=self.timeout
            )
        if result:
            log.debug("%s: sent %s via %s", self.where, message.message_id, service.service_name)
            return Receipt(detail=str(service.service_name))
        if refusals:
            raise _http.refused_error(self.where, refusals)
        raise self._failure(result, str(service.service_name))

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers

    def _target(self, message: Message) -> str:
        if self.url == WHOLE_URL:
            return message.to.strip()
        try:
            return self._fill(self.url, to=message.to, recipient=message.recipient_id)
        except ValueError as exc:
            raise DeliveryError(
                f"{self.where}: {exc}", permanent=True, code="bad_address"
            ) from None

    @staticmethod
    def _fill(url: str, *, to: str, recipient: str) -> str:
        for placeholder, value in (("{to}", to), ("{recipient}", recipient)):
            if placeholder not in url:
                continue
            if not value or _FORBIDDEN.search(value):
                what = "address" if placeholder == "{to}" else "id"
                raise ValueError(
                    f"the recipient's {what} is empty or holds /, ?, &, \\ or whitespace: "
                    f"it cannot stand for {placeholder} in the URL"
                )
            url = url.replace(placeholder, value)
        return url

    def _failure(self, result: Any, service: str) -> DeliveryError:
        lines = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR")]
        detail = "; ".join(dict.fromkeys(lines)) or f"Apprise status {result.status.name}"
        statuses = [int(s) for line in lines for s in _HTTP_STATUS.findall(line)]
        status = statuses[-1] if statuses else None
        permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
        if result.status == self._apprise.AppriseResultStatus.TIMEOUT:
            detail = f"no answer within {self.timeout:g} s; {detail}"
            permanent = False
        return DeliveryError(
            f"{self.where}: {service} failed: {detail}",
            permanent=permanent,
            code=str(status) if status is not None else None,
        )
