"""Amazon SNS over HTTP: the signing certificates (fetched, checked, cached) and the
confirmation of a subscription.

Only URLs :func:`duly.delivery.inbound_email.cert_url_allowed` allows are fetched (by
default ``https://sns.<region>.amazonaws.com/…``), without following redirects, reading at
most :data:`MAX_BYTES` within :data:`TIMEOUT` seconds. A certificate is kept for
:data:`CACHE_SECONDS` (at most :data:`CACHE_ENTRIES` of them): SNS signs with a few
certificates that change rarely, so one fetch serves many messages. An expired or
not-yet-valid certificate, or one whose key is not RSA, is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["CACHE_ENTRIES", "CACHE_SECONDS", "MAX_BYTES", "TIMEOUT", "SnsCertificates", "SnsError"]

log = logging.getLogger("duly.inbound.sns")

MAX_BYTES = 64 * 1024
TIMEOUT = 5.0
CACHE_SECONDS = 3600.0
CACHE_ENTRIES = 32


class SnsError(Exception):
    """A certificate or a confirmation could not be had (the message says why)."""


def _get(url: str, timeout: float = TIMEOUT) -> bytes:
    """GET ``url``: the body of a 200 answer, at most MAX_BYTES; SnsError otherwise."""
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise SnsError(f"{url} answered {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise SnsError(f"{url} answered more than {MAX_BYTES} bytes")
            return body
    except httpx.HTTPError as exc:
        raise SnsError(f"{url}: {type(exc).__name__}") from None


class SnsCertificates:
    """The public keys of SNS signing certificates, by URL, fetched once and cached."""

    def __init__(self, ttl: float = CACHE_SECONDS, limit: int = CACHE_ENTRIES) -> None:
        self.ttl, self.limit = ttl, limit
        self._keys: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # how many certificates were fetched (for tests and logs)

    def public_key(self, url: str) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at ``url`` (an allowed URL: the caller checks).
        Raises SnsError when it cannot be fetched, is not a PEM certificate, is not valid
        now or its key is not RSA."""
        now = time.monotonic()
        with self._lock:
            got = self._keys.get(url)
            if got is not None and now - got[0] < self.ttl:
                return got[1]  # type: ignore[no-any-return]
        pem = _get(url)
        self.fetches += 1
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsError(f"{url} is not a PEM certificate") from None
        at = datetime.now(UTC)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise SnsError(f"the certificate at {url} is not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsError(f"the certificate at {url} has no RSA key")
        with self._lock:
            if len(self._keys) >= self.limit:
                for k in [k for k, (t, _) in self._keys.items() if now - t >= self.ttl]:
                    del self._keys[k]
                while len(self._keys) >= self.limit:
                    del self._keys[next(iter(self._keys))]
            self._keys[url] = (now, key)
        return key


def confirm_subscription(url: str) -> None:
    """Confirm an SNS subscription by GET of its ``SubscribeURL`` (an allowed URL: the
    caller checks). Raises SnsError when SNS does not answer 200."""
    _get(url)
