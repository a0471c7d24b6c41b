"""The asyncio client: the endpoints of :mod:`duly.client._calls` sent with
httpx.AsyncClient, the same methods as :class:`~duly.client.Client`, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from duly.client import _calls as C
from duly.client.errors import TransportError

T = TypeVar("T")


class AsyncClient:
    """An asyncio client for the duly HTTP API (``duly serve``), one coroutine per endpoint.

    ::

        async with AsyncClient("http://localhost:8000", api_key) as duly:
            invoice = await duly.put_subject("invoice", "INV-1", attributes={...}, recipients={...})
            print(invoice.plan)

    ``timeout`` (seconds, or an ``httpx.Timeout``) bounds each request; ``transport``
    replaces the network (``httpx.MockTransport`` in tests, ``httpx.ASGITransport``…).
    Errors the API answers raise :class:`~duly.client.DulyAPIError` subclasses; network
    failures raise :class:`~duly.client.TransportError`. Coroutines of one client may run
    concurrently (they share httpx's connection pool).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=C.headers(api_key), timeout=timeout, transport=transport
        )

    @property
    def base_url(self) -> str:
        """The API's address, as given."""
        return str(self._http.base_url).rstrip("/")

    async def aclose(self) -> None:
        """Close the connections (also done on leaving an ``async with`` block)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def _send(self, call: C.Call[T]) -> T:
        try:
            response = await self._http.request(**call.request())
        except httpx.RequestError as exc:
            what = str(exc) or type(exc).__name__
            raise TransportError(f"{call.method} {call.path}: {what}") from exc
        return call.result(response)

    async def _walk(self, pages: C.Pages[T]) -> AsyncIterator[T]:
        call = pages.first()
        while call is not None:
            page = await self._send(call)
            for item in page.items:
                yield item
            call = pages.after(page)


def _one(spec: Callable[..., C.Call[Any]]) -> Callable[..., Any]:
    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await self._send(spec(*args, **kwargs))

    return method


def _paged(spec: Callable[..., C.Pages[Any]]) -> Callable[..., Any]:
    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for item in self._walk(spec(*args, **kwargs)):
            yield item

    return method


C.install(AsyncClient, _one, _paged, AsyncIterator)
