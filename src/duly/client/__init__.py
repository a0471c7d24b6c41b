"""A Python client for the duly HTTP API, on httpx: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), one typed method per endpoint of docs/reference/http-api.md.

::

    from datetime import UTC, datetime
    from duly.client import Client, NotFound

    with Client("http://localhost:8000", api_key) as duly:
        duly.put_recipient("c1", name="Ada", email="ada@example.com", timezone="Europe/London")
        invoice = duly.put_subject(
            "invoice", "INV-1",
            attributes={"status": "sent", "due_at": datetime(2030, 3, 15, tzinfo=UTC)},
            recipients={"customer": "c1"},
        )
        for d in invoice.plan:
            print(d.step, d.planned_at)

Results are pydantic models (:mod:`duly.client.models`, the API's own response models) with
timezone-aware datetimes. Errors are typed (:mod:`duly.client.errors`)::

    ClientError
     ├── TransportError        network failure or timeout
     └── DulyAPIError          .status .code .message .field
          ├── ValidationError  400, 422
          ├── Unauthorized     401
          ├── NotFound         404
          ├── Conflict         409
          ├── TooLarge         413
          └── ServerError      5xx

The client needs ``httpx``; it imports neither FastAPI nor the engine. The models of the
templates and stats endpoints (``TemplateOut``, ``StatsOut`` …) are defined beside their
routes and imported from there when first used.
"""

from typing import Any

from duly.client import models as _models
from duly.client._async import AsyncClient
from duly.client._calls import UNSET, Unset
from duly.client._sync import Client
from duly.client.errors import (
    ClientError,
    Conflict,
    DulyAPIError,
    NotFound,
    ServerError,
    TooLarge,
    TransportError,
    Unauthorized,
    ValidationError,
)
from duly.client.models import (
    BatchOut,
    BatchResult,
    Consent,
    DeliveryDetail,
    DeliveryList,
    DeliveryOut,
    EventOut,
    Health,
    RecipientBatchItem,
    RecipientBatchOut,
    RecipientBatchResult,
    RecipientOut,
    ReminderOut,
    RulesCheckOut,
    RulesOut,
    SimulateOut,
    SubjectBatchItem,
    SubjectDetail,
    SubjectOut,
)

__all__ = [
    "UNSET",
    "AsyncClient",
    "BatchOut",
    "BatchResult",
    "Client",
    "ClientError",
    "Conflict",
    "Consent",
    "DeliveryDetail",
    "DeliveryList",
    "DeliveryOut",
    "DulyAPIError",
    "EventOut",
    "Health",
    "NotFound",
    "RecipientBatchItem",
    "RecipientBatchOut",
    "RecipientBatchResult",
    "RecipientOut",
    "ReminderOut",
    "RulesCheckOut",
    "RulesOut",
    "ServerError",
    "SimulateOut",
    "SubjectBatchItem",
    "SubjectDetail",
    "SubjectOut",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unset",
    "ValidationError",
]


def __getattr__(name: str) -> Any:
    # the templates and stats models, imported when first asked for (see duly.client.models)
    if name in _models.LATER:
        return getattr(_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
