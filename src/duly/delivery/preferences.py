"""Preference links and one-click unsubscribe (consent: docs/reference/rules.md;
``GET/POST /u/{token}``; RFC 8058).

A preference link is ``BASE_URL/u/TOKEN``. The token is signed and dated with itsdangerous
exactly like an acknowledge link (:mod:`duly.delivery.ack`: the same secret, ``DULY_SECRET_KEY`` or the
one kept in the ``settings`` table, the same clock-aware signer) under a *different salt*, so
an acknowledge token is never a valid preference token and the other way round. It carries
the recipient id, optionally the rule and the category of the message it came in, and how
many days it stays valid (365 by default: people unsubscribe from old mail).

What a one-click unsubscribe (``POST /u/TOKEN`` with ``List-Unsubscribe=One-Click``) opts out
of is decided by :func:`apply_unsubscribe` from what the token names:

- ``promotional`` mail: the whole promotional category (marketing law expects "stop all
  marketing", not one campaign);
- otherwise a rule, when the token names one: that rule only (one stream of reminders stops,
  other reminders and every transactional message keep coming);
- otherwise the ``reminder`` category; a token naming nothing opts out of both categories.

Transactional mail is always allowed (spec), so an unsubscribe never touches it, and the
List-Unsubscribe headers (:func:`list_unsubscribe_headers`) are only put on reminder and
promotional mail.

RFC 8058 one-click needs an https URI. With an ``http://`` base URL the link is still put in
``List-Unsubscribe`` (a person can open it) but ``List-Unsubscribe-Post`` is left out, so no
mailbox provider offers one-click on it, and ``duly serve`` / ``duly worker`` warn at start
(:func:`warn_about_unsubscribe_links`) when email would go out that way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from duly.core.clock import Clock, SystemClock
from duly.core.errors import InvalidInput
from duly.core.model import EMAIL_API_TYPES, Recipient
from duly.delivery.ack import (
    CLOCK_SKEW_SECONDS,
    MAX_AGE_DAYS_LIMIT,
    MAX_TOKEN_LENGTH,
    AckNotConfigured,
    _ClockSigner,
    base_url_from_env,
    load_secret,
)

if TYPE_CHECKING:
    from duly.store.db import Engine

__all__ = [
    "CATEGORIES",
    "DEFAULT_MAX_AGE_DAYS",
    "MAILTO_ENV",
    "SALT",
    "PrefClaim",
    "PrefLinkExpired",
    "PrefLinkInvalid",
    "PrefLinks",
    "PrefSigner",
    "apply_unsubscribe",
    "list_unsubscribe_headers",
    "pref_token",
    "set_consent",
    "unsubscribe_link_warning",
    "unsubscribe_scope",
    "warn_about_unsubscribe_links",
]

log = logging.getLogger("duly.preferences")

# Separates these signatures from acknowledge links (salt "duly.delivery.ack") signed with one secret.
SALT = "duly.delivery.preferences"
DEFAULT_MAX_AGE_DAYS = 365
MAILTO_ENV = "DULY_UNSUBSCRIBE_MAILTO"
# The categories a recipient can opt out of (transactional is always allowed).
CATEGORIES = ("reminder", "promotional")


class PrefLinkInvalid(InvalidInput):
    """This preferences link is not valid: it was changed, cut short, or signed with another
    secret."""

    code = "invalid_link"


class PrefLinkExpired(PrefLinkInvalid):
    """This preferences link has expired."""

    code = "link_expired"


@dataclass(frozen=True, slots=True)
class PrefClaim:
    """What a valid preference token says."""

    recipient: str
    rule: str | None
    category: str | None
    issued_at: datetime
    max_age_days: int

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(days=self.max_age_days)


class PrefSigner:
    """Makes and checks preference tokens with one secret (or several, newest last)."""

    def __init__(self, secret: str | bytes | list[str], *, clock: Clock | None = None) -> None:
        if not secret:
            raise ValueError("a preferences secret cannot be empty")
        self.clock = clock or SystemClock()
        self._s = URLSafeTimedSerializer(
            secret, salt=SALT, signer=_ClockSigner, signer_kwargs={"clock": self.clock}
        )

    def pref_token(
        self,
        recipient_id: str,
        *,
        rule: str | None = None,
        category: str | None = None,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    ) -> str:
        _check_claim(recipient_id, rule, category, max_age_days)
        token = self._s.dumps([1, recipient_id, rule, category, max_age_days])
        return token if isinstance(token, str) else token.decode()

    dumps = pref_token

    def loads(self, token: str) -> PrefClaim:
        """The claim of a valid, unexpired token. Raises PrefLinkExpired or PrefLinkInvalid."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise PrefLinkInvalid()
        try:
            payload, issued = self._s.loads(token, return_timestamp=True)
        except BadData:
            raise PrefLinkInvalid() from None
        if (
            not isinstance(payload, list)
            or len(payload) != 5
            or payload[0] != 1
            or not isinstance(payload[1], str)
            or not payload[1]
            or not (payload[2] is None or isinstance(payload[2], str))
            or payload[3] not in (None, *CATEGORIES)
            or not isinstance(payload[4], int)
            or isinstance(payload[4], bool)
        ):
            raise PrefLinkInvalid()
        _, recipient, rule, category, days = payload
        issued = issued.astimezone(UTC)
        ahead = (issued - self.clock.now()).total_seconds()
        if ahead > CLOCK_SKEW_SECONDS:
            raise PrefLinkInvalid()  # signed in the future: not by a clock of ours
        if ahead <= 0:
            try:
                self._s.loads(token, max_age=days * 86400)
            except SignatureExpired:
                raise PrefLinkExpired(
                    f"This preferences link has expired: links are valid for {days} days."
                ) from None
            except BadData:  # pragma: no cover - the signature was good a moment ago
                raise PrefLinkInvalid() from None
        return PrefClaim(recipient, rule, category, issued, days)


