"""Exceptions raised by :mod:`duly.client`.

ClientError
 ├── TransportError        the API could not be reached, or did not answer in time
 └── DulyAPIError          the API answered with an error: .status, .code, .message, .field
      ├── ValidationError  400, 422: the request was refused; .field names the culprit
      ├── Unauthorized     401: no API key, or not a valid one (unknown or revoked)
      ├── NotFound         404: no such record (or no such route)
      ├── Conflict         409: the record's state forbids it (e.g. editing a sent reminder)
      ├── TooLarge         413: the request body is over the server's --max-body
      └── ServerError      5xx: a bug in duly (the server logged it with its traceback)

Other 4xx answers (403, 405, …) raise :class:`DulyAPIError` itself.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "ClientError",
    "Conflict",
    "DulyAPIError",
    "NotFound",
    "ServerError",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "ValidationError",
    "error_for",
]


class ClientError(Exception):
    """A call to the duly API did not succeed."""


class TransportError(ClientError):
    """The API could not be reached, or did not answer in time (the httpx error is the
    ``__cause__``). The request may or may not have been applied; PUT, DELETE and events
    with the same id are safe to repeat."""


class DulyAPIError(ClientError):
    """The API answered with an error: ``{"error": {"code", "message", "field"}}``.
    ``extra`` holds what else the body says beside ``error`` (e.g. ``template_error``, the
    file and line of a template that failed); ``response`` is the httpx response."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        extra: dict[str, Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra or {}
        self.response = response

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


class ValidationError(DulyAPIError):
    """The request was refused as invalid (400 malformed JSON, 422 invalid data);
    ``field`` names what to fix."""


class Unauthorized(DulyAPIError):
    """No API key was sent, or it is unknown or revoked (401)."""


class NotFound(DulyAPIError):
    """No such record (404)."""


class Conflict(DulyAPIError):
    """The record's state does not allow the change (409), e.g. a reminder already sent or
    an action on a delivery that is no longer pending."""


class TooLarge(DulyAPIError):
    """The request body is over the server's limit (413, ``duly serve --max-body``)."""


class ServerError(DulyAPIError):
    """The server failed (5xx): a bug in duly, logged by the server."""


_BY_STATUS: dict[int, type[DulyAPIError]] = {
    400: ValidationError,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: ValidationError,
}


def error_for(response: httpx.Response) -> DulyAPIError:
    """The exception for an error response, read from the API's JSON error shape (or, for a
    body that is not one, e.g. from a proxy, the status line and the start of the text)."""
    status = response.status_code
    cls = ServerError if status >= 500 else _BY_STATUS.get(status, DulyAPIError)
    code, message, field = f"http_{status}", "", None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        field = err.get("field") if isinstance(err.get("field"), str) else None
    extra = {k: v for k, v in body.items() if k != "error"} if isinstance(err, dict) else {}
    if not message:
        text = response.text.strip()
        message = (text[:200] if text else None) or response.reason_phrase or "error"
    return cls(status, code, message, field, extra=extra, response=response)
