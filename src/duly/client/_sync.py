"""The blocking client: the endpoints of :mod:`duly.client._calls` sent with httpx.Client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx

from duly.client import _calls as C
from duly.client.errors import TransportError

T = TypeVar("T")


class Client:
    """A client for the duly HTTP API (``duly serve``), one method per endpoint.

    ::

        with Client("http://localhost:8000", api_key) as duly:
            invoice = duly.put_subject("invoice", "INV-1", attributes={...}, recipients={...})
            print(invoice.plan)

    ``timeout`` (seconds, or an ``httpx.Timeout``) bounds each request; ``transport``
    replaces the network (``httpx.MockTransport`` in tests, ``httpx.WSGITransport``…).
    Errors the API answers raise :class:`~duly.client.DulyAPIError` subclasses; network
    failures raise :class:`~duly.client.TransportError`. Methods may be called from several
    threads at once (httpx's connection pool is thread-safe).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=C.headers(api_key), timeout=timeout, transport=transport
        )

    @property
    def base_url(self) -> str:
        """The API's address, as given."""
        return str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        """Close the connections (also done on leaving a ``with`` block)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _send(self, call: C.Call[T]) -> T:
        try:
            response = self._http.request(**call.request())
        except httpx.RequestError as exc:
            what = str(exc) or type(exc).__name__
            raise TransportError(f"{call.method} {call.path}: {what}") from exc
        return call.result(response)

    def _walk(self, pages: C.Pages[T]) -> Iterator[T]:
        call = pages.first()
        while call is not None:
            page = self._send(call)
            yield from page.items
            call = pages.after(page)


def _one(spec: Callable[..., C.Call[Any]]) -> Callable[..., Any]:
    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self._send(spec(*args, **kwargs))

    return method


def _paged(spec: Callable[..., C.Pages[Any]]) -> Callable[..., Any]:
    def method(self: Client, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._walk(spec(*args, **kwargs))

    return method


C.install(Client, _one, _paged, Iterator)
