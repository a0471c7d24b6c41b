"""SNS signing certificates (duly.delivery.sns): fetched from a real local server, cached for
a bounded time and number, and refused when too large, not a certificate, expired, not
RSA, or not answered 200."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from duly.delivery.sns import MAX_BYTES, SnsCertificates, SnsError
from fakes.email_webhooks import FakeSns
from fakes.local_server import Incoming, LocalServer, Reply


class Served(LocalServer):
    """Answers every GET with ``reply``."""

    methods = ("GET",)

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def respond(self, request: Incoming) -> Reply:
        return self.reply


def _pem(*, expired: bool = False, ec_key: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()) if ec_key else FakeSns().key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
    now = datetime.now(UTC)
    end = now - timedelta(days=1) if expired else now + timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_is_fetched_once_and_again_after_its_time() -> None:
    with FakeSns() as sns:
        certs = SnsCertificates()
        assert certs.public_key(sns.cert_url) is certs.public_key(sns.cert_url)
        assert sns.cert_requests == 1
        short = SnsCertificates(ttl=0.0)
        short.public_key(sns.cert_url)
        short.public_key(sns.cert_url)
        assert sns.cert_requests == 3


def test_the_cache_keeps_at_most_its_limit() -> None:
    with FakeSns() as sns:
        certs = SnsCertificates(limit=2)
        for n in range(4):
            certs.public_key(f"{sns.cert_url}?n={n}")
        assert len(certs._keys) == 2


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply(200, b"x" * (MAX_BYTES + 1)), "more than"),
        (Reply(200, b"hello"), "not a PEM certificate"),
        (Reply(404, b""), "answered 404"),
        (Reply(302, b"", {"Location": "https://evil.test/"}), "answered 302"),
        (Reply(200, _pem(expired=True)), "not valid now"),
        (Reply(200, _pem(ec_key=True)), "no RSA key"),
    ],
)
def test_bad_certificates_are_refused(reply: Reply, problem: str) -> None:
    with Served(reply) as server, pytest.raises(SnsError, match=problem):
        SnsCertificates().public_key(server.url + "/cert.pem")
