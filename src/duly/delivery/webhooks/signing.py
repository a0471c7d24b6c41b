"""Standard Webhooks signatures (https://www.standardwebhooks.com, symmetric ``v1``).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is the
base64 HMAC-SHA256 of it, sent as ``webhook-signature: v1,<base64>``.

Secrets, read from the environment variable the rule file names:

- ``whsec_<base64>`` (the Standard Webhooks form): the key is the base64-decoded bytes, the
  base64 with or without its ``=`` padding (as the reference libraries take it);
- anything else: the key is the string's UTF-8 bytes, as is (for receivers that verify with
  a plain shared string). A value that starts with ``whsec_`` but is not valid base64 is an
  error, never silently used as a plain string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = [
    "SECRET_PREFIX",
    "SecretError",
    "decode_secret",
    "padded",
    "signature",
    "signed_headers",
]

SECRET_PREFIX = "whsec_"


class SecretError(ValueError):
    """The signing secret is not usable."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key for a secret: ``whsec_<base64>`` decoded, else the string's bytes."""
    if not secret:
        raise SecretError("the signing secret is empty")
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(padded(secret[len(SECRET_PREFIX) :]), validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(
                f"the signing secret starts with {SECRET_PREFIX} but the rest is not base64"
            ) from None
        if not key:
            raise SecretError(f"the signing secret is {SECRET_PREFIX} with nothing after it")
        return key
    return secret.encode()


def padded(text: str) -> str:
    """Base64 ``text`` with exactly the ``=`` padding it needs: Standard Webhooks secrets are
    often written without it, and the reference libraries accept both forms."""
    bare = text.rstrip("=")
    return bare + "=" * (-len(bare) % 4)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (the timestamp is the attempt's,
    so a retry is signed anew while its id stays the same)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }
