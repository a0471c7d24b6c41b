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
  own ntfy topic, say). The address comes from the app, so it may only name a service the
  channel lists in ``schemes`` (by default :data:`DEFAULT_SCHEMES`, remote services reached
  over HTTP(S), never one that writes to this host, ``syslog://`` say, or sends datagrams,
  ``rsyslog://``), and it may not carry an option that makes Apprise read a file of this
  host (``template=``, ``keyfile=``, ``attach=``, PGP keys …, or any ``file:`` URL). Both are
  checked before anything is sent; a refusal is permanent and names the scheme or option.

The message goes out as its text (or its HTML when there is no text, converted by Apprise
for services that take plain text), with its title.

Apprise answers only "worked" or "didn't"; its log lines say why. They become the error
message. A failure is temporary — unless the log shows the service answered a 4xx other
than 408 and 429 (Apprise's plugins write ``error=<status>.``), which is permanent, with
the status as ``DeliveryError.code``: a Telegram "chat not found" (400) will not get
better by retrying. An address that does not make a valid URL is permanent too. Private
and loopback addresses are refused (permanently) unless the channel allows them (see
``duly.delivery.channels._http``), whatever the plugin and however it connects (over TCP).
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Iterable
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from duly.delivery.channels import _http
from duly.delivery.channels.base import DeliveryError, Message, Receipt

__all__ = ["DEFAULT_SCHEMES", "AppriseChannel"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds for one notification, whatever the service does inside
WHOLE_URL = "{to}"
_FORBIDDEN = re.compile(r"[/?&\\\s]")
_HTTP_STATUS = re.compile(r"\berror=(\d{3})\b")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

# The services a recipient's address may name when ``url`` is "{to}" and the channel lists no
# ``schemes``: remote chat and push services reached over HTTP(S), so every connection goes
# through the private-address check. Not among them: what acts on this host (syslog, dbus,
# desktop notifications), sends datagrams (rsyslog, growl) or reaches other protocols.
DEFAULT_SCHEMES: tuple[str, ...] = (
    "discord",
    "form",
    "forms",
    "gotify",
    "gotifys",
    "json",
    "jsons",
    "matrix",
    "matrixs",
    "mmost",
    "mmosts",
    "ntfy",
    "ntfys",
    "pbul",
    "pover",
    "rocket",
    "rockets",
    "signal",
    "signals",
    "slack",
    "tgram",
    "workflow",
    "workflows",
    "xml",
    "xmls",
    "zulip",
)
# URL options through which Apprise's plugins read a file of this host (a message template,
# a key file, a PGP key, an attachment), refused in a URL a recipient's address decides.
FILE_OPTIONS = frozenset(
    {"attach", "attachment", "keyfile", "pgpkey", "pgpprv", "pgppub", "subfile", "template"}
)
# A file: URL anywhere in a value (not "profile:": the scheme starts a word).
_FILE_URL = re.compile(r"(?<![A-Za-z0-9+.-])file:", re.IGNORECASE)
# Native service URLs (https://discord.com/api/webhooks/…) are allowed by their service.
_NATIVE = frozenset({"http", "https"})

APPRISE_MISSING = (
    "the apprise channel needs the apprise package, which is not installed: "
    "pip install 'duly[apprise]'"
)

_load_lock = threading.Lock()
_apprise: ModuleType | None = None


def _load() -> ModuleType:
    """The apprise package with its plugins loaded (once, on first use). Raises ValueError
    (which build_channel reports as the channel's configuration error) when it is not
    installed."""
    global _apprise
    with _load_lock:
        if _apprise is None:
            with warnings.catch_warnings():
                # Apprise's PGP helper imports imghdr, deprecated since Python 3.11; the
                # warning is about apprise's future, not about anything duly can change.
                warnings.filterwarnings(
                    "ignore", message="'imghdr' is deprecated", category=DeprecationWarning
                )
                try:
                    import apprise
                    from apprise.plugins import N_MGR
                except ModuleNotFoundError as exc:
                    if (exc.name or "").partition(".")[0] != "apprise":
                        raise
                    raise ValueError(APPRISE_MISSING) from None

                N_MGR.load_modules()  # type: ignore[no-untyped-call]
            _apprise = apprise
        return _apprise


def _scheme(url: str) -> str:
    m = _SCHEME.match(url)
    return m.group(1) if m else "(none)"


def _service_schemes(service: Any) -> set[str]:
    """The schemes of the plugin behind an Apprise service object."""
    out: set[str] = set()
    for attr in ("protocol", "secure_protocol"):
        value = getattr(service, attr, None)
        values = (value,) if isinstance(value, str) else (value or ())
        out.update(str(v).lower() for v in values)
    return out


def _schemes_option(value: Any, known: Any) -> tuple[str, ...]:
    """The ``schemes`` option: a list, or a string of names separated by commas or spaces
    (from a ``${VAR}``). Raises ValueError naming the option."""
    if isinstance(value, str):
        items: Iterable[Any] = value.replace(",", " ").split()
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ValueError(f"schemes: expected a list of Apprise schemes, not {value!r}")
    names = []
    for item in items:
        name = str(item).strip().lower().removesuffix("://")
        if not isinstance(item, str) or name not in known:
            raise ValueError(
                f"schemes: {item!r} is not an Apprise scheme (the part before :// of a "
                "service's URL, e.g. ntfys, tgram, discord)"
            )
        names.append(name)
    if not names:
        raise ValueError("schemes: list at least one Apprise scheme")
    return tuple(dict.fromkeys(names))


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
        schemes: list[str] | str | None = None,
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
        if schemes is not None and self.url != WHOLE_URL:
            raise ValueError(
                'schemes: only for url "{to}", where each recipient\'s address is a whole '
                "Apprise URL; this URL's service is fixed"
            )
        from apprise.plugins import N_MGR

        self.schemes = (
            DEFAULT_SCHEMES if schemes is None else _schemes_option(schemes, N_MGR.schemas())
        )
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
        if self.url == WHOLE_URL and not _service_schemes(service) & set(self.schemes):
            # a native URL (https://discord.com/…) is judged by the service it names
            raise self._scheme_refused(sorted(_service_schemes(service))[0])
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
            url = message.to.strip()
            self._check_address(url)
            return url
        try:
            return self._fill(self.url, to=message.to, recipient=message.recipient_id)
        except ValueError as exc:
            raise DeliveryError(
                f"{self.where}: {exc}", permanent=True, code="bad_address"
            ) from None

    def _check_address(self, url: str) -> None:
        """A whole URL from a recipient's address: its scheme must be one the channel lists,
        and no option may make Apprise read a file here. Raises DeliveryError (permanent)."""
        scheme = _scheme(url).lower()
        if not _SCHEME.match(url):
            raise DeliveryError(
                f"{self.where}: the recipient's address is not an Apprise URL (SCHEME://…)",
                permanent=True,
                code="bad_address",
            )
        if scheme not in self.schemes and scheme not in _NATIVE:
            raise self._scheme_refused(scheme)
        query = url.partition("?")[2]
        if query:
            from apprise.utils.parse import parse_qsd  # Apprise's own reading of the query

            for key, value in parse_qsd(query, simple=True)["qsd"].items():
                if key in FILE_OPTIONS or _FILE_URL.search(unquote(str(value))):
                    raise DeliveryError(
                        f"{self.where}: the recipient's address sets the option {key!r}, "
                        "which would have Apprise read a file of this host; a recipient's "
                        "address may not (put it in the channel's url instead)",
                        permanent=True,
                        code="option_not_allowed",
                    )
        if _FILE_URL.search(unquote(url)):
            raise DeliveryError(
                f"{self.where}: the recipient's address holds a file: URL, which would have "
                "Apprise read a file of this host",
                permanent=True,
                code="option_not_allowed",
            )

    def _scheme_refused(self, scheme: str) -> DeliveryError:
        return DeliveryError(
            f"{self.where}: the recipient's address is a {scheme}:// URL, a service this "
            f"channel does not send to (its schemes: {', '.join(self.schemes)}; list others "
            "in the channel's schemes option)",
            permanent=True,
            code="scheme_not_allowed",
        )

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
