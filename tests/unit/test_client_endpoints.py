"""Both clients come from one table of endpoints (duly.client._calls): every endpoint is a
method of each, named, documented and typed as the endpoint says, returning what its Call
reads (not the Call), so help() and IDEs show the real thing."""

import inspect
import typing
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from duly.client import AsyncClient, Client, DeliveryOut, NotFound, RecipientOut
from duly.client import _calls as C


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_every_endpoint_is_a_method_with_its_own_signature_and_docstring(cls: type) -> None:
    assert len(C.ENDPOINTS) == 30
    for name, spec in C.ENDPOINTS.items():
        method = vars(cls)[name]
        assert method.__doc__ == spec.__doc__ and method.__doc__.strip(), name
        assert method.__qualname__ == f"{cls.__name__}.{name}"
        sig, own = inspect.signature(method), inspect.signature(spec)
        assert list(sig.parameters)[0] == "self"
        assert list(sig.parameters.values())[1:] == list(own.parameters.values()), name
        assert not str(sig.return_annotation).startswith(("Call", "Pages")), name
    assert inspect.signature(cls.get_recipient).return_annotation == "M.RecipientOut"
    iterator = "AsyncIterator" if cls is AsyncClient else "Iterator"
    assert inspect.signature(cls.iter_deliveries).return_annotation == (
        f"{iterator}[M.DeliveryOut]"
    )
    # the annotations resolve (typing.get_type_hints, sphinx, pydantic read them so)
    assert typing.get_type_hints(cls.get_recipient)["return"] is RecipientOut
    pages = AsyncIterator if cls is AsyncClient else Iterator
    assert typing.get_type_hints(cls.iter_deliveries)["return"] == pages[DeliveryOut]


def test_a_wrong_argument_is_refused_before_anything_is_sent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    with Client("http://duly.test", "k", transport=httpx.MockTransport(handler)) as duly:
        with pytest.raises(TypeError, match="colour"):
            duly.get_recipient("c1", colour="red")  # type: ignore[call-arg]
        assert sent == []
        with pytest.raises(NotFound):
            duly.get_recipient("a/b")
    assert sent[0].url.raw_path == b"/v1/recipients/a%2Fb"
