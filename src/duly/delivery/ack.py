"""Acknowledge links (docs/reference/rules.md "Acknowledge").

A message can carry a link that lets its recipient say "got it": ``{{ ack_link() }}`` in a
template. The link is ``BASE_URL/a/TOKEN``, where the token is signed and dated with
itsdangerous (``URLSafeTimedSerializer``) and carries the rule, the subject ("KIND/KEY"), the
recipient and how many days it stays valid (30 by default). Nobody can make or alter one
without the secret; opening it shows a page with a button, and pressing the button (a plain
form POST: no JavaScript, no cookie) calls ``Engine.acknowledge`` — so a mail scanner that
follows every link in a message acknowledges nothing.

The secret is ``DULY_SECRET_KEY`` when set. Otherwise one is generated once and kept in the
database (the ``settings`` table), so every process — the worker that renders a link and the
server that opens it — signs with the same one. Changing the secret invalidates every link
already sent.

Token errors are :class:`AckLinkInvalid` (tampered, malformed, another secret) and its
subclass :class:`AckLinkExpired`; the public pages answer both with a 400 page.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from jinja2 import pass_context
from jinja2.runtime import Context

from duly.core.clock import Clock, SystemClock
from duly.core.errors import DulyError, InvalidInput

if TYPE_CHECKING:  # the database is imported when a secret is loaded: render processes
    from duly.store.db import Engine  # import this module and start faster without it

__all__ = [
    "ACK_LINKS_KEY",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_AGE_DAYS",
    "SECRET_ENV",
    "AckClaim",
    "AckLinkExpired",
    "AckLinkInvalid",
    "AckLinks",
    "AckNotConfigured",
    "AckSigner",
    "ack_link",
    "ack_url",
    "base_url_from_env",
    "load_secret",
]

SECRET_ENV = "DULY_SECRET_KEY"
BASE_URL_ENV = "DULY_BASE_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_AGE_DAYS = 30
MAX_AGE_DAYS_LIMIT = 366
# Tokens are a few hundred characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 2000
# The worker that signs a link and the server that checks it may disagree about the time a
# little: a link "issued" up to this many seconds in the future is fine.
CLOCK_SKEW_SECONDS = 300
# Separates these signatures from any other use of the same secret.
SALT = "duly.delivery.ack"
# Where the Renderer puts the AckLinks for the ``ack_link()`` helper to find.
ACK_LINKS_KEY = "__duly_ack_links__"


class AckLinkInvalid(InvalidInput):
    """This acknowledge link is not valid: it was changed, cut short, or signed with another
    secret."""

    code = "invalid_link"


class AckLinkExpired(AckLinkInvalid):
    """This acknowledge link has expired."""

    code = "link_expired"


class AckNotConfigured(DulyError):
    """Acknowledge links need a secret: set DULY_SECRET_KEY, or run `duly migrate` so one can
    be generated and kept in the database."""

    code = "not_configured"


@dataclass(frozen=True, slots=True)
class AckClaim:
    """What a valid token says."""

    rule: str
    subject: str  # "KIND/KEY"
    recipient: str | None
    issued_at: datetime
    max_age_days: int

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(days=self.max_age_days)


class _ClockSigner(TimestampSigner):
    """itsdangerous's timestamp signer, reading time from duly's clock (a virtual one in
    simulations and tests), so expiry is judged in the engine's time."""

    def __init__(self, *args: Any, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock or SystemClock()

    def get_timestamp(self) -> int:
        return int(self.clock.now().timestamp())


class AckSigner:
    """Makes and checks acknowledge tokens with one secret (or several, newest last: tokens
    signed with any of them are accepted, new ones use the newest)."""

    def __init__(self, secret: str | bytes | list[str], *, clock: Clock | None = None) -> None:
        if not secret:
            raise ValueError("an acknowledge secret cannot be empty")
        self.clock = clock or SystemClock()
        self._s = URLSafeTimedSerializer(
            secret, salt=SALT, signer=_ClockSigner, signer_kwargs={"clock": self.clock}
        )

    def dumps(
        self,
        rule: str,
        subject: str,
        recipient: str | None,
        *,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    ) -> str:
        _check_claim(rule, subject, recipient, max_age_days)
        token = self._s.dumps([1, rule, subject, recipient, max_age_days])
        return token if isinstance(token, str) else token.decode()

    def loads(self, token: str) -> AckClaim:
        """The claim of a valid, unexpired token. Raises AckLinkExpired or AckLinkInvalid."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise AckLinkInvalid()
        try:
            payload, issued = self._s.loads(token, return_timestamp=True)
        except BadData:
            raise AckLinkInvalid() from None
        # signed, so trusted; still checked, as a token from an older format would be
        if (
            not isinstance(payload, list)
            or len(payload) != 5
            or payload[0] != 1
            or not isinstance(payload[1], str)
            or not isinstance(payload[2], str)
            or not (payload[3] is None or isinstance(payload[3], str))
            or not isinstance(payload[4], int)
            or isinstance(payload[4], bool)
        ):
            raise AckLinkInvalid()
        _, rule, subject, recipient, days = payload
        issued = issued.astimezone(UTC)
        ahead = (issued - self.clock.now()).total_seconds()
        if ahead > CLOCK_SKEW_SECONDS:
            raise AckLinkInvalid()  # signed in the future: not by a clock of ours
        if ahead <= 0:  # (itsdangerous calls any negative age expired: clocks differ a little)
            try:
                # itsdangerous judges the age, in the clock's time, against the link's max age
                self._s.loads(token, max_age=days * 86400)
            except SignatureExpired:
                raise AckLinkExpired(
                    f"This acknowledge link has expired: links are valid for {days} days."
                ) from None
            except BadData:  # pragma: no cover - the signature was good a moment ago
                raise AckLinkInvalid() from None
        return AckClaim(rule, subject, recipient, issued, days)


def _check_claim(rule: str, subject: str, recipient: str | None, max_age_days: int) -> None:
    if not isinstance(rule, str) or not rule:
        raise ValueError("an acknowledge link needs a rule name")
    kind, sep, key = (subject or "").partition("/")
    if not sep or not kind or not key:
        raise ValueError(f"an acknowledge link needs a subject KIND/KEY, got {subject!r}")
    if recipient is not None and not isinstance(recipient, str):
        raise ValueError("the recipient of an acknowledge link is a recipient id")
    if (
        not isinstance(max_age_days, int)
        or isinstance(max_age_days, bool)
        or not 1 <= max_age_days <= MAX_AGE_DAYS_LIMIT
    ):
        raise ValueError(
            f"max_age_days must be a whole number of days from 1 to {MAX_AGE_DAYS_LIMIT}, "
            f"got {max_age_days!r}"
        )


def ack_url(
    base_url: str,
    rule: str,
    subject: str,
    recipient: str | None,
    *,
    signer: AckSigner,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> str:
    """``BASE_URL/a/TOKEN`` for acknowledging ``rule`` on ``subject`` as ``recipient``."""
    token = signer.dumps(rule, subject, recipient, max_age_days=max_age_days)
    return f"{base_url.rstrip('/')}/a/{token}"


def base_url_from_env() -> str:
    """``DULY_BASE_URL`` (where people reach ``duly serve``), default http://127.0.0.1:8000."""
    return (os.environ.get(BASE_URL_ENV) or "").strip() or DEFAULT_BASE_URL


# --------------------------------------------------------------------------- the secret


def load_secret(db: Engine | None) -> str:
    """``DULY_SECRET_KEY``, else the secret kept in the database (generated on first use,
    once for every process: the first to store it wins). Raises AckNotConfigured."""
    env = (os.environ.get(SECRET_ENV) or "").strip()
    if env:
        return env
    if db is None:
        raise AckNotConfigured()
    from duly.store.acks import kept_ack_secret

    got = kept_ack_secret(db, secrets.token_urlsafe(32), datetime.now(UTC))
    if not got:  # no settings table yet: the database was not migrated
        raise AckNotConfigured()
    return got


class AckLinks:
    """Acknowledge links for one deployment: the signer and the base URL. The secret is read
    (or generated) on first use, then kept; thread-safe.

    Either give ``signer`` (tests, simulations) or ``db`` (the secret comes from
    :func:`load_secret`)."""

    def __init__(
        self,
        *,
        db: Engine | None = None,
        signer: AckSigner | None = None,
        base_url: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.clock = clock or (signer.clock if signer is not None else SystemClock())
        self.base_url = (base_url or base_url_from_env()).rstrip("/")
        self._signer = signer
        self._lock = threading.Lock()

    @property
    def signer(self) -> AckSigner:
        with self._lock:
            if self._signer is None:
                self._signer = AckSigner(load_secret(self.db), clock=self.clock)
            return self._signer

    def url(
        self,
        rule: str,
        subject: str,
        recipient: str | None,
        *,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    ) -> str:
        return ack_url(
            self.base_url, rule, subject, recipient, signer=self.signer, max_age_days=max_age_days
        )

    def verify(self, token: str) -> AckClaim:
        return self.signer.loads(token)


# --------------------------------------------------------------------------- templates


@pass_context
def ack_link(context: Context, max_age_days: int = DEFAULT_MAX_AGE_DAYS) -> str:
    """The template helper ``{{ ack_link() }}``: a link acknowledging this message's rule and
    subject as its recipient. A Renderer without acknowledge links (previews, checks of
    templates kept in the database) gives a sample link that acknowledges nothing."""
    rule = _get(context.get("rule"), "name")
    subject = context.get("subject")
    ref = _get(subject, "ref")
    if ref is None and subject is not None:
        kind, key = _get(subject, "kind"), _get(subject, "key")
        ref = f"{kind}/{key}" if kind and key else None
    if not rule or not ref:
        raise ValueError(
            "ack_link(): this message is not about a subject (a schedule rule's messages have "
            "none), so there is nothing to acknowledge"
        )
    recipient = _get(context.get("recipient"), "id")
    links = context.get(ACK_LINKS_KEY)
    if not isinstance(links, AckLinks):
        return f"{base_url_from_env().rstrip('/')}/a/sample-link"
    return links.url(str(rule), str(ref), recipient, max_age_days=max_age_days)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
