"""What one client call is, apart from any transport: the request (:class:`Call`), a listing
walked by cursor (:class:`Pages`), how bodies and parameters are encoded and how answers are
read. :mod:`duly.client._calls` defines every endpoint with these; the blocking and the
asyncio client send them. No I/O here.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import import_module
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from duly import __version__
from duly.client.errors import DulyAPIError, error_for

T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)

USER_AGENT = f"duly-client/{__version__}"

Category = Literal["transactional", "reminder", "promotional"]
State = Literal["pending", "sending", "sent", "failed", "skipped", "cancelled", "set"]


class Unset(enum.Enum):
    """The type of :data:`UNSET`: "leave this field as it is" in a partial update."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


def headers(api_key: str) -> dict[str, str]:
    """Headers sent with every request."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key is required (make one with `duly keys create --name NAME`)")
    return {
        "Authorization": f"Bearer {api_key.strip()}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


# --------------------------------------------------------------------------- encoding


def iso(t: datetime) -> str:
    """ISO 8601, UTC written as ``Z``. A naive datetime is sent as it is: the API reads it
    as local to the recipient in subject attributes, and refuses it (422) where it needs an
    instant (``send_at``, ``hold_until``, ``from``, ``to``, ``until``)."""
    s = t.isoformat()
    if t.utcoffset() == timedelta(0) and s.endswith("+00:00"):
        s = s[: -len("+00:00")] + "Z"
    return s


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return iso(o)
    if isinstance(o, date):
        return o.isoformat()
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json", exclude_unset=True)
    if isinstance(o, Decimal):  # as pydantic writes it: exact, as a string
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"cannot send a {type(o).__name__} as JSON: {o!r}")


def encode(body: Any) -> bytes:
    """The JSON body: datetimes as ISO 8601, dates as YYYY-MM-DD, Decimals as strings."""
    return json.dumps(body, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def strs(value: str | Iterable[str]) -> list[str]:
    """A list of ids or names; one string is a list of one (not of its characters)."""
    return [value] if isinstance(value, str) else list(value)


def seg(value: str | int) -> str:
    """One path segment, percent-encoded (a ``/`` in an id cannot pass through a path)."""
    return quote(str(value), safe="")


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    body: Any = None
    params: Mapping[str, str] | None = None
    accept: frozenset[int] = frozenset()  # error statuses that are answers (readyz: 503)

    def request(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request`` / ``AsyncClient.request``."""
        kw: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.params:
            kw["params"] = dict(self.params)
        if self.body is not None:
            kw["content"] = encode(self.body)
            kw["headers"] = {"Content-Type": "application/json"}
        return kw

    def result(self, response: httpx.Response) -> T:
        """The typed result, or the typed exception for an error answer."""
        if response.is_error and response.status_code not in self.accept:
            raise error_for(response)
        return self.read(response)


def _model(cls: type[Model]) -> Callable[[httpx.Response], Model]:
    def read(response: httpx.Response) -> Model:
        try:
            return cls.model_validate_json(response.content)
        except PydanticValidationError as exc:
            raise DulyAPIError(
                response.status_code,
                "bad_response",
                f"the answer is not a {cls.__name__}: {exc.errors()[0].get('msg')}",
                response=response,
            ) from exc

    return read


def _later(module: str, name: str) -> Callable[[httpx.Response], Any]:
    """A reader for a response model defined beside its route (templates, stats), in a
    module that imports FastAPI: imported on first use, not when the client is."""

    def read(response: httpx.Response) -> Any:
        cls = getattr(import_module(module), name)
        return _model(cls)(response)

    return read


def _nothing(response: httpx.Response) -> None:
    return None


def _params(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, v in values.items():
        if v is None:
            continue
        out[name.rstrip("_")] = iso(v) if isinstance(v, datetime) else str(v)
    return out


# --------------------------------------------------------------------------- the table

# Every endpoint, by method name: filled by @endpoint in duly.client._calls.
ENDPOINTS: dict[str, Callable[..., Any]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def endpoint(f: F) -> F:
    """Register ``f`` as a client method (see :func:`install`)."""
    ENDPOINTS[f.__name__] = f
    return f


@dataclass(frozen=True, slots=True)
class Pages(Generic[T]):
    """A paged listing: the call for the first page and, given a page, the call for the
    next one (None after the last)."""

    page: Callable[[str | None], Call[Any]]

    def first(self) -> Call[Any]:
        return self.page(None)

    def after(self, answer: Any) -> Call[Any] | None:
        return None if answer.next_cursor is None else self.page(answer.next_cursor)