def pref_token(
    signer: PrefSigner,
    recipient_id: str,
    *,
    rule: str | None = None,
    category: str | None = None,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> str:
    """A token for ``recipient_id``'s preference page (and one-click unsubscribe)."""
    return signer.pref_token(recipient_id, rule=rule, category=category, max_age_days=max_age_days)


def _check_claim(recipient: str, rule: str | None, category: str | None, days: int) -> None:
    if not isinstance(recipient, str) or not recipient:
        raise ValueError("a preferences link needs a recipient id")
    if rule is not None and (not isinstance(rule, str) or not rule):
        raise ValueError("the rule of a preferences link is a rule name")
    if category is not None and category not in CATEGORIES:
        raise ValueError(
            f"the category of a preferences link is reminder or promotional, got {category!r}"
        )
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_AGE_DAYS_LIMIT:
        raise ValueError(
            f"max_age_days must be a whole number of days from 1 to {MAX_AGE_DAYS_LIMIT}, "
            f"got {days!r}"
        )


# --------------------------------------------------------------------------- consent


def unsubscribe_scope(rule: str | None, category: str | None) -> tuple[str, str | None]:
    """What a one-click unsubscribe opts out of: ("category", "promotional"), ("rule", NAME),
    ("category", "reminder") or ("all", None). See the module's docstring."""
    if category == "promotional":
        return "category", "promotional"
    if rule:
        return "rule", rule
    if category == "reminder":
        return "category", "reminder"
    return "all", None


def apply_unsubscribe(
    consent: dict[str, Any] | None, *, rule: str | None = None, category: str | None = None
) -> dict[str, Any]:
    """A copy of ``consent`` (Recipient.consent's shape) opted out of what a one-click
    unsubscribe from a message of ``rule`` / ``category`` means (:func:`unsubscribe_scope`).
    Idempotent; never touches transactional mail (always allowed) or other rules."""
    out = deepcopy(dict(consent or {}))
    kind, what = unsubscribe_scope(rule, category)
    if kind == "rule":
        out["rules"] = {**(out.get("rules") or {}), str(what): False}
    elif kind == "category":
        out[str(what)] = False
    else:
        out["reminder"] = False
        out["promotional"] = False
    return out


# --------------------------------------------------------------------------- links


class PrefLinks:
    """Preference links for one deployment: signer, base URL and the optional mailto address.
    The secret is read (or generated) on first use, then kept; thread-safe. Give ``signer``
    (tests) or ``db`` (the secret comes from :func:`duly.delivery.ack.load_secret`)."""

    def __init__(
        self,
        *,
        db: Engine | None = None,
        signer: PrefSigner | None = None,
        base_url: str | None = None,
        mailto: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.clock = clock or (signer.clock if signer is not None else SystemClock())
        self.base_url = (base_url or base_url_from_env()).rstrip("/")
        env_mailto = (os.environ.get(MAILTO_ENV) or "").strip()
        self.mailto = (mailto if mailto is not None else env_mailto) or None
        self._signer = signer
        self._lock = threading.Lock()

    @property
    def signer(self) -> PrefSigner:
        with self._lock:
            if self._signer is None:
                self._signer = PrefSigner(load_secret(self.db), clock=self.clock)
            return self._signer

    def token(
        self, recipient_id: str, *, rule: str | None = None, category: str | None = None
    ) -> str:
        return self.signer.pref_token(recipient_id, rule=rule, category=category)

    def url(
        self, recipient_id: str, *, rule: str | None = None, category: str | None = None
    ) -> str:
        """``BASE_URL/u/TOKEN``."""
        return f"{self.base_url}/u/{self.token(recipient_id, rule=rule, category=category)}"

    def verify(self, token: str) -> PrefClaim:
        return self.signer.loads(token)

    def headers(self, recipient_id: str, *, category: str, rule: str | None) -> dict[str, str]:
        return list_unsubscribe_headers(self, recipient_id, category=category, rule=rule)


def list_unsubscribe_headers(
    links: PrefLinks, recipient_id: str, *, category: str, rule: str | None = None
) -> dict[str, str]:
    """``List-Unsubscribe`` (the one-click URL, then ``mailto:`` when DULY_UNSUBSCRIBE_MAILTO
    is set) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 2369, RFC 8058) for
    a reminder or promotional email; nothing for transactional mail or when no secret can be
    had (the message still goes, without the headers, and that is logged)."""
    category = str(category)
    if category not in CATEGORIES:
        return {}
    try:
        token = links.token(recipient_id, rule=rule, category=category)
    except AckNotConfigured as exc:
        log.warning("no List-Unsubscribe header: %s", exc)
        return {}
    parts = [f"<{links.base_url}/u/{token}>"]
    if links.mailto:
        address = links.mailto.removeprefix("mailto:")
        parts.append(f"<mailto:{address}?subject={quote('unsubscribe ' + token)}>")
    headers = {"List-Unsubscribe": ", ".join(parts)}
    if _is_https(links.base_url):  # RFC 8058: one-click only to an https URI
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers


def _is_https(url: str) -> bool:
    return url.strip().lower().startswith("https://")


# Channel types whose email carries the List-Unsubscribe headers out to people (the outbox
# keeps its messages in the database: nobody's mail client sees them).
_SENDS_EMAIL = frozenset({"smtp", *EMAIL_API_TYPES})


def unsubscribe_link_warning(base_url: str, channel_types: Iterable[str]) -> str | None:
    """The warning to give at start when email would carry unsubscribe links that are not
    https (RFC 8058), else None."""
    if _is_https(base_url) or not _SENDS_EMAIL & {str(t) for t in channel_types}:
        return None
    return (
        f"unsubscribe links in email will be {base_url.rstrip('/')}/u/…, not https: "
        "mail clients and providers (RFC 8058) want an https List-Unsubscribe URI, so "
        "List-Unsubscribe-Post (one-click) is left out; set DULY_BASE_URL to the https "
        "address where people reach duly"
    )


def warn_about_unsubscribe_links(links: PrefLinks, channel_types: Iterable[str]) -> bool:
    """Log :func:`unsubscribe_link_warning` (a WARNING of ``duly.delivery.preferences``: on stderr
    with duly's own logging) when there is one; says whether there was."""
    text = unsubscribe_link_warning(links.base_url, channel_types)
    if text is not None:
        log.warning("%s", text)
    return text is not None


# --------------------------------------------------------------------------- saving consent


def set_consent(eng: Any, r: Recipient, consent: dict[str, Any]) -> Recipient:
    """Store ``consent`` on the Recipient ``r`` (the rest of the recipient as read) through
    the Engine ``eng`` (``put_recipient``), tidied to the stored shape; returns the new
    Recipient. A concurrent PUT /v1/recipients of the same recipient can race this
    read-modify-write; the later write wins, as with any two PUTs. Used by the API's
    PUT .../preferences and the preference link page, and by the web UI's recipient page."""
    new = replace(r, consent=_tidy(consent))
    if new.consent != r.consent:
        eng.put_recipient(new)
    return new


def _tidy(consent: dict[str, Any]) -> dict[str, Any]:
    """The stored shape: no None categories, no empty maps."""
    out: dict[str, Any] = {}
    for k in CATEGORIES:
        if isinstance(consent.get(k), bool):
            out[k] = consent[k]
    for k in ("channels", "rules"):
        m = {str(n): bool(v) for n, v in (consent.get(k) or {}).items()}
        if m:
            out[k] = m
    return out
