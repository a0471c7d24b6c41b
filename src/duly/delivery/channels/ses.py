"""Amazon SES: email through the SES v2 API (``ses``), signed with AWS Signature Version 4.

One ``POST {base_url}/v2/email/outbound-emails`` per message (``base_url`` by default
``https://email.{region}.amazonaws.com``) with a JSON body: ``FromEmailAddress``,
``Destination.ToAddresses``, ``Content.Simple`` (``Subject``, ``Body.Text``/``Body.Html``,
UTF-8, and ``Headers``: Message-ID, X-Duly-*, List-Unsubscribe …), ``EmailTags``
(``duly-message-id``: duly's id, with any character SES does not allow in a tag value —
other than letters, digits, ``_`` and ``-`` — written ``_``) and ``ConfigurationSetName``
when set. SES replaces a given Message-ID with its own (its documentation, "Amazon SES
header fields"); the tag is what its events carry of duly's id.

The request is signed here, with hmac and hashlib (no AWS SDK): the signed headers are
``content-type``, ``host``, ``x-amz-date`` (and ``x-amz-security-token`` with temporary
credentials), the scope ``DATE/REGION/ses/aws4_request``.

SES answers 200 ``{"MessageId": …}``: the receipt. A refusal names its type in the
``x-amzn-ErrorType`` header (or ``__type``/``code`` in the body) with a ``message``:
403 (UnrecognizedClientException, SignatureDoesNotMatch, AccessDeniedException …) is
about the credentials, permanent; 429 TooManyRequestsException, LimitExceededException and
5xx are temporary; BadRequestException about the recipient's address ("Missing final
'@domain'", "Illegal address" …) sets ``DeliveryError.address``; MessageRejected,
MailFromDomainNotVerifiedException, AccountSuspendedException, SendingPausedException and
NotFoundException are permanent. SES has no idempotency key for SendEmail (see
:mod:`duly.delivery.channels._email_api`).

SES events through Amazon SNS (``POST /inbound/ses``, duly.api.inbound_email):
``sns_topic_arns`` are the topics whose messages are accepted (none: every one refused),
``sns_certificate_urls`` URL prefixes that replace the default allow-list of signing
certificate and subscription URLs (``https://sns.<region>.amazonaws.com/``; for a test
double), ``sns_confirm`` whether a subscription to one of those topics is confirmed by duly
(default) or only logged for the operator.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from email.utils import formataddr
from typing import Any

import httpx

from duly.delivery.channels._email_api import Email, EmailApiChannel, json_object, read_secret
from duly.delivery.channels._http import bool_option, snippet
from duly.delivery.channels.base import Receipt

__all__ = ["SERVICE", "SesChannel", "sign_v4"]

SERVICE = "ses"
PATH = "/v2/email/outbound-emails"
TAG_NAME = "duly-message-id"
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+")
_ACCESS_KEY_RE = re.compile(r"[A-Z0-9]{16,128}")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_TOPIC_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:sns:[a-z]{2}(?:-[a-z]+)+-[0-9]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}"
)
_URL_PREFIX_RE = re.compile(r"https?://[^/\s?#@]+/[^\s?#]*")
_TEMPORARY_TYPES = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException", "Throttling"}
)
_ADDRESS_ERROR = re.compile(
    r"missing final '@domain'|illegal address|local address contains|domain contains "
    r"(?:illegal|control)|domain (?:starts|ends) with dot|invalid (?:email )?address",
    re.I,
)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sign_v4(
    *,
    method: str,
    host: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str = SERVICE,
    when: datetime,
) -> str:
    """The ``Authorization`` header of a request with no query string, by AWS Signature
    Version 4. ``headers`` (``host`` and ``x-amz-date`` included, names in lower case) are
    all signed; ``when`` must be the time in ``x-amz-date``."""
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed["host"] = host
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            path,
            "",  # no query string
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )


def _sns_list(option: str, value: Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """An option that is one string or a list of them, each matching ``pattern``."""
    if value in (None, ""):
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > 50:
        raise ValueError(f"{option}: expected a string or a list of at most 50 strings")
    out = []
    for item in items:
        text = str(item).strip() if isinstance(item, str) else ""
        if not pattern.fullmatch(text):
            raise ValueError(f"{option}: {item!r} is not valid")
        out.append(text)
    return tuple(out)


class SesChannel(EmailApiChannel):
    """Sends email through Amazon SES v2, requests signed with SigV4."""

    type = "ses"
    provider = "Amazon SES"

    def __init__(
        self,
        name: str,
        *,
        from_: str,
        region: str,
        access_key_id: str,
        secret_access_key: str | None = None,
        secret_access_key_file: str | None = None,
        session_token: str | None = None,
        configuration_set: str | None = None,
        message_id_domain: str | None = None,
        base_url: str | None = None,
        timeout: float | str | None = None,
        allow_private: bool | str = False,
        sns_topic_arns: list[str] | str | None = None,
        sns_certificate_urls: list[str] | str | None = None,
        sns_confirm: bool | str = True,
    ) -> None:
        self.sns_topic_arns = _sns_list("sns_topic_arns", sns_topic_arns, _TOPIC_ARN_RE)
        self.sns_certificate_urls = _sns_list(
            "sns_certificate_urls", sns_certificate_urls, _URL_PREFIX_RE
        )
        self.sns_confirm = bool_option("sns_confirm", sns_confirm)
        self.region = str(region or "").strip().lower()
        if not _REGION_RE.fullmatch(self.region):
            raise ValueError(f"region: {region!r} is not an AWS region such as eu-west-1")
        self.access_key_id = str(access_key_id or "").strip()
        if not _ACCESS_KEY_RE.fullmatch(self.access_key_id):
            # Not echoed: a mistyped variable could hold the secret instead.
            raise ValueError("access_key_id: expected an AWS access key id (AKIA…/ASIA…)")
        self._secret = read_secret("secret_access_key", secret_access_key, secret_access_key_file)
        self._session_token = str(session_token).strip() if session_token else None
        self.configuration_set = (
            str(configuration_set).strip() if configuration_set not in (None, "") else None
        )
        self._setup(
            name,
            from_=from_,
            base_url=base_url or f"https://email.{self.region}.amazonaws.com",
            message_id_domain=message_id_domain,
            timeout=timeout,
            allow_private=allow_private,
            secrets=(self._secret, self._session_token or ""),
        )
        self.url = self.base_url + PATH
        self._host = httpx.URL(self.url).netloc.decode("ascii")
        self._path = httpx.URL(self.url).raw_path.decode("ascii")

    def payload(self, email: Email) -> dict[str, Any]:
        """The JSON body that sends ``email``."""
        body: dict[str, Any] = {}
        if email.text is not None:
            body["Text"] = {"Data": email.text, "Charset": "UTF-8"}
        if email.html is not None:
            body["Html"] = {"Data": email.html, "Charset": "UTF-8"}
        document: dict[str, Any] = {
            # SES wants a non-ASCII display name as an RFC 2047 encoded word
            "FromEmailAddress": formataddr((email.from_name, email.from_address), "utf-8"),
            "Destination": {
                "ToAddresses": [formataddr((email.to_name, email.to_address), "utf-8")]
            },
            "Content": {
                "Simple": {
                    "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                    "Body": body,
                    "Headers": [{"Name": k, "Value": v} for k, v in email.headers.items()],
                }
            },
            "EmailTags": [
                {"Name": TAG_NAME, "Value": _TAG_UNSAFE.sub("_", email.message_id)[:256]}
            ],
        }
        if self.configuration_set is not None:
            document["ConfigurationSetName"] = self.configuration_set
        return document

    def request(self, email: Email, *, now: datetime | None = None) -> tuple[str, dict[str, Any]]:
        content = json.dumps(self.payload(email), ensure_ascii=False).encode("utf-8")
        when = now or datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "host": self._host,
            "x-amz-date": when.strftime("%Y%m%dT%H%M%SZ"),
        }
        if self._session_token:
            headers["x-amz-security-token"] = self._session_token
        headers["authorization"] = sign_v4(
            method="POST",
            host=self._host,
            path=self._path,
            headers=headers,
            body=content,
            access_key_id=self.access_key_id,
            secret_access_key=self._secret,
            region=self.region,
            when=when,
        )
        return self.url, {"content": content, "headers": headers}

    def outcome(self, email: Email, response: httpx.Response, body: bytes) -> Receipt:
        status = response.status_code
        info = json_object(body)
        if 200 <= status < 300:
            return self.accepted(email, info.get("MessageId"))
        kind = response.headers.get("x-amzn-errortype") or info.get("__type") or info.get("code")
        kind = str(kind or "").split(":", 1)[0].rsplit("#", 1)[-1] or None
        text = info.get("message") or info.get("Message")
        reason = text if isinstance(text, str) and text else snippet(body)
        address = kind == "BadRequestException" and _ADDRESS_ERROR.search(reason) is not None
        raise self.refusal(
            status,
            reason=reason,
            code=kind,
            address=address,
            temporary=kind in _TEMPORARY_TYPES,
        )
