"""Errors a user can act on.

DulyError
 ├── InvalidInput          bad data from an app or a user; names the field
 │    └── UnknownSubject   an event or action names a subject duly does not know
 └── NotFound              a record that does not exist
"""

from __future__ import annotations

__all__ = ["DulyError", "InvalidInput", "NotFound", "UnknownSubject"]


class DulyError(Exception):
    """Something went wrong in duly."""

    code = "error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.field = field


class InvalidInput(DulyError):
    """The input is not valid."""

    code = "invalid"


class UnknownSubject(InvalidInput):
    """No subject with that KIND/KEY is known: upsert it before posting events about it."""

    code = "unknown_subject"


class NotFound(DulyError):
    """No such record."""

    code = "not_found"
